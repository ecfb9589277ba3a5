"""Judging a round's replies: which are usable, and every client failure recorded once, with its reason.

One job: :class:`ReplyJudge` turns the replies Flower hands the wrapper into the usable ones and the round's
failures. A train reply counts once per sampled node (a second reply, or one from a node not sampled, is
ignored); each is checked by :func:`~fedcomp.strategies.replies.judge_reply` (its payload decoded within limits
by the uplink's server end, :class:`~fedcomp.flower.uplink.UplinkReceiver`); with the downlink of the model's
change, the model version the reply names is checked and learnt (:mod:`.downlink`); a sampled node that gave no
reply fails; with an update norm bound (:mod:`fedcomp.strategies.influence`) each update is clipped or refused.
An evaluation reply is checked by :func:`~fedcomp.strategies.replies.judge_evaluation`. Every failure, here or
elsewhere in the round (a statistics round's, a missed deadline), goes through :meth:`ReplyJudge.fail`: into the
round's record, one line on the console, and, when the node's model is now unknown, its next broadcast dense.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message

from fedcomp.flower.downlink import DownlinkChannel
from fedcomp.flower.rounds import ClientFailure, RoundStats
from fedcomp.flower.uplink import UplinkReceiver
from fedcomp.strategies.influence import NormBound, apply_bound
from fedcomp.strategies.replies import (
    Accepted,
    ReplyPolicy,
    ReplyRejected,
    Roster,
    judge_evaluation,
    judge_reply,
)

logger = logging.getLogger(__name__)


@dataclass
class JudgedReplies:
    """A round's train replies, judged: the usable ones (with their messages, in arrival order), and whether a
    sampled node gave no reply at all (the server then waited for the round's timeout)."""

    accepted: list[tuple[Accepted, Message]] = field(default_factory=list)
    no_reply: bool = False


@dataclass
class ReplyJudge:
    """Which replies are usable, and the round's failures (see the module docstring).

    ``roster``: node → partition and size (learnt at warm-up); ``channel``: the downlink of the model's change,
    None when the broadcast is the model; ``norm_bound``: None, no bound on an update's norm."""

    receiver: UplinkReceiver
    roster: Roster
    policy: ReplyPolicy
    channel: DownlinkChannel | None = None
    norm_bound: NormBound | None = None

    def train_replies(self, stats: RoundStats, replies: Iterable[Message]) -> JudgedReplies:
        """The round's usable train replies; the others, and the sampled nodes that did not reply, fail."""
        judged = JudgedReplies()
        replied: set[int] = set()
        sampled = set(stats.sampled_nodes)
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if node in replied or (sampled and node not in sampled):
                why = "a second reply in this round" if node in replied else "a reply from a node not sampled"
                self.fail(stats, node, f"{why}: ignored")
                continue
            replied.add(node)
            try:
                accepted = judge_reply(msg, self.receiver, self.roster, self.policy)
                if self.channel is not None:
                    self.channel.check_version(accepted.model_version, accepted.uplink_bytes)
                    self.channel.learn(node, accepted.model_version)
                judged.accepted.append((accepted, msg))
            except ReplyRejected as exc:
                self.fail(stats, node, exc.reason, exc.uplink_bytes, wire_bytes=stats.uplink_wire.get(node, 0))
        no_reply = [node for node in stats.sampled_nodes if node not in replied]
        for node in no_reply:
            self.fail(stats, node, "no reply before the round timeout")
        judged.no_reply = bool(no_reply)
        if self.norm_bound is not None and judged.accepted:
            judged.accepted = self._bounded(stats, judged.accepted)
        return judged

    def evaluation_replies(self, stats: RoundStats, replies: Iterable[Message]) -> list[Message]:
        """The evaluation replies whose metrics hold up; the others are the round's failures."""
        usable = []
        for msg in replies:
            try:
                usable.append(judge_evaluation(msg, self.roster, self.policy))
            except ReplyRejected as exc:
                node = int(msg.metadata.src_node_id)
                self.fail(stats, node, f"evaluation not counted: {exc.reason}", model_unknown=False)
        return usable

    def drop(self, stats: RoundStats, dropped: Iterable[tuple[Accepted, str]]) -> None:
        """Usable replies left out of the aggregate after all (a missed deadline, :mod:`.clock`), each with why:
        the client's failure, its bytes counted; the node holds the model it replied from."""
        for a, why in dropped:
            self.fail(
                stats, a.node, why, a.uplink_bytes, model_unknown=False, wire_bytes=stats.uplink_wire.get(a.node, 0)
            )

    def _bounded(self, stats: RoundStats, accepted: list[tuple[Accepted, Message]]) -> list[tuple[Accepted, Message]]:
        """The round's updates under :attr:`norm_bound`: clipped in place, or refused as the client's failure."""
        assert self.norm_bound is not None
        bounded = apply_bound(self.norm_bound, [a.update for a, _ in accepted])
        stats.server_metrics["update_norm_limit"] = bounded.limit
        stats.server_metrics["update_norm_clipped"] = float(len(bounded.clipped))
        for i, why in bounded.rejected.items():
            judged = accepted[i][0]
            self.fail(stats, judged.node, why, judged.uplink_bytes, wire_bytes=stats.uplink_wire.get(judged.node, 0))
        for i in bounded.clipped:
            partition = accepted[i][0].partition
            logger.info("round %d: client %d's update clipped from norm %.4g to %.4g",
                        stats.round, partition, bounded.norms[i], bounded.limit)  # fmt: skip
        return [pair for i, pair in enumerate(accepted) if i not in bounded.rejected]

    def fail(
        self,
        stats: RoundStats,
        node: int,
        reason: str,
        uplink_bytes: int = 0,
        *,
        model_unknown: bool = True,
        wire_bytes: int = 0,
    ) -> None:
        """Record a client's failure; one short line on the console (the details are in the row).

        ``model_unknown``: the failed message was a train message, so the model the node holds is unknown."""
        stats.failures.append(ClientFailure(node, reason, uplink_bytes, wire_bytes))
        if self.channel is not None and model_unknown:  # its next broadcast is the dense model
            self.channel.learn(node, None)
        partition = self.roster.partition_of.get(node)
        who = f"client {partition}" if partition is not None else f"node {node}"
        logger.warning("round %d: %s failed: %s", stats.round, who, reason[:200])
