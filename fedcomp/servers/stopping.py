"""Ctrl-C stops a simulation: the first within a poll of the server's wait for replies, a second at once.

Why fedcomp needs this: Flower's simulation runs the ServerApp in a
thread of its own and the engine in the main thread. Python delivers
SIGINT to the main thread only, so Ctrl-C stopped the engine while the
ServerApp thread, not a daemon, went on waiting for replies that could no
longer come, and the process never exited.

:func:`ctrl_c_stops` (around the engine, main thread only) turns the first
SIGINT into a request: :class:`StoppableGrid`, the grid the server's rounds
use, sees it within one poll interval of Flower's own ``send_and_receive``
loop and raises :class:`~fedcomp.errors.RunInterruptedError` in the ServerApp
thread. Flower hands that exception to the main thread after stopping the
engine, so the run directory keeps every finished round and its checkpoint
and the caller gets the error; the round that was waiting is not recorded,
and ``fedcomp run --resume`` redoes it. A second SIGINT raises KeyboardInterrupt in
the main thread at once (the stop request still ends the server thread).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from fedcomp.errors import RunInterruptedError

logger = logging.getLogger(__name__)

POLL_S = 0.1  # for a grid without a pull_interval of its own (Flower's in-memory grid has one: 0.1 s)


class StoppableGrid:
    """A Flower grid whose ``send_and_receive`` gives up when ``stop`` is set (everything else delegated)."""

    def __init__(
        self, grid: Any, stop: threading.Event, poll_s: float | None = None, default_poll_s: float = POLL_S
    ) -> None:
        """``poll_s``: how often to look for replies; if None, the grid's own ``pull_interval`` (read now: set it
        first, as :func:`fedcomp.polling.quicker_pulls` does), else ``default_poll_s``. The deployed ServerApp
        uses this loop for its polling alone (:func:`fedcomp.servers.deploy.replies_polled`)."""
        if poll_s is None:
            poll_s = getattr(grid, "pull_interval", default_poll_s)
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0 seconds, not {poll_s!r}")
        self._grid, self._stop, self._poll_s = grid, stop, poll_s

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        """Flower's loop (push, then pull until every reply or the timeout), checking ``stop`` between pulls."""
        self.raise_if_stopped()
        pending = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Any] = []
        while pending and (end is None or time.monotonic() < end):
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if pending and self._stop.wait(self._poll_s):
                self.raise_if_stopped()
        return replies

    def get_node_ids(self) -> Any:
        """The connected nodes; raises once ``stop`` is set (the sampler polls this while nodes join)."""
        self.raise_if_stopped()
        return self._grid.get_node_ids()

    def raise_if_stopped(self) -> None:
        if self._stop.is_set():
            raise RunInterruptedError("stopped by Ctrl-C (SIGINT)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


@contextmanager
def ctrl_c_stops(stop: threading.Event) -> Iterator[None]:
    """While inside: the first SIGINT sets ``stop``, a second raises KeyboardInterrupt.

    Does nothing outside the main thread (where Python allows no signal
    handler; a caller there stops a run by setting ``stop`` itself).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # the caller chose to ignore SIGINT (nohup, a background job): keep it so
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        stop.set()
        logger.warning("Ctrl-C: stopping the run; the round in progress is dropped (Ctrl-C again stops at once)")

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
