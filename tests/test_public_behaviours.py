"""Public behaviours that had no test: each one as a user meets it, in a tiny federation (ClientApp in-process).

Where a behaviour is tested elsewhere it is not repeated here: ``fedcomp.resume`` of a killed run in
test_resume_and_faults.py, the inner strategy's state reset on a changed architecture in
test_flower_building_blocks.py.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
import torch

import fedcomp
from fedcomp.cli import main as cli_main
from fedcomp.clients.training import train_local
from fedcomp.config import config_from_dict, load_config
from fedcomp.data import load_dataset, load_experiment_data
from fedcomp.errors import RunInterruptedError
from fedcomp.servers.recorder import RunRecorder, load_checkpoint, read_rounds
from tests.conftest import CPUS_PER_WORKER, small_config
from tests.payloads import identity_payload_length

HERE = Path(__file__).resolve()
MAKEFILE = HERE.parents[1] / "Makefile"
TINY = {"model": {"name": "mlp"}, "client": {"local_steps": 2}}


# ---------------------------------------------------------------------------------------------- evaluation


def test_evaluate_on_clients_has_each_client_evaluate_the_model_and_the_server_not(tmp_path):
    """``federation.evaluate_on = "clients"``: no server-side test (no accuracy or loss in the rows), every client
    evaluates the aggregated model on its held-out share, and that model went to each of them dense, counted."""
    cfg = small_config(tmp_path, federation={"rounds": 2, "evaluate_on": "clients"}, data={"client_test_fraction": 0.25},
                       **TINY)  # fmt: skip
    result = fedcomp.run(cfg, progress=False)
    model = torch.load(result.run_dir / "model.pt", weights_only=True)
    dense = identity_payload_length(model.values())
    for row in result.rows:
        assert row["test_accuracy"] is None and row["test_loss"] is None
        fed = row["federated_eval"]
        assert fed["clients"] == 3 and 0 <= fed["test_accuracy"] <= 1 and math.isfinite(fed["test_loss"])
        assert row["downlink_bytes"] == 3 * row["downlink_bytes_per_client"] + 3 * dense  # train + evaluate
    assert result.final_accuracy is None


# ---------------------------------------------------------------------------------------------- the clients


def train_reporting_lr(model, data, config, *, device, generator, loss_term, loss, server_round):
    """fedcomp's own loop, reporting the learning rate it was handed (a ``client.train_fn``)."""
    stats = train_local(model, data, config, generator, device, loss_term=loss_term, loss=loss)
    return {"train_loss": stats.loss, "local_steps": stats.steps, "lr": config.lr}


def test_the_exponential_schedule_gives_round_r_the_rate_lr_times_gamma_to_the_r_minus_1(tmp_path):
    client = {"lr": 0.08, "lr_schedule": "exponential", "lr_gamma": 0.5, "local_steps": 1,
              "train_fn": f"{HERE}:train_reporting_lr"}  # fmt: skip
    cfg = small_config(tmp_path, model={"name": "mlp"}, federation={"rounds": 3, "evaluate_every": 0}, client=client)
    rows = fedcomp.run(cfg, progress=False).rows
    assert [r["client_metrics"]["lr"] for r in rows] == pytest.approx([0.08, 0.04, 0.02], rel=1e-12)


def digits_in_four(seed: int = 0):
    """A loader in the tuple form: (x_train, y_train, x_test, y_test)."""
    split = load_dataset("mnist5k", seed=seed)
    picked = torch.randperm(len(split.train), generator=torch.Generator().manual_seed(seed))[:600]  # sorted by class
    return split.train.images[picked], split.train.labels[picked], split.test.images[:200], split.test.labels[:200]


def digits_as_a_dict(seed: int = 0):
    x, y, x_test, y_test = digits_in_four(seed)
    return {"train": (x, y), "test": (x_test, y_test)}


def test_a_loader_returning_four_arrays_gives_the_data_the_dict_form_gives():
    """docs: a loader returns ``{"train": (x, y), "test": (x, y)}`` or ``(x_train, y_train, x_test, y_test)``."""
    split = {}
    for form in ("digits_in_four", "digits_as_a_dict"):
        cfg = config_from_dict({"data": {"dataset": f"{HERE}:{form}"}, "federation": {"num_clients": 3}})
        split[form] = load_experiment_data(cfg)
    four, as_dict = split["digits_in_four"], split["digits_as_a_dict"]
    assert (len(four.train), len(four.test), four.num_classes, four.input_shape) == (600, 200, 10, (1, 28, 28))
    for part in ("train", "test"):
        a, b = getattr(four, part), getattr(as_dict, part)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert (a.mean, a.std) == (b.mean, b.std)


# ---------------------------------------------------------------------------------------------- statistics round


def test_a_statistics_round_in_which_every_client_fails_keeps_the_models_statistics(tmp_path, monkeypatch):
    """BWCP prunes in round 2 after a statistics round. Every client failing it is each client's recorded failure,
    the round still aggregates all three, and the model is pruned from the statistics it had: exactly the run
    that asks for no statistics round (``recalibrate = false``), bytes of the asking aside."""
    common = {"model": {"name": "resnet20"}, "federation": {"rounds": 2, "evaluate_every": 0},
              "data": {"test_size": 200}, "client": {"local_steps": 1, "batch_size": 16}}  # fmt: skip
    bwcp = {"name": "bwcp", "prune_at": [2], "recalibrate_samples": 32}
    unasked = fedcomp.run(small_config(tmp_path, name="unasked", server_compression={**bwcp, "recalibrate": False},
                                       **common), progress=False)  # fmt: skip

    import fedcomp.flower.recalibration as recalibration

    def cannot_measure(*args, **kwargs):
        raise RuntimeError("this client cannot measure")

    monkeypatch.setattr(recalibration, "statistics_reply", cannot_measure)  # in-process: the clients' handler
    failed = fedcomp.run(small_config(tmp_path, name="failed", server_compression=bwcp, **common), progress=False)
    row = failed.rows[1]
    assert row["clients"] == [0, 1, 2] and row["server_metrics"]["statistics_clients"] == 0
    assert [f["reason"] for f in row["failures"]] == ["statistics round: client error: this client cannot measure"] * 3
    assert row["statistics_downlink_bytes"] > 0 and row["statistics_uplink_bytes"] == 0
    assert [r["downlink_crc32"] for r in failed.rows] == [r["downlink_crc32"] for r in unasked.rows]
    pruned, reference = (torch.load(r.run_dir / "model.pt", weights_only=True) for r in (failed, unasked))
    assert pruned.keys() == reference.keys() and all(torch.equal(pruned[k], reference[k]) for k in reference)


# ---------------------------------------------------------------------------------------------- resume


def test_fedavgm_momentum_is_checkpointed_and_a_resumed_run_continues_exactly(tmp_path, monkeypatch):
    """A FedAvgM run stopped by Ctrl-C after round 1 resumes from its checkpoint, which holds the server's momentum,
    and ends with the rows and the model of the same run made in one go (momentum 0.9: a momentum lost at the
    restart changes round 2's step)."""
    cfg = small_config(tmp_path, federation={"rounds": 3}, strategy={"name": "fedavgm", "server_momentum": 0.9}, **TINY)
    whole = fedcomp.run(cfg, run_dir=tmp_path / "whole", progress=False)

    save_checkpoint = RunRecorder.save_checkpoint

    def stopped_after_round_1(self, server_round, *args, **kwargs):
        save_checkpoint(self, server_round, *args, **kwargs)
        if server_round == 1:  # what the server does on Ctrl-C: the round in progress is dropped
            raise RunInterruptedError("stopped by Ctrl-C (SIGINT)")

    monkeypatch.setattr(RunRecorder, "save_checkpoint", stopped_after_round_1)
    run_dir = tmp_path / "stopped"
    with pytest.raises(
        RunInterruptedError, match=f"after 1 of 3 rounds.*fedcomp run --resume {re.escape(str(run_dir))}"
    ):
        fedcomp.run(cfg, run_dir=run_dir, progress=False)
    monkeypatch.undo()
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint.round == 1 and len(read_rounds(run_dir)) == 1
    assert set(checkpoint.server["strategy"]) == {"momentum_vector"}

    resumed = fedcomp.resume(run_dir, progress=False)
    assert [r["round"] for r in resumed.rows] == [1, 2, 3]
    for a, b in zip(whole.rows, resumed.rows, strict=True):
        assert (a["downlink_crc32"], a["clients"]) == (b["downlink_crc32"], b["clients"])
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-9)
    final_whole, final_resumed = (torch.load(r.run_dir / "model.pt", weights_only=True) for r in (whole, resumed))
    assert all(torch.equal(final_whole[k], final_resumed[k]) for k in final_whole)


# ---------------------------------------------------------------------------------------------- sweep


def make_demo_arguments() -> list[str]:
    """``make demo``'s command line as the Makefile spells it, its variables filled in, without the program."""
    text = MAKEFILE.read_text()
    variables = dict(re.findall(r"^(DEMO_\w+) := (.*)$", text, re.MULTILINE))
    (recipe,) = re.findall(r"^demo:.*\n\t(.*)$", text, re.MULTILINE)
    line = re.sub(r"\$\((DEMO_\w+)\)", lambda m: variables[m.group(1)], recipe)
    program, *args = shlex.split(line)
    assert program.endswith("/fedcomp") and args[0] == "sweep", line
    return args[1:]


def test_fedcomp_sweep_runs_the_make_demo_command_line(tmp_path, capsys):
    """The demo's grid (uplink × downlink) and report, as ``make demo`` runs it, on a tiny federation."""
    args = make_demo_arguments()
    args[args.index("--sweep-dir") + 1] = str(tmp_path / "demo")
    # In-process, one client at a time as in tests/conftest.py (num_cpus = the cores): clients in parallel threads
    # share torch's global generator, and the seeded round-0 model (SuRP downlink) then differs at random.
    tiny = ["federation.num_clients=3", "federation.rounds=1", "federation.fraction_train=1.0",
            "client.local_steps=2", "model.name=mlp", 'simulation.backend="in-process"',
            f"simulation.num_cpus={float(CPUS_PER_WORKER)}"]  # fmt: skip
    assert cli_main(["sweep", *args, *[a for s in tiny for a in ("--set", s)], "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "sweep directory:" in out and "report:" in out
    runs = sorted(p.parent for p in (tmp_path / "demo").glob("*/config.toml"))
    assert len(runs) == 4 and len(re.findall(r"^\s+complete\s", out, re.MULTILINE)) == 4, out
    pairs = set()
    for run in runs:
        cfg = load_config(run / "config.toml")
        (row,) = read_rounds(run)
        assert cfg.federation.rounds == 1 and row["clients"] == [0, 1, 2] and row["failures"] == []
        pairs.add((cfg.uplink.name, cfg.downlink.name))
    assert pairs == {(up, down) for up in ("identity", "surp") for down in ("identity", "surp")}
    assert (tmp_path / "demo" / "report" / "report.html").exists()
