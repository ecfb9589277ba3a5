"""Runs that survive: a killed run resumes from its checkpoint; slow clients time out and rounds go on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib

import pytest
import tomli_w
import torch

import fedcomp
from fedcomp.cli import main as cli_main
from fedcomp.compressors.update.identity import IdentityCompressor
from fedcomp.servers.recorder import load_checkpoint, read_rounds
from tests.conftest import small_config
from tests.processes import stop
from tests.simulated import SIMULATIONS


def read_rounds_file(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _checkpointed_round(run_dir):
    try:
        ckpt = load_checkpoint(run_dir)
    except Exception:  # noqa: BLE001 - not there yet
        return 0
    return ckpt.round if ckpt is not None else 0


def _wait_for_checkpoint(run_dir, count, proc, limit_s=240):
    """Until the checkpoint of round ``count`` is on disk (it is written just after that round's row)."""
    deadline = time.monotonic() + limit_s
    while _checkpointed_round(run_dir) < count:
        if proc.poll() is not None:
            raise AssertionError(f"the run exited early: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint of round {count} after {limit_s} s")
        time.sleep(0.05)


def start_run(cfg: dict, run_dir) -> subprocess.Popen:
    """``fedcomp run`` of ``cfg`` in a process group of its own (a signal to the group reaches Ray's too)."""
    cfg_file = run_dir.parent / f"{run_dir.name}.toml"
    cfg_file.write_text(tomli_w.dumps(cfg))
    # `python -m fedcomp.cli`, with Ctrl-C acting as in a terminal even when the suite itself runs as a
    # shell's background job (which starts with SIGINT ignored, and a child inherits that).
    as_in_a_terminal = (
        "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('fedcomp.cli', run_name='__main__', alter_sys=True)"
    )
    return subprocess.Popen(
        [sys.executable, "-c", as_in_a_terminal, "run", str(cfg_file), "--run-dir", str(run_dir), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def test_a_killed_run_resumes_from_its_checkpoint_with_every_round_once(tmp_path):
    # Top-k with error feedback: the clients' residuals must survive the restart too; and FedAdam's
    # moments, the server's own state.
    cfg = small_config(
        tmp_path,
        federation={"rounds": 4, "checkpoint_every": 2},
        client={"local_steps": 5},  # what survives the restart is the claim, not how much was learned
        uplink={"name": "topk", "density": 0.05},
        strategy={"name": "fedadam", "eta": 0.01},
    )
    run_dir = tmp_path / "killed"
    proc = start_run(cfg, run_dir)
    try:
        _wait_for_checkpoint(run_dir, 2, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    before = read_rounds(run_dir)
    assert 2 <= len(before) < 4
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"  # killed, not finished
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint.round == 2

    resumed = fedcomp.resume(run_dir, progress=False)
    rows = read_rounds(run_dir)
    assert [r["round"] for r in rows] == [1, 2, 3, 4]  # every round once, none lost
    assert rows[:2] == before[:2]  # what was recorded before the kill is kept as it was
    dropped = run_dir / "rounds.dropped.jsonl"  # a round 3 finished before the kill is set aside, not deleted
    assert (read_rounds_file(dropped) if dropped.exists() else []) == before[2:]
    # Round 3 started from the model checkpointed after round 2: its broadcast is that model's payload.
    assert rows[2]["downlink_crc32"] == zlib.crc32(IdentityCompressor().encode(checkpoint.model).payload[:-4])
    assert len({r["downlink_crc32"] for r in rows}) == len(rows)  # every round started from a different model
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["resumed_from_round"] == [2]
    assert resumed.rows == rows

    assert set(checkpoint.server["strategy"]) == {"m_t", "v_t"}  # FedAdam's moments travel in the checkpoint
    # The same experiment run in one go gives the same rounds: model, FedAdam's moments and client residuals
    # were restored (every broadcast and the final model bit for bit).
    whole = fedcomp.run(cfg, run_dir=tmp_path / "whole", progress=False)
    for a, b in zip(whole.rows, rows, strict=True):
        assert (a["clients"], a["uplink_bytes_per_client"]) == (b["clients"], b["uplink_bytes_per_client"])
        assert a["downlink_crc32"] == b["downlink_crc32"]
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-9)
    final_whole = torch.load(whole.run_dir / "model.pt")
    final_resumed = torch.load(run_dir / "model.pt")
    assert all(torch.equal(final_whole[k], final_resumed[k]) for k in final_whole)

    # Resuming the now complete run changes nothing: no rows, no model, no summary rewritten.
    snapshot = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    again = fedcomp.resume(run_dir, progress=False)
    assert again.rows == rows
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"} == snapshot


def test_ctrl_c_stops_a_run_at_once_and_leaves_it_resumable(tmp_path):
    """SIGINT to the run's process group, as a terminal's Ctrl-C sends it, while the server waits on round 2.

    Before the fix the engine stopped but the ServerApp thread kept waiting for replies (up to the round
    timeout, here 10 minutes) and the process never exited.
    """
    cfg = small_config(tmp_path, federation={"rounds": 6, "round_timeout_s": 600.0}, client={"local_steps": 40})
    run_dir = tmp_path / "stopped"
    proc = start_run(cfg, run_dir)
    try:
        _wait_for_checkpoint(run_dir, 1, proc)
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        rc = proc.wait(timeout=90)  # Ray's shutdown takes seconds; the old hang took the round timeout
        stopped_in = time.monotonic() - t0
    finally:
        stop(proc)  # a no-op once it exited; else its whole group goes
    stderr = proc.stderr.read().decode()
    assert rc == 130, stderr[-2000:]
    assert f"fedcomp run --resume {run_dir}" in stderr
    assert stopped_in < 90
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_rounds(run_dir)
    assert summary["status"] == "interrupted" and 1 <= len(rows) < 6
    assert summary["error"] == f"stopped by Ctrl-C after {len(rows)} of 6 rounds"
    assert load_checkpoint(run_dir).round == len(rows)  # resumable from the last finished round


def test_resume_refuses_what_is_not_a_run_and_a_config_beside_it(tmp_path, capsys):
    assert cli_main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a fedcomp run directory" in capsys.readouterr().err
    assert cli_main(["run", str(SIMULATIONS / "demo.toml"), "--resume", str(tmp_path)]) == 2
    assert "give no CONFIG" in capsys.readouterr().err


def test_clients_past_the_round_timeout_are_recorded_and_rounds_go_on(make_config):
    cfg = make_config(
        federation={"num_clients": 3, "rounds": 2, "min_train_clients": 3, "min_replies": 2, "round_timeout_s": 5.0},
        client={"local_steps": 5},
        # The sleeper sleeps past the timeout, and no further: its reply is late at any load (it starts sleeping
        # after the round's clock has started), and round 2 waits 1 s for the worker it holds.
        faults={"client_delay_rate": 0.3, "client_delay_s": 6.0},
        # In-process clients run one at a time, in the order the server sent their messages (partition order):
        # the two others reply within the timeout, in this process at its own priority (on Ray, whose workers
        # run niced, a loaded machine once starved them past it), then the sleeper holds the worker.
        seed=2,  # with this seed client 2 sleeps past the timeout in round 1, nobody in round 2
    )
    result = fedcomp.run(cfg, progress=False)
    rows = result.rows
    assert [r["round"] for r in rows] == [1, 2]
    assert [f["reason"] for f in rows[0]["failures"]] == ["no reply before the round timeout"]
    assert rows[0]["clients"] == [0, 1]  # the others were aggregated
    assert rows[1]["clients"] == [0, 1, 2] and rows[1]["failed_clients"] == 0
    assert rows[-1]["test_accuracy"] > 0.3
