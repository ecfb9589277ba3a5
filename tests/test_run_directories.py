"""Run directories that lose nothing: damaged rows, resume preparation, locks, config digests, checkpoints, names.

Real files and real processes; no federation is started here (the report side
of damaged runs is in test_reports.py, on the runs of its real sweep).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from fedcomp.config import ConfigError, ExperimentConfig, config_from_dict, dump_config, load_config
from fedcomp.flower.rounds import RoundRow
from fedcomp.servers.recorder import (
    CONFIG_FILE,
    DROPPED_ROUNDS_FILE,
    ROUNDS_FILE,
    SUMMARY_FILE,
    CorruptRunError,
    RunDirBusyError,
    RunRecorder,
    check_resumable,
    config_digest,
    keep_rounds_up_to,
    load_checkpoint,
    lock_holder,
    lock_run_dir,
    missing_rounds,
    new_run_dir,
    prepare_run_dir,
    read_rounds,
    read_rounds_checked,
)
from fedcomp.sweep import _read_state, run_sweep
from tests.conftest import small_config


def make_row(n: int, clients: tuple[int, ...] = (0, 1), failed: int = 1) -> RoundRow:
    k = len(clients)
    return RoundRow(
        round=n,
        sampled_clients=k + failed,
        clients=list(clients),
        failed_clients=failed,
        failures=[{"client": 2, "reason": "no reply before the round timeout"}] * failed,
        train_loss=1.0 / n,
        test_accuracy=0.5 + n / 100,
        test_loss=0.9 / n,
        uplink_bytes=100 * k,
        uplink_bytes_per_client=[100] * k,
        uplink_bytes_sent_per_client=[100] * k,
        downlink_bytes=40 * (k + failed),
        downlink_bytes_per_client=40,
        wall_s=0.5,
    )


def row_line(n: int) -> bytes:
    return json.dumps(asdict(make_row(n))).encode()


# Each damage: the file's lines (rounds 1..5 with one line damaged), the rounds intact, the damaged line numbers.
DAMAGES = {
    "corrupt middle line": ([row_line(1), row_line(2), row_line(3)[:40] + b"}", row_line(4), row_line(5)], [3]),
    "torn last line": ([row_line(1), row_line(2), row_line(3), row_line(4), row_line(5)[:60]], [5]),
    "binary garbage line": ([row_line(1), b"\x00\xff\xfe\x80garbage\x9c", row_line(3), row_line(4), row_line(5)], [2]),
    "not an object": ([row_line(1), row_line(2), b"[1, 2, 3]", row_line(4), row_line(5)], [3]),
    "missing key": ([row_line(1), json.dumps({"round": 2}).encode(), row_line(3), row_line(4), row_line(5)], [2]),
    "None count": (
        [row_line(1), row_line(2), row_line(3), json.dumps({**asdict(make_row(4)), "uplink_bytes": None}).encode()]
        + [row_line(5)],
        [4],
    ),
    "round repeated": ([row_line(1), row_line(2), row_line(3), row_line(2), row_line(4), row_line(5)], [4]),
}


def write_rounds(run_dir: Path, lines: list[bytes], torn: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ROUNDS_FILE).write_bytes(b"\n".join(lines) + (b"" if torn else b"\n"))


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_every_intact_row_is_read_and_nothing_is_lost_preparing_a_resume(tmp_path, damage):
    lines, bad = DAMAGES[damage]
    write_rounds(tmp_path, lines, torn=damage == "torn last line")
    rows, damaged = read_rounds_checked(tmp_path)
    intact = [i + 1 for i in range(len(lines)) if i + 1 not in bad]
    assert [d.line for d in damaged] == bad
    assert all(d.raw == lines[d.line - 1] and d.reason for d in damaged)
    assert rows == [json.loads(lines[i - 1]) for i in intact]  # the rows after the damage too
    assert read_rounds(tmp_path) == rows
    if damage == "torn last line":
        assert damaged[0].reason.startswith("torn last line")
    assert [r["round"] for r in rows] == sorted({r["round"] for r in rows})  # a repeated round is read once

    moved = keep_rounds_up_to(tmp_path, 3)
    kept = (tmp_path / ROUNDS_FILE).read_bytes().splitlines()
    dropped = (tmp_path / DROPPED_ROUNDS_FILE).read_bytes().split(b"\n")[:-1]
    assert moved == len(dropped)
    assert Counter(kept + dropped) == Counter(lines)  # every line once, damaged ones byte for byte
    assert [json.loads(x)["round"] for x in kept] == [r["round"] for r in rows if r["round"] <= 3]
    assert read_rounds_checked(tmp_path) == (read_rounds(tmp_path), [])  # what is left is clean
    assert missing_rounds(read_rounds(tmp_path), 3) == sorted({1, 2, 3} - {r["round"] for r in rows})

    # Preparing again moves nothing more and keeps what was set aside before.
    before = (tmp_path / DROPPED_ROUNDS_FILE).read_bytes()
    assert keep_rounds_up_to(tmp_path, 3) == 0
    assert (tmp_path / DROPPED_ROUNDS_FILE).read_bytes() == before


def test_rows_set_aside_by_an_earlier_resume_are_kept(tmp_path):
    write_rounds(tmp_path, [row_line(1), row_line(2), row_line(3)], torn=False)
    assert keep_rounds_up_to(tmp_path, 2) == 1
    write_rounds(tmp_path, [row_line(1), row_line(2), row_line(3), b"\xff"], torn=False)
    assert keep_rounds_up_to(tmp_path, 1) == 3
    assert (tmp_path / DROPPED_ROUNDS_FILE).read_bytes() == b"\n".join(
        [row_line(3), row_line(2), row_line(3), b"\xff"]
    ) + b"\n"
    assert [r["round"] for r in read_rounds(tmp_path)] == [1]


def test_a_whole_binary_rounds_file_reads_as_no_rows(tmp_path):
    (tmp_path / ROUNDS_FILE).write_bytes(bytes(range(256)) * 8)
    rows, damaged = read_rounds_checked(tmp_path)
    assert rows == [] and damaged and all(d.reason for d in damaged)
    assert read_rounds_checked(tmp_path / "absent") == ([], [])


# ----------------------------------------------------------------------------- checkpoints


def test_a_corrupt_checkpoint_is_a_typed_error_naming_the_file(tmp_path):
    cfg = config_from_dict(small_config(tmp_path))
    recorder = RunRecorder(tmp_path / "run", cfg)
    recorder.save_checkpoint(2, {"w": torch.ones(3)}, {"step": 1})
    good = load_checkpoint(tmp_path / "run")
    assert good.round == 2 and torch.equal(good.model["w"], torch.ones(3)) and good.server == {"step": 1}

    path = tmp_path / "run" / "checkpoint.pt"
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], b"\x80\x04garbage" * 10, b""):
        path.write_bytes(damaged)
        with pytest.raises(CorruptRunError, match=r"checkpoint\.pt: the checkpoint cannot be loaded") as info:
            load_checkpoint(tmp_path / "run")
        assert isinstance(info.value, ConfigError) and str(path) in str(info.value)
    torch.save({"model": {"w": torch.ones(1)}}, path)  # loads, but it is not a checkpoint
    with pytest.raises(CorruptRunError, match=r"not a fedcomp checkpoint \(no valid 'round'\)"):
        load_checkpoint(tmp_path / "run")
    path.unlink()
    assert load_checkpoint(tmp_path / "run") is None


# ----------------------------------------------------------------------------- the config digest


def test_resume_refuses_an_edited_config_and_accepts_an_unedited_one(tmp_path, caplog):
    cfg = config_from_dict(small_config(tmp_path))
    run_dir = tmp_path / "run"
    RunRecorder(run_dir, cfg)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["config_digest"] == config_digest(cfg)
    check_resumable(run_dir, load_config(run_dir / CONFIG_FILE))

    text = (run_dir / CONFIG_FILE).read_text()
    (run_dir / CONFIG_FILE).write_text("# my note\n" + text + "\n")  # comments and blank lines change nothing
    check_resumable(run_dir, load_config(run_dir / CONFIG_FILE))

    up = '[uplink]\nname = "identity"'
    assert "\nseed = 0\n" in text and up in text
    edited = {
        "seed": text.replace("\nseed = 0\n", "\nseed = 7\n"),
        "uplink": text.replace(up, '[uplink]\nname = "topk"\ndensity = 0.1'),
    }
    for what, new_text in edited.items():
        (run_dir / CONFIG_FILE).write_text(new_text)
        with pytest.raises(ConfigError, match="was edited since the run started") as info:
            check_resumable(run_dir, load_config(run_dir / CONFIG_FILE))
        assert str(run_dir / CONFIG_FILE) in str(info.value), what

    (run_dir / CONFIG_FILE).write_text(text)
    RunRecorder(run_dir, cfg, resume_from=0)  # a resume keeps the digest recorded at the start
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["config_digest"] == summary["config_digest"]

    # A run recorded before digests existed: accepted, with a warning.
    old = {k: v for k, v in summary.items() if k not in ("config_digest", "config_file_sha256")}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(old))
    (run_dir / CONFIG_FILE).write_text(edited["seed"])
    with caplog.at_level(logging.WARNING, logger="fedcomp.servers.recorder"):
        check_resumable(run_dir, load_config(run_dir / CONFIG_FILE))
    assert "records no config digest" in caplog.text


# ----------------------------------------------------------------------------- summary


def test_the_summary_counts_rounds_without_an_update_and_failed_replies(tmp_path):
    recorder = RunRecorder(tmp_path / "run", config_from_dict(small_config(tmp_path)))
    recorder.append(make_row(1, clients=(0, 1), failed=1))
    recorder.append(make_row(2, clients=(), failed=3))
    recorder.append(make_row(3, clients=(0,), failed=0))
    summary = json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())
    assert summary["rounds_completed"] == 3
    assert summary["rounds_without_update"] == 1
    assert summary["failed_client_replies"] == 4
    assert recorder.rounds_aggregated() == 2
    recorder.finish("complete")
    assert json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())["status"] == "complete"


# ----------------------------------------------------------------------------- new run directories


def test_a_new_run_never_overwrites_what_is_in_its_directory(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / CONFIG_FILE).write_text("# the user's own config\n")
    with pytest.raises(ConfigError, match=r"is not empty \(it holds config\.toml\)"):
        prepare_run_dir(mine)
    cfg = config_from_dict(small_config(tmp_path))
    with pytest.raises(ConfigError, match=r"config\.toml exists already"):
        RunRecorder(mine, cfg)
    assert (mine / CONFIG_FILE).read_text() == "# the user's own config\n"
    assert sorted(p.name for p in mine.iterdir()) == [CONFIG_FILE]

    run = tmp_path / "run"
    RunRecorder(run, cfg)
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        prepare_run_dir(run)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_run_dir(tmp_path / "file")

    assert prepare_run_dir(tmp_path / "new" / "deeper").is_dir()  # created
    empty = tmp_path / "empty"
    with lock_run_dir(empty):
        pass  # leaves only the lock file behind
    assert prepare_run_dir(empty) == empty


def test_a_run_name_cannot_leave_output_dir(tmp_path):
    out = tmp_path / "a" / "b" / "runs"
    for name in ("../../escape", "sub/dir", "/abs"):
        with pytest.raises(ConfigError, match="outside output_dir"):
            new_run_dir(ExperimentConfig(name=name, output_dir=str(out)))
    assert not any(p.name.startswith("escape") for p in tmp_path.rglob("*"))
    made = new_run_dir(ExperimentConfig(name="plain", output_dir=str(out)))
    assert made.parent == out and made.name.startswith("plain-")


# ----------------------------------------------------------------------------- locks

HOLD = """
import sys, time
from fedcomp.servers.recorder import lock_run_dir
with lock_run_dir(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def held_by_another_process(path: Path):
    """A real second process holding ``lock_run_dir(path)``; yields it (killed with SIGKILL at the end)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        line = proc.stdout.readline()  # blocks until the lock is taken (or the process died)
        assert line == b"locked\n", proc.stderr.read().decode()[-2000:]
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


def test_a_locked_run_directory_is_refused_until_its_holder_dies(tmp_path):
    run_dir = tmp_path / "run"
    with held_by_another_process(run_dir) as proc:
        assert lock_holder(run_dir) == proc.pid
        with pytest.raises(RunDirBusyError, match=rf"run directory {run_dir} is in use by process {proc.pid}") as info:
            with lock_run_dir(run_dir):
                pass
        assert isinstance(info.value, ConfigError)
        os.kill(proc.pid, signal.SIGKILL)  # no clean-up runs: the kernel releases the lock
        proc.wait(timeout=60)
    with lock_run_dir(run_dir):
        assert lock_holder(run_dir) == os.getpid()
        # In one process too: a second taker of the same directory is refused at once (not after the wait for
        # a forked child's copy of the lock, 10 s) ...
        t0 = time.monotonic()
        with pytest.raises(RunDirBusyError, match="this process"):
            with lock_run_dir(run_dir):
                pass
        assert time.monotonic() - t0 < 5
        # ... while a run directory inside a locked sweep directory is a lock of its own.
        with lock_run_dir(run_dir / "member"):
            pass
    with lock_run_dir(run_dir):  # released at the end of the block
        pass


def test_a_lock_a_forked_child_still_has_open_is_waited_for_not_refused(tmp_path):
    """flock belongs to the open file, so a child forked while a run held its lock (a subprocess before its exec)
    keeps it after the run ends; the next run in this process waits for that copy instead of failing "busy"."""
    run_dir = tmp_path / "run"
    release, hold = os.pipe()
    with lock_run_dir(run_dir):
        child = os.fork()
        if child == 0:  # the child holds a copy of the lock's file until the pipe closes, then exits
            try:
                os.close(hold)
                os.read(release, 1)
            finally:
                os._exit(0)
    os.close(release)
    t0 = time.monotonic()
    threading.Timer(0.3, os.close, args=(hold,)).start()
    try:
        with lock_run_dir(run_dir):  # taken only once the child has let go (without the wait: refused at once)
            assert lock_holder(run_dir) == os.getpid()
        assert time.monotonic() - t0 >= 0.3
    finally:
        os.waitpid(child, 0)


def test_a_second_sweep_on_a_sweep_directory_is_refused(tmp_path):
    sweep_dir = tmp_path / "sweep"
    cfg = small_config(tmp_path)
    grid = {"uplink.name": ["identity", "topk"]}
    with held_by_another_process(sweep_dir) as proc:  # the first sweep, as far as the lock goes
        t0 = time.monotonic()
        with pytest.raises(RunDirBusyError, match=rf"sweep directory {sweep_dir} is in use by process {proc.pid}"):
            run_sweep(cfg, grid, sweep_dir=sweep_dir, progress=False)
        assert time.monotonic() - t0 < 30  # refused at once, no federation started
    assert sorted(p.name for p in sweep_dir.iterdir()) == [".lock"]  # nothing written


def test_an_unreadable_sweep_record_is_set_aside_not_overwritten(tmp_path):
    for content in ("null", "[1, 2]", '{"runs": 3}', "{torn"):
        root = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
        root.mkdir()
        (root / "sweep.json").write_text(content)
        assert _read_state(root) == {}
        assert not (root / "sweep.json").exists()
        assert (root / "sweep.json.unreadable-1").read_text() == content
    good = tmp_path / "good"
    good.mkdir()
    (good / "sweep.json").write_text('{"runs": [{"dir": "a"}]}')
    assert _read_state(good) == {"runs": [{"dir": "a"}]}


def test_fedcomp_run_and_resume_refuse_a_directory_another_process_holds(tmp_path):
    """What `fedcomp run --run-dir D` twice at once did on main: now the second is refused before anything starts."""
    import fedcomp
    from tests.conftest import small_config

    run_dir = tmp_path / "run"
    cfg = small_config(tmp_path)
    with held_by_another_process(run_dir) as proc:
        with pytest.raises(RunDirBusyError, match=f"in use by process {proc.pid}"):
            fedcomp.run(cfg, run_dir=run_dir, progress=False)
        (run_dir / "config.toml").write_text(dump_config(config_from_dict(cfg)))
        with pytest.raises(RunDirBusyError, match=f"in use by process {proc.pid}"):
            fedcomp.resume(run_dir, progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "config.toml"]  # nothing written, no row
