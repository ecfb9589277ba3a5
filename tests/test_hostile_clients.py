"""Real federations with one hostile client: the run completes, the lie is a recorded failure, nothing is poisoned.

Client 0 makes a different attack each round (``[faults] hostile_client`` /
``attacks``). Every attack must be rejected where replies are judged, so
the run ends with exactly the model of the same federation in which
client 0 simply fails every round.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import tomli_w
import torch

import fedcomp
from fedcomp.cli import main as cli_main
from fedcomp.models import MODELS
from fedcomp.servers.recorder import read_rounds
from tests.conftest import small_config

ATTACKS = [
    "nan_update",
    "inf_coordinate",
    "diverged",
    "huge_examples",
    "negative_examples",
    "nan_examples",
    "steal_partition",
    "inf_partition",
    "malformed_metrics",
    "nan_loss",
]
WHY = {
    "nan_update": "not finite",
    "inf_coordinate": "not finite",
    "diverged": "1e+06",
    "huge_examples": "num-examples",
    "negative_examples": "num-examples",
    "nan_examples": "num-examples",
    "steal_partition": "partition-id",
    "inf_partition": "partition-id",
    "malformed_metrics": "payload-bytes",
    "nan_loss": "diverged",
}


def hostile_config(tmp_path, name, attacks, **sections):
    return small_config(
        tmp_path,
        name=name,
        federation={"num_clients": 4, "rounds": len(attacks), "min_train_clients": 3, "evaluate_every": 0},
        client={"local_steps": 3, "batch_size": 16, "lr": 0.05},
        faults={"hostile_client": 0, "attacks": attacks},
        **sections,
    )


def test_every_attack_is_rejected_and_the_model_is_the_one_without_that_client(tmp_path, capsys):
    attacked = fedcomp.run(hostile_config(tmp_path, "attacked", ATTACKS), progress=False)
    # The reference through the command line, as users run it, with its report.
    reference = tmp_path / "absent.toml"
    reference.write_text(tomli_w.dumps(hostile_config(tmp_path, "absent", ["raise"] * len(ATTACKS))))
    absent_dir = tmp_path / "absent"
    assert cli_main(["run", str(reference), "--run-dir", str(absent_dir), "--no-progress", "--report"]) == 0
    assert (absent_dir / "report" / "report.html").exists() and "report:" in capsys.readouterr().out
    assert json.loads((attacked.run_dir / "summary.json").read_text())["status"] == "complete"
    # evaluate_every = 0: the global model is evaluated after the last round only.
    assert [r["test_accuracy"] is None for r in attacked.rows] == [True] * (len(ATTACKS) - 1) + [False]
    for row, attack in zip(attacked.rows, ATTACKS, strict=True):
        assert row["clients"] == [1, 2, 3], (attack, row["failures"])
        (failure,) = row["failures"]
        assert WHY[attack] in failure["reason"], (attack, failure["reason"])
    model = torch.load(attacked.run_dir / "model.pt", weights_only=True)
    expected = torch.load(absent_dir / "model.pt", weights_only=True)
    assert all(torch.isfinite(v.float()).all() for v in model.values())
    assert all(torch.equal(model[k], expected[k]) for k in expected)
    assert attacked.final_accuracy == read_rounds(absent_dir)[-1]["test_accuracy"] > 0.3


def test_a_2_63_step_surp_refresh_cannot_hang_the_server(tmp_path):
    """The payload that froze main (a SuRP refresh of 2^63 steps), in every round: refused at once, the run goes on."""
    cfg = small_config(
        tmp_path,
        federation={"num_clients": 3, "rounds": 2, "round_timeout_s": 120},
        client={"local_steps": 5, "batch_size": 16},
        uplink={"name": "surp", "density": 0.01},
        faults={"hostile_client": 0, "attacks": ["surp_refresh_2_63"]},
    )
    t0 = time.monotonic()
    result = fedcomp.run(cfg, run_dir=tmp_path / "run", progress=False)
    assert time.monotonic() - t0 < 120
    for row in result.rows:
        assert row["clients"] == [1, 2]
        (failure,) = row["failures"]
        assert "undecodable payload" in failure["reason"]
        assert "refresh of 9223372036854775808 steps" in failure["reason"]
    model = torch.load(result.run_dir / "model.pt", weights_only=True)
    assert all(torch.isfinite(v.float()).all() for v in model.values())
    assert result.final_accuracy > 0.3


def test_a_run_in_which_every_client_fails_ends_failed_with_one_line_and_exit_1(tmp_path):
    """As a user runs it, in its own process: what reaches the console is fedcomp's own lines, nothing of Flower's."""
    cfg = small_config(tmp_path, federation={"rounds": 1}, faults={"client_raise_rate": 1.0})
    path = tmp_path / "failing.toml"
    path.write_text(tomli_w.dumps(cfg))
    command = [
        sys.executable,
        "-m",
        "fedcomp.cli",
        "run",
        str(path),
        "--run-dir",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    err = done.stderr
    assert done.returncode == 1, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("fedcomp: run failed")]
    assert "no round aggregated an update" in line and "injected fault" in line
    # One warning per failed client and the verdict; the tracebacks and Flower's log are in engine.log.
    # Flower's own words reach it once: its deprecation of run_simulation, passed on as a fedcomp warning.
    told = [x for x in err.splitlines() if "Flower says: DEPRECATED FEATURE" in x]
    assert len(told) == 1, err[-3000:]
    rest = "\n".join(x for x in err.splitlines() if x not in told)
    assert "Traceback" not in rest and "flwr" not in rest, err[-3000:]
    assert len(rest.strip().splitlines()) <= 3 + 2, err
    assert "Traceback" in (tmp_path / "run" / "engine.log").read_text()
    (row,) = read_rounds(tmp_path / "run")
    assert row["clients"] == [] and row["failed_clients"] == 3 and "quorum" in row["skipped"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds_without_update"] == 1


def test_no_round_aggregated_is_told_from_a_last_round_that_failed(tmp_path):
    """Three rounds in which every client fails: the run failed, with every round's row (none aggregated).
    Three rounds in which only the first aggregates (client 0 fails the other two, and the quorum is all three):
    the run is complete, though its last round kept the model."""
    common = {"model": {"name": "mlp"}, "client": {"local_steps": 1}}
    never = small_config(tmp_path, name="never", federation={"rounds": 3}, faults={"client_raise_rate": 1.0}, **common)
    with pytest.raises(fedcomp.RunFailedError, match=r"no round aggregated an update \(9 client failures\)"):
        fedcomp.run(never, run_dir=tmp_path / "never", progress=False)
    rows = read_rounds(tmp_path / "never")
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["clients"] == [] and r["failed_clients"] == 3 and "quorum" in r["skipped"] for r in rows)
    summary = json.loads((tmp_path / "never" / "summary.json").read_text())
    assert (summary["status"], summary["rounds_completed"], summary["rounds_without_update"]) == ("failed", 3, 3)

    # "evaluation_inflated" touches evaluation replies only, and the server evaluates: round 1 is an honest one.
    faults = {"hostile_client": 0, "attacks": ["evaluation_inflated", "raise", "raise"]}
    late = small_config(tmp_path, name="late", federation={"rounds": 3, "min_replies": 3}, faults=faults, **common)
    result = fedcomp.run(late, run_dir=tmp_path / "late", progress=False)
    assert [r["clients"] for r in result.rows] == [[0, 1, 2], [], []]
    assert all("quorum" in r["skipped"] for r in result.rows[1:])
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert (summary["status"], summary["rounds_completed"], summary["rounds_without_update"]) == ("complete", 3, 2)


@MODELS.register("registered_in_the_test_only", "exists in this process, not in the Ray workers")
def _driver_only_model(input_shape, num_classes):
    from fedcomp.models import build_model

    return build_model("mlp", input_shape, num_classes)


def test_a_run_whose_every_client_fails_at_warm_up_fails_with_the_first_reason(tmp_path):
    # Ray's workers are other processes: they never saw this registration (in-process clients would).
    cfg = small_config(tmp_path, model={"name": "registered_in_the_test_only"}, simulation={"backend": "ray"})
    with pytest.raises(fedcomp.RunFailedError, match="every client failed at warm-up.*registered_in_the_test_only"):
        fedcomp.run(cfg, run_dir=tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "warm-up" in summary["error"]
    assert "Traceback" in (tmp_path / "run" / "engine.log").read_text()  # the details are kept, off the console
