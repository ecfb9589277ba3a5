"""``fedcomp compare``: tuning on the clients' validation data, paired seeds, paired answers; end to end, tiny."""

from __future__ import annotations

import json

from fedcomp.cli import main as cli_main
from fedcomp.compare import compare, parse_method
from fedcomp.data import load_dataset
from fedcomp.servers.recorder import read_rounds
from tests.conftest import small_config


def digits(seed=0, scramble_test=False):
    """1,200 training and 300 test digits; ``scramble_test``: every test label wrong (shifted by one)."""
    split = load_dataset("mnist5k", seed=seed)
    test_labels = split.test.labels[:300]
    if scramble_test:
        test_labels = (test_labels + 1) % 10
    return {"train": (split.train.images[:1200], split.train.labels[:1200]),
            "test": (split.test.images[:300], test_labels), "num_classes": 10}  # fmt: skip


METHODS = [{"uplink.name": "identity"}, {"uplink.name": "topk", "uplink.density": 0.05}]
TUNE = {"client.lr": [0.001, 0.1]}  # one far too small: tuning must find it out on validation data


def run(tmp_path, name, scramble, methods=METHODS):
    cfg = small_config(tmp_path, data={"dataset": digits, "params": {"scramble_test": scramble}},
                       client={"local_steps": 10, "batch_size": 32})  # fmt: skip
    return compare(cfg, methods, tune=TUNE, seeds=2, target=0.3, out_dir=tmp_path / name, progress=False)


def test_each_method_is_tuned_on_validation_data_then_compared_on_paired_seeds(tmp_path):
    result = run(tmp_path, "plain", scramble=False)
    assert [m.chosen for m in result.methods] == [{"client.lr": 0.1}, {"client.lr": 0.1}]
    for m in result.methods:
        assert set(m.validation) == {"client.lr=0.001", "client.lr=0.1"}
        assert m.validation["client.lr=0.1"] > m.validation["client.lr=0.001"]
        # Tuning runs validated on the clients' held-out data: the server never evaluated the test set.
        tuning_runs = list((tmp_path / "plain" / "tuning" / m.label).glob("*seed=0"))
        assert len(tuning_runs) == 2
        for rows in map(read_rounds, tuning_runs):
            assert all(r["test_accuracy"] is None for r in rows) and rows[-1]["federated_eval"]["test_accuracy"] > 0
        # The final runs: the chosen value, the same seeds for every method.
        assert len(m.runs) == 2 and m.runs[0].endswith("seed=0") and m.runs[1].endswith("seed=1")
        assert m.paired["total_bytes"]["seeds"] + m.paired["total_bytes"]["left_out"] == 2
    recorded = json.loads((tmp_path / "plain" / "compare.json").read_text())
    assert [m["chosen"] for m in recorded["methods"]] == [{"client.lr": 0.1}] * 2 and recorded["target"] == 0.3
    base, topk = result.methods
    assert base.paired["total_bytes"]["mean_difference"] == 0.0  # the baseline against itself
    assert topk.paired["uplink_bytes"]["mean_difference"] < 0  # top-k 5% sends fewer bytes up to the target

    # The test set is never read while tuning: with every test label wrong, the same choices and the very
    # same validation scores; only the final (test) accuracies change.
    # One method is enough to see it (tuning is the same code for every method).
    scrambled = run(tmp_path, "scrambled", scramble=True, methods=METHODS[:1])
    assert [m.chosen for m in scrambled.methods] == [m.chosen for m in result.methods[:1]]
    assert [m.validation for m in scrambled.methods] == [m.validation for m in result.methods[:1]]
    final_acc = [read_rounds(r.runs[0])[-1]["test_accuracy"] for r in (result.methods[0], scrambled.methods[0])]
    assert final_acc[0] > 0.3 > final_acc[1]


def test_methods_parse_from_the_command_line_and_bad_ones_are_config_errors(tmp_path, capsys):
    assert parse_method('uplink={name="surp",density=0.01};client.lr=0.1') == {
        "uplink": {"name": "surp", "density": 0.01}, "client.lr": 0.1}  # fmt: skip
    code = cli_main(["compare", "demo", "--method", "uplink.name=srup", "--out", str(tmp_path / "x")])
    assert code == 2 and "did you mean 'surp'" in capsys.readouterr().err
    code = cli_main(["compare", "demo", "--method", "uplink.name=surp", "--seeds", "1", "--out", str(tmp_path / "x")])
    assert code == 2 and "seeds must be >= 2" in capsys.readouterr().err
    code = cli_main(["compare", "demo", "--method", "seed=5;uplink.name=surp", "--out", str(tmp_path / "x")])
    assert code == 2 and "every method runs the same seeds" in capsys.readouterr().err


def test_the_compare_example_runs_as_written(tmp_path):
    """examples/compare_methods.py, as a user runs it (its own process), one round, in-process clients."""
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "compare_methods.py"
    out = tmp_path / "cmp"
    done = subprocess.run(
        [sys.executable, str(example), "--rounds", "1", "--seeds", "2", "--lr", "0.03,0.1", "--out", str(out),
         "--backend", "in-process"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    recorded = json.loads((out / "compare.json").read_text())
    assert [m["label"] for m in recorded["methods"]] == [
        "uplink.name=identity",
        "uplink.name=topk__uplink.density=0.01__uplink.allocation=global",
        "uplink.name=surp__uplink.density=0.01",
    ]
    lines = [x for x in done.stdout.splitlines() if x.startswith("uplink.name=")]
    for line, method in zip(lines, recorded["methods"], strict=True):
        assert line.startswith(f"{method['label']}: chose {method['chosen']}") and "bytes to target vs dense" in line
        assert set(method["validation"]) == {"client.lr=0.03", "client.lr=0.1"}
