"""Processes a test starts: a free loopback port, waiting for a listener, and a group that is always stopped.

Every process runs in its own session (process group), so stopping it takes
its children too (Ray's raylet and workers, a SuperLink's ServerApp); it is
stopped by PID, never by a global command such as ``ray stop``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, limit_s: float = 60) -> None:
    """Until something accepts connections on ``port``; fails if ``proc`` exits or the limit passes."""
    deadline = time.monotonic() + limit_s
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert proc.poll() is None, f"{proc.args[0]} exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"nothing listens on port {port} after {limit_s} s"
        time.sleep(0.2)


def stop(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def process_group(env: dict[str, str] | None = None, logs: Path | None = None) -> Iterator:
    """``start(args, log_name=None)`` inside the block; every process started is stopped when it ends."""
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log_name: str | None = None, **kwargs) -> subprocess.Popen:
        out = (logs / log_name).open("wb") if logs is not None and log_name else subprocess.DEVNULL
        kwargs.setdefault("env", env)  # one process may get an environment of its own
        try:
            p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            stop(p)
