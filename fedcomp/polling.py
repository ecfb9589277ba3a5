"""Flower's simulation hands messages to the client workers at a cost that grows with the number of nodes.

In Flower 1.42 the simulation's dispatcher thread
(``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue``) asks
the link state, every 0.1 s, for one undelivered message *for each node*:
``get_message_ins(node_id)``, which scans every stored message and checks
each one (expiry, federation membership). That is nodes × messages checks
a poll: with 1,000 nodes and the 100 messages of a round in the store,
about 100,000 a poll, 10 polls a second, in a thread of the server's own
process, holding the GIL the server needs to judge and aggregate replies.
``benchmarks/scale.py`` measured it: the same 100 clients a round took
1.38× as long per round in a 1,000-node federation as in a 100-node one.

:func:`node_polling` puts in its place, for the length of one run, the same
loop over only the nodes that have an undelivered message (read from the
in-memory link state's store under its lock, in Flower's node order), each
asked exactly as Flower asks it. Nodes without a message are the ones
Flower's loop found nothing for, so the messages handed out, their order
and their checks are Flower's; only the empty questions are gone. A link
state without that store (another Flower release) keeps Flower's loop,
with a warning once.

Now that a poll costs one pass over the stored messages, it can run every
10 ms rather than every 100 ms; :func:`quicker_pulls` has Flower's
in-memory grid look for the replies as often (also 100 ms in Flower). Each
of those waits cost up to 0.1 s of every send-and-receive, that is of every
round: on the demo (about 1 s a round) that was up to a fifth of it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from queue import Queue
from typing import Any

logger = logging.getLogger(__name__)
_warned = False
POLL_INTERVAL_S = 0.01
"""How often the dispatcher looks for messages to hand out, and the server's grid for replies (Flower: 0.1 s)."""


def nodes_with_messages(state: Any, nodes: Iterable[int]) -> list[int] | None:
    """The nodes, in order, that have an undelivered message in ``state``; None if the state cannot say."""
    store = getattr(state, "message_ins_store", None)
    lock = getattr(state, "lock", None)
    if not isinstance(store, dict) or lock is None:
        return None
    with lock:
        waiting = {m.metadata.dst_node_id for m in store.values() if m.metadata.delivered_at == ""}
    return [n for n in nodes if n in waiting] if waiting else []


def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: dict[int, int], f_stop: threading.Event) -> None:
    """Flower's dispatcher loop, asking only the nodes that have a message (see the module docstring)."""
    global _warned
    while not f_stop.is_set():
        nodes = nodes_with_messages(state, nodes_mapping.keys())
        if nodes is None:
            if not _warned:
                _warned = True
                logger.warning("this Flower link state has no message store to read: every node is polled")
            nodes = list(nodes_mapping.keys())
        for node_id in nodes:
            for msg in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(msg)
        f_stop.wait(POLL_INTERVAL_S)


PROMPT_WAIT_S = 0.05
"""The longest timed wait of Flower's simulation workers on their queues (Flower: 1 s); see PromptQueue."""


class PromptQueue(Queue):
    """Flower's simulation queues with every timed wait cut to :data:`PROMPT_WAIT_S`.

    The simulation's client workers and its reply injector wait on these
    with ``get(timeout=1.0)`` and look at the stop event only in between, so
    every run ended up to a second after its ServerApp had: measured, 1.0 s
    of the 1.1 s a warm one-round run of three in-process clients took. A
    shorter wait changes when they notice the stop, nothing they hand on (a
    message that arrives wakes a waiting ``get`` at once, as before); an idle
    worker now wakes 20 times a second instead of once.
    """

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block and timeout is not None:
            timeout = min(timeout, PROMPT_WAIT_S)
        return super().get(block, timeout)


_swap_lock = threading.Lock()
_swap_depth = 0
_swapped: dict[str, Any] = {}


@contextlib.contextmanager
def node_polling() -> Iterator[None]:
    """For the length of one run: Flower's simulation dispatches with :func:`add_messages_to_queue` and its
    workers wait on :class:`PromptQueue` s.

    Runs may overlap (threads of one process): the module's names are swapped by the first run in and put
    back by the last one out, each name only if this Flower release has it as expected."""
    global _swap_depth
    from flwr.server.superlink.fleet.vce import vce_api

    with _swap_lock:
        if _swap_depth == 0:
            _swapped.clear()
            if callable(getattr(vce_api, "add_messages_to_queue", None)):
                _swapped["add_messages_to_queue"] = vce_api.add_messages_to_queue
                vce_api.add_messages_to_queue = add_messages_to_queue
            if getattr(vce_api, "Queue", None) is Queue:  # another release's queue: left alone
                _swapped["Queue"] = vce_api.Queue
                vce_api.Queue = PromptQueue
        _swap_depth += 1
    try:
        yield
    finally:
        with _swap_lock:
            _swap_depth -= 1
            if _swap_depth == 0:
                for name, original in _swapped.items():
                    setattr(vce_api, name, original)
                _swapped.clear()


def quicker_pulls(grid: Any) -> None:
    """Flower's in-memory grid (simulation) looks for replies every :data:`POLL_INTERVAL_S`; others are left alone."""
    try:
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid
    except ImportError:  # another Flower release
        return
    if isinstance(grid, InMemoryGrid) and isinstance(getattr(grid, "pull_interval", None), (int, float)):
        grid.pull_interval = min(grid.pull_interval, POLL_INTERVAL_S)
