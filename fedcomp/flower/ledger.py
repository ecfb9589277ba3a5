"""The round's ledger keeper: which round's record is open, and every measured message counted into it.

One job: :class:`RoundLedger` knows which :class:`~fedcomp.flower.rounds.RoundStats` the messages on the
wire belong to (the round being trained, or the round being closed while a statistics round runs at its
end), counts each ``send_and_receive``'s messages and replies into it as
:class:`~fedcomp.flower.wire.WireGrid` measured them (train messages per node, the others in total; outside
any round, as unattributed bytes), and looks for the replies that missed their round's timeout, whose bytes go
into a later round's record (``late``) rather than being lost. The wrapper opens a round's record in
``configure_train`` and hands it over at the round's end (:meth:`RoundLedger.take`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flwr.app import Message, MessageType

from fedcomp.coding import DecodeError
from fedcomp.flower.rounds import ClientFailure, RoundStats
from fedcomp.flower.wire import wire_bytes
from fedcomp.messages import payload_from

logger = logging.getLogger(__name__)

LATE_ROUNDS = 3
"""How many rounds a train message's reply is still looked for after its round timed out."""


class RoundLedger:
    """The open round's record and the wire's bytes counted into it (see the module docstring)."""

    def __init__(self) -> None:
        self.current: RoundStats | None = None
        """The round being trained (from ``configure_train`` until its end takes it)."""
        self.pending_failures: list[ClientFailure] = []
        """Failures found before a round (a warm-up reply refused): recorded in the next round's row."""
        self.unattributed_wire = {"downlink": 0, "uplink": 0}
        """Wire bytes of messages sent outside a round (the warm-up of fedcomp's own app)."""
        self._closing: RoundStats | None = None
        self._awaiting: dict[str, tuple[int, int]] = {}
        """Train message id → (round, node), for replies that missed their round's timeout."""

    def open(self, server_round: int) -> RoundStats:
        """A new round's record, now the open one, with the failures found before it."""
        stats = RoundStats(round=server_round)
        self.current = stats
        stats.failures, self.pending_failures = self.pending_failures, []
        return stats

    def open_or_new(self, server_round: int) -> RoundStats:
        """The open round's record, or a new one not kept (a reply aggregated outside a configured round)."""
        return self.current if self.current is not None else RoundStats(round=server_round)

    def take(self) -> RoundStats | None:
        """Hand over (and forget) the open round's record; None when none is open."""
        stats, self.current = self.current, None
        return stats

    @contextmanager
    def closing(self, stats: RoundStats) -> Iterator[None]:
        """While the round ``stats`` records is closed (its statistics round), its messages are counted into it."""
        self._closing = stats
        try:
            yield
        finally:
            self._closing = None

    def on_wire(self, sent: list[tuple[Message, int]], replies: list[tuple[Message, int]]) -> None:
        """A send_and_receive's messages and replies, measured (:class:`~fedcomp.flower.wire.WireGrid`): into the
        round's ledger, train messages per node; a train message left unanswered is looked for later."""
        stats = self.current if self.current is not None else self._closing
        answered = {r.metadata.reply_to_message_id for r, _ in replies}
        for m, n in sent:
            if stats is None:
                self.unattributed_wire["downlink"] += n
            elif m.metadata.message_type == MessageType.TRAIN:
                stats.downlink_wire[int(m.metadata.dst_node_id)] = n
                if m.metadata.message_id not in answered:
                    self._awaiting[m.metadata.message_id] = (stats.round, int(m.metadata.dst_node_id))
            else:
                stats.other_downlink_wire += n
        for r, n in replies:
            if stats is None:
                self.unattributed_wire["uplink"] += n
            elif r.metadata.message_type == MessageType.TRAIN:
                stats.uplink_wire[int(r.metadata.src_node_id)] = n
            else:
                stats.other_uplink_wire += n

    def collect_late(self, grid: Any, stats: RoundStats) -> None:
        """Replies to earlier rounds' train messages that came after their timeout: their bytes go into this
        round's ledger (``late``), not lost. Looked for during :data:`LATE_ROUNDS` rounds."""
        if not self._awaiting or not hasattr(grid, "pull_messages"):
            return
        self._awaiting = {k: v for k, v in self._awaiting.items() if stats.round - v[0] <= LATE_ROUNDS}
        try:
            replies = list(grid.pull_messages(list(self._awaiting)))
        except Exception as exc:  # noqa: BLE001 - looking for late replies must never end a run
            logger.debug("late replies: pull failed: %s", exc)
            return
        for r in replies:
            key = r.metadata.reply_to_message_id
            if key not in self._awaiting:
                continue
            round_, node = self._awaiting.pop(key)
            if int(r.metadata.src_node_id) != node:  # the link's own note (expired, node gone): no reply came
                continue
            try:
                payload = 0 if r.has_error() else len(payload_from(r.content))
            except DecodeError:
                payload = 0
            stats.late.append({"round": round_, "node_id": node, "uplink_bytes": payload, "wire_bytes": wire_bytes(r)})
