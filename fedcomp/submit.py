"""``fedcomp submit``: ``flwr run --stream`` of fedcomp's app, with an exit status that says how the run ended.

Flower's ``flwr run`` exits 0 once the run has *started*, whatever the
ServerApp then does: a run whose config does not load, or whose every
client fails, ends ``finished:failed`` on the SuperLink while the shell
sees success. ``submit`` streams the same logs, then asks the SuperLink
for the run's status (``flwr ls --run-id N --format json``) and exits 0
only for ``finished:completed``; otherwise it prints one line naming the
run, its status and Flower's details, and exits 1.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fedcomp.errors import RunFailedError

STARTED = re.compile(r"Successfully started run (\d+)")
STATUS_WAIT_S = 30.0
"""How long to wait for the SuperLink to mark a run finished after its log stream ended."""


def flwr_command() -> str:
    """``flwr`` beside this Python (a virtual environment's), else the one on PATH."""
    here = Path(sys.executable).parent / "flwr"
    found = str(here) if here.exists() else shutil.which("flwr")
    if found is None:
        raise RunFailedError("the `flwr` command is not installed here (pip install 'flwr[simulation]')")
    return found


def run_config(config: str, run_dir: str | None, overrides: Sequence[str]) -> str:
    """``--run-config`` for fedcomp's app: ``config``, ``run-dir`` and ``set`` (overrides joined by ";")."""
    items = {"config": config}
    if run_dir:
        items["run-dir"] = run_dir
    if overrides:
        bad = [o for o in overrides if ";" in o]
        if bad:
            raise RunFailedError(f"--set {bad[0]!r}: one key=value per --set (';' separates them on the wire)")
        items["set"] = ";".join(overrides)
    return " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())


def submit(
    app: str, connection: str | None, config: str, run_dir: str | None, overrides: Sequence[str], stream=None
) -> int:
    """Start the run, stream its logs to ``stream`` (stdout), and return its id once it completed.

    :class:`RunFailedError` (one line: the run, its status, Flower's details)
    when it did not start, or ended failed or stopped.
    """
    out = stream if stream is not None else sys.stdout
    flwr = flwr_command()
    target = [connection] if connection else []
    cmd = [flwr, "run", app, *target, "--stream", "--run-config", run_config(config, run_dir, overrides)]
    run_id = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            match = STARTED.search(line)
            if match and run_id is None:
                run_id = int(match.group(1))
        code = proc.wait()
    if code != 0:
        raise RunFailedError(f"`flwr run` exited with status {code} (its output is above)")
    if run_id is None:
        raise RunFailedError("`flwr run` started no run (its output is above)")
    status, details = _final_status(flwr, target, run_id)
    if status != "finished:completed":
        why = f": {details}" if details else ""
        raise RunFailedError(f"run {run_id} ended {status}{why} (the ServerApp's log is above)")
    return run_id


def _final_status(flwr: str, target: list[str], run_id: int) -> tuple[str, str]:
    """The run's status and details from the SuperLink, waiting briefly for it to be marked finished."""
    deadline = time.monotonic() + STATUS_WAIT_S
    status, details = "unknown", ""
    while True:
        try:
            done = subprocess.run(
                [flwr, "ls", *target, "--run-id", str(run_id), "--format", "json"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (subprocess.TimeoutExpired, OSError) as exc:  # the SuperLink did not answer: say so, typed
            raise RunFailedError(f"run {run_id}: cannot read its status from the SuperLink ({exc})") from None
        try:
            runs = json.loads(done.stdout[done.stdout.find("{") :]).get("runs", [])
            status, details = str(runs[0].get("status", "unknown")), str(runs[0].get("status-details", ""))
        except (ValueError, IndexError, AttributeError):
            status, details = "unknown", (done.stdout + done.stderr).strip()[-300:]
        if status.startswith("finished") or time.monotonic() > deadline:
            return status, details
        time.sleep(1.0)
