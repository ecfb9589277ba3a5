"""One round's record: what the wrapper counts while it runs, and the row that records it.

:class:`RoundStats` is the wrapper's ledger of a round (:class:`~fedcomp.flower.strategy.CompressedStrategy`
fills it from ``configure_train`` to ``aggregate_evaluate``: nodes, failures, bytes each way, what the
compressors reported). :meth:`RoundStats.row` turns it into :class:`RoundRow`, the line of ``rounds.jsonl``
that :class:`~fedcomp.servers.recorder.RunRecorder` writes; fedcomp's ServerApp (:func:`fedcomp.servers.app.serve`)
and :class:`~fedcomp.flower.recording.AppRecorder` write rows only through it, so a row means the same wherever
it was written. When a round ends, the wrapper hands its ledger over with what it did at the end
(:class:`RoundClose`).

A new per-round counter is added here: a field of :class:`RoundStats` (counted where the wire is: the
wrapper or its channels), its key in :class:`RoundRow`, and one line in :meth:`RoundStats.row`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from fedcomp.compressors.model.base import Snapshot


@dataclass
class ClientFailure:
    node_id: int
    reason: str
    uplink_bytes: int = 0
    wire_bytes: int = 0
    """The whole reply's bytes as Flower serializes it (:mod:`.wire`), when a train reply came."""


@dataclass
class RoundStats:
    """What crossed the wire in one round and what came of it."""

    round: int
    sampled_nodes: list[int] = field(default_factory=list)
    clients: list[int] = field(default_factory=list)
    """Partition ids of the clients whose update was aggregated."""
    uplink_bytes: list[int] = field(default_factory=list)
    """Payload length of each aggregated client's update as received, same order as ``clients``."""
    uplink_bytes_sent: list[int] = field(default_factory=list)
    """The same payloads' lengths as each client measured them before sending."""
    failures: list[ClientFailure] = field(default_factory=list)
    downlink_bytes_sent: list[int] = field(default_factory=list)
    """The train payload's length for each sampled node, same order as ``sampled_nodes`` (equal unless
    the downlink carries the model's change: then each node's catch-up differs); with aggregate feedback, plus
    the predictor's payload sent in the same message."""
    predictor_bytes_sent: int = 0
    """Of the above, summed over the sampled nodes: the aggregate-feedback predictor's payloads
    (``error_feedback = "aggregate"``, :mod:`.predictor`)."""
    downlink_crc32: int = 0
    """Identifies the model a round started from: CRC32 of the broadcast payload (without its trailing CRC
    field), or, when the downlink carries the model's change, of the model the clients rebuild."""
    downlink_bytes_received: list[int] = field(default_factory=list)
    """The broadcast's length as each aggregated client measured it on arrival, same order as ``clients`` (with the
    predictor that came in the same message, under aggregate feedback)."""
    server_metrics: dict[str, float] = field(default_factory=dict)
    """What the server's compressors reported: the model compressor when it built the broadcast, or the
    downlink's channel (``downlink_*``) when it sent the model's change; plus a statistics round's
    ``statistics_clients`` and the update norm bound's numbers. The row's ``server_metrics`` start from it."""
    evaluate_downlink_bytes: int = 0
    """Bytes sent for client-side evaluation (the aggregated model, dense, to each evaluating node)."""
    statistics_downlink_bytes: int = 0
    """Bytes sent for a statistics round (:mod:`.recalibration`): the global model, dense, to each asked node."""
    statistics_uplink_bytes: int = 0
    """The statistics reports received in that round."""
    evaluate_metrics: dict[str, float] = field(default_factory=dict)
    """The inner strategy's aggregate of the clients' evaluation replies (plus ``clients``: how many counted)."""
    train_loss: float | None = None
    client_metrics: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None
    """Why the round aggregated nothing (no usable reply, fewer than the quorum, the strategy refused, a non-finite
    aggregate); None if it did."""
    unused_uplink_bytes: int = 0
    """Usable updates received in a round that then aggregated nothing (``skipped``): sent all the same."""
    client_model: OrderedDict[str, torch.Tensor] | None = None
    """When the downlink carries the model's change: R_t, the model the round's clients held and trained from
    (the server's own model w_t differs from it by what the change's compressor has not sent yet)."""
    downlink_wire: dict[int, int] = field(default_factory=dict)
    """Node → the whole train message's bytes as Flower serializes it (:mod:`.wire`: payload, config, framing)."""
    uplink_wire: dict[int, int] = field(default_factory=dict)
    """Node → its train reply's bytes as Flower serializes it."""
    uplink_wire_clients: list[int] = field(default_factory=list)
    """The aggregated clients' train replies' wire bytes, same order as ``clients``."""
    other_downlink_wire: int = 0
    """The other messages' wire bytes (client-side evaluation, a statistics round)."""
    other_uplink_wire: int = 0
    """Their replies'."""
    late: list[dict[str, int]] = field(default_factory=list)
    """Replies of earlier train messages that came after their round's timeout, received in this round:
    ``round``, ``node_id``, ``uplink_bytes`` (payload), ``wire_bytes``."""
    sim_client_s: dict[int, float] = field(default_factory=dict)
    """Client (partition) → its simulated time in the round (:mod:`fedcomp.network`), for the clients that replied
    in time for real."""
    sim_round_s: float | None = None
    """The round's simulated duration; None without a network model."""
    sim_clock_s: float | None = None
    """The simulated clock at the round's end (the sum of the rounds' durations)."""
    started: float = field(default_factory=time.perf_counter)

    @property
    def downlink_bytes(self) -> int:
        return sum(self.downlink_bytes_sent) + self.evaluate_downlink_bytes + self.statistics_downlink_bytes

    @property
    def downlink_bytes_per_client(self) -> int:
        """The train payload's mean length over the sampled nodes (exact when they all got the same)."""
        sent = self.downlink_bytes_sent
        return round(sum(sent) / len(sent)) if sent else 0

    @property
    def late_uplink_bytes(self) -> int:
        return sum(r["uplink_bytes"] for r in self.late)

    @property
    def uplink_bytes_total(self) -> int:
        """Every uplink byte received: undecodable payloads, the updates of a round that kept its model and the
        late replies of earlier rounds included."""
        failed = sum(f.uplink_bytes for f in self.failures)
        used = sum(self.uplink_bytes) + self.unused_uplink_bytes + self.statistics_uplink_bytes
        return used + failed + self.late_uplink_bytes

    @staticmethod
    def node_wire(nodes: list[int], wire: dict[int, int]) -> list[int]:
        return [wire.get(n, 0) for n in nodes]

    def row(
        self,
        *,
        test_accuracy: float | None = None,
        test_loss: float | None = None,
        server_metrics: dict[str, float] | None = None,
    ) -> RoundRow:
        """This round's line of ``rounds.jsonl``: the counts above as the row names them, with the evaluation's
        results (``server_metrics``: the model compressor's and the evaluation's numbers; default: the broadcast's)."""
        return RoundRow(
            round=self.round,
            sampled_clients=len(self.sampled_nodes),
            clients=self.clients,
            failed_clients=len(self.failures),
            failures=[
                {"node_id": f.node_id, "reason": f.reason, "uplink_bytes": f.uplink_bytes, "wire_bytes": f.wire_bytes}
                for f in self.failures
            ],
            train_loss=self.train_loss,
            test_accuracy=test_accuracy,
            test_loss=test_loss,
            uplink_bytes=self.uplink_bytes_total,
            uplink_bytes_per_client=self.uplink_bytes,
            uplink_bytes_sent_per_client=self.uplink_bytes_sent,
            downlink_bytes=self.downlink_bytes,
            downlink_bytes_per_client=self.downlink_bytes_per_client,
            downlink_bytes_sent_per_client=self.downlink_bytes_sent,
            downlink_crc32=self.downlink_crc32,
            downlink_bytes_received_per_client=self.downlink_bytes_received,
            predictor_downlink_bytes=self.predictor_bytes_sent,
            server_metrics=dict(server_metrics if server_metrics is not None else self.server_metrics),
            wall_s=time.perf_counter() - self.started,
            client_metrics=self.client_metrics,
            skipped=self.skipped,
            federated_eval=self.evaluate_metrics,
            statistics_downlink_bytes=self.statistics_downlink_bytes,
            statistics_uplink_bytes=self.statistics_uplink_bytes,
            uplink_wire_bytes=sum(self.uplink_wire.values())
            + self.other_uplink_wire
            + sum(r["wire_bytes"] for r in self.late),
            uplink_wire_bytes_per_client=list(self.uplink_wire_clients),
            downlink_wire_bytes=sum(self.downlink_wire.values()) + self.other_downlink_wire,
            downlink_wire_bytes_sent_per_client=self.node_wire(self.sampled_nodes, self.downlink_wire),
            late_uplink_bytes=self.late_uplink_bytes,
            late_replies=list(self.late),
            sim_round_s=self.sim_round_s,
            sim_clock_s=self.sim_clock_s,
            sim_client_s={str(k): v for k, v in sorted(self.sim_client_s.items())},
        )


@dataclass
class RoundRow:
    """One line of ``rounds.jsonl``."""

    round: int
    sampled_clients: int
    clients: list[int]
    failed_clients: int
    failures: list[dict[str, Any]]
    train_loss: float | None
    test_accuracy: float | None
    test_loss: float | None
    uplink_bytes: int
    uplink_bytes_per_client: list[int]
    uplink_bytes_sent_per_client: list[int]
    downlink_bytes: int
    downlink_bytes_per_client: int
    """The train payload's mean length per sampled client (every client's, unless the downlink carries the
    model's change: then see ``downlink_bytes_sent_per_client``)."""
    wall_s: float
    downlink_crc32: int = 0
    """Which model this round started from: CRC32 of the broadcast payload, or of the model clients rebuild."""
    downlink_bytes_sent_per_client: list[int] = field(default_factory=list)
    """The train payload's length for each sampled client, in node order (catch-ups differ per client)."""
    downlink_bytes_received_per_client: list[int] = field(default_factory=list)
    """The broadcast's length as each aggregated client measured it, same order as ``clients``."""
    predictor_downlink_bytes: int = 0
    """Of ``downlink_bytes``: the aggregate-feedback predictor (``error_feedback = "aggregate"``: the previous
    round's aggregated update, dense fp32, zstd'd when shorter) sent with every train message; 0 in the other
    modes. Included in ``downlink_bytes_per_client`` and what the clients measured."""
    client_metrics: dict[str, float] = field(default_factory=dict)
    server_metrics: dict[str, float] = field(default_factory=dict)
    """The model compressor's numbers (LC's μ and step, ALDS's error) and, when the evaluated model is
    a compressed one, ``global_test_accuracy`` of the uncompressed global model."""
    skipped: str | None = None
    """Why the round aggregated no update (no usable reply, or fewer than ``federation.min_replies``)."""
    statistics_downlink_bytes: int = 0
    """Of ``downlink_bytes``: a statistics round's (the global model sent dense to each asked client, BWCP
    before pruning; :mod:`fedcomp.flower.recalibration`)."""
    statistics_uplink_bytes: int = 0
    """Of ``uplink_bytes``: the statistics reports received in that round."""
    federated_eval: dict[str, float] = field(default_factory=dict)
    """The clients' evaluation on their own held-out data (``federation.evaluate_on``): example-weighted
    ``test_loss`` and ``test_accuracy``, and ``clients``, how many replies counted."""
    uplink_wire_bytes: int = 0
    """Every reply's whole message as Flower serializes it (:mod:`.wire`), late ones included: ≥ ``uplink_bytes``."""
    uplink_wire_bytes_per_client: list[int] = field(default_factory=list)
    """The aggregated clients' train replies, whole, same order as ``clients`` (≥ ``uplink_bytes_per_client``)."""
    downlink_wire_bytes: int = 0
    """Every message sent in the round, whole (train, evaluation, statistics): ≥ ``downlink_bytes``."""
    downlink_wire_bytes_sent_per_client: list[int] = field(default_factory=list)
    """Each sampled client's train message, whole, in node order (≥ ``downlink_bytes_sent_per_client``)."""
    late_uplink_bytes: int = 0
    """Of ``uplink_bytes``: payloads of replies that came after their round's timeout (see ``late_replies``)."""
    late_replies: list[dict[str, int]] = field(default_factory=list)
    """Those replies: ``round`` they belong to, ``node_id``, ``uplink_bytes``, ``wire_bytes``."""
    sim_round_s: float | None = None
    """The round's simulated duration on ``[network]``'s links (None: no network model)."""
    sim_clock_s: float | None = None
    """The simulated clock at the round's end."""
    sim_client_s: dict[str, float] = field(default_factory=dict)
    """Each client's (partition id) simulated time in the round."""


@dataclass
class RoundClose:
    """What the wrapper hands over when a round ends (:meth:`~fedcomp.flower.strategy.CompressedStrategy.close_round`)."""

    stats: RoundStats
    """The round's counts."""
    trained: OrderedDict[str, torch.Tensor]
    """The aggregated model, as training goes on from it (and as a checkpoint keeps it, but after the last round)."""
    state: OrderedDict[str, torch.Tensor]
    """The same model with its normalization statistics measured by the clients, when the model compressor asked for a
    statistics round before the final model or an evaluation; else ``trained`` itself."""
    snapshot: Snapshot
    """The model the model compressor stands for at the round's end (LC: Δ(Θ); a final-only compressor after the last
    round: the compressed model), the one to evaluate."""
