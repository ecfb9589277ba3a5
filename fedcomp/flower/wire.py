"""Wire bytes: what a whole Flower message costs, measured with Flower's own serialization.

A payload's bytes (``len(payload)``, :mod:`.uplink`) are what a codec costs. A message costs more: the
ConfigRecord and MetricRecord beside the payload, the record and array names, the Array's dtype, shape and
stype, and the message's metadata (run, message and node ids, type, group, TTL, timestamps).
:func:`wire_bytes` is that whole: ``len(flwr.common.serde.message_to_proto(m).SerializeToString())``,
computed as the protobuf's ``ByteSize()``, which is the same number without building the bytes.

:class:`WireGrid` is the grid as fedcomp's server uses it: every ``send_and_receive`` goes through it, so
every message is measured once, after Flower's grid has stamped its metadata (message id, TTL), and every
reply as it arrives; and the settings that ride in each message are shrunk to digests for the nodes that
hold them (:mod:`.settings`). Everything else is the grid's own.

In a deployment, Flower 1.42 sends a message as its metadata plus the content's objects (arrays chunked
into 5 MiB pieces, each addressed by its hash); the SuperLink's own traffic record counts those. The
protobuf size here is the message as one serialized whole: the same content, framed once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Message
from flwr.common.serde import message_to_proto

from fedcomp.flower.settings import SettingsLedger

WireListener = Callable[[list[tuple[Message, int]], list[tuple[Message, int]]], None]
"""(messages sent with their wire bytes, replies received with theirs): called after each send_and_receive."""


def wire_bytes(message: Message) -> int:
    """The whole message's length as Flower serializes it to protobuf (content, error and metadata)."""
    return int(message_to_proto(message).ByteSize())


class WireGrid:
    """A Flower grid whose ``send_and_receive`` shrinks settings and measures every message both ways."""

    def __init__(self, grid: Any, settings: SettingsLedger | None = None) -> None:
        self._grid = grid
        self.settings = settings if settings is not None else SettingsLedger()
        self.listeners: list[WireListener] = []

    @property
    def inner(self) -> Any:
        return self._grid

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """The grid's own ``send_and_receive``, with the settings shrunk per node before and every message
        measured after (the grid stamps a message's id and TTL when it pushes it)."""
        out = list(messages)
        for m in out:
            self.settings.shrink(m)
        replies = list(self._grid.send_and_receive(out, timeout=timeout))
        for r in replies:
            self.settings.confirm(r)
        sent = [(m, wire_bytes(m)) for m in out]
        got = [(r, wire_bytes(r)) for r in replies]
        for listener in self.listeners:
            listener(sent, got)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def wired(grid: Any) -> WireGrid:
    """``grid`` as a :class:`WireGrid` (itself if it is one already)."""
    return grid if isinstance(grid, WireGrid) else WireGrid(grid)
