"""Aggregating a round's usable updates with the inner Flower strategy, or keeping the model and saying why.

One job: :class:`Aggregation` hands the usable replies to the inner strategy as the messages it expects (each
client's weights ``base + Δ`` with its metrics, in partition order, so neither the aggregate nor the row
depends on arrival order) if they reach the quorum (``min_replies``), merges its float tensors back into the
full model (integer buffers from the base), and checks the result is finite. A round that falls short of the
quorum, that the inner strategy refuses or aggregates to nothing, or whose aggregate overflowed keeps its base
model, with the reason in the round's record (``skipped``) and the unused updates' bytes counted all the same.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from copy import copy

import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from fedcomp.coding import values_within
from fedcomp.flower.rounds import RoundStats
from fedcomp.messages import METRICS_KEY
from fedcomp.strategies.replies import EVENT_METRICS, Accepted

logger = logging.getLogger(__name__)

State = OrderedDict[str, torch.Tensor]


class Aggregation:
    """The inner strategy's aggregate of a round's usable updates (see the module docstring).

    ``arrays_key``: the ArrayRecord's name in the messages the inner strategy reads; ``min_replies``: the
    usable replies a round needs (at least 1)."""

    def __init__(self, inner: Strategy, arrays_key: str, min_replies: int = 1) -> None:
        self.inner = inner
        self.arrays_key = arrays_key
        self.min_replies = min_replies

    def aggregate(
        self, server_round: int, stats: RoundStats, accepted: list[tuple[Accepted, Message]], base: State
    ) -> tuple[ArrayRecord, MetricRecord | None]:
        """The round's new model from the updates ``accepted`` onto ``base``, with the round's metrics; or
        ``base`` and None when the round keeps its model. The round's counts go into ``stats``."""
        quorum = max(1, self.min_replies)
        if len(accepted) < quorum:
            return self._keep(stats, base, f"{len(accepted)} usable of {len(stats.sampled_nodes)} replies, "
                              f"quorum is {quorum} (federation.min_replies): model kept", accepted)  # fmt: skip
        # Partition order, not arrival order, so neither the aggregate nor the row depends on timing.
        accepted.sort(key=lambda pair: (pair[0].partition, pair[0].node))
        name = type(self.inner).__name__
        try:
            arrays, metrics = self.inner.aggregate_train(
                server_round, [self._as_weights(a, msg, base) for a, msg in accepted]
            )
        except Exception as exc:  # noqa: BLE001 - the inner strategy refusing is the round's outcome, not a crash
            return self._keep(stats, base, f"{name} did not aggregate: {exc}: model kept", accepted)
        if arrays is None:
            return self._keep(stats, base, f"{name} aggregated nothing: model kept", accepted)
        merged = merge(arrays, base)
        overflowed = [k for k, v in merged.items() if not values_within(v)]
        if overflowed:  # finite replies, yet the server step overflowed: no compressor or client gets that model
            return self._keep(stats, base, f"{name}'s aggregate is not finite "
                              f"({len(overflowed)} tensors, first {overflowed[0]!r}): model kept", accepted)  # fmt: skip
        stats.clients = [a.partition for a, _ in accepted]
        stats.uplink_bytes = [a.uplink_bytes for a, _ in accepted]
        stats.uplink_wire_clients = [stats.uplink_wire.get(a.node, 0) for a, _ in accepted]
        stats.uplink_bytes_sent = [a.payload_bytes_sent for a, _ in accepted]
        stats.downlink_bytes_received = [a.downlink_bytes_received for a, _ in accepted]
        stats.train_loss, stats.client_metrics = weighted_metrics([a for a, _ in accepted])
        out = MetricRecord({"train_loss": stats.train_loss})
        if metrics is not None:
            for key, value in metrics.items():
                if key not in out and isinstance(value, (int, float)):
                    out[key] = value
        return ArrayRecord(merged), out

    def _as_weights(self, accepted: Accepted, msg: Message, base: State) -> Message:
        """The reply as the inner strategy expects it: the weights ``base + Δ`` and its metrics."""
        weights = OrderedDict(
            (name, (base[name].float() + delta).to(base[name].dtype)) for name, delta in accepted.update.items()
        )
        shared = {k: v for k, v in accepted.metrics.items() if k not in EVENT_METRICS}
        metrics = MetricRecord({"num-examples": accepted.weight, **shared})
        return Message(
            metadata=copy(msg.metadata),
            content=RecordDict({self.arrays_key: ArrayRecord(weights), METRICS_KEY: metrics}),
        )

    @staticmethod
    def _keep(
        stats: RoundStats, base: State, why: str, accepted: Sequence[tuple[Accepted, Message]] = ()
    ) -> tuple[ArrayRecord, None]:
        stats.skipped = why
        stats.unused_uplink_bytes = sum(a.uplink_bytes for a, _ in accepted)  # received all the same: counted
        logger.warning("round %d: %s", stats.round, why)
        # The model the round stepped from stays the global one (in the structure it was broadcast in).
        return ArrayRecord(base), None


def merge(arrays: ArrayRecord, base: State) -> State:
    """The full model: the inner strategy's float tensors in their dtypes, integer buffers from ``base``."""
    out = arrays.to_torch_state_dict()
    merged: State = OrderedDict()
    for name, value in base.items():
        if value.is_floating_point() and name in out:
            merged[name] = out[name].to(value.dtype).reshape(value.shape)
        else:
            merged[name] = value
    return merged


def weighted_metrics(accepted: list[Accepted]) -> tuple[float, dict[str, float]]:
    """Example-weighted mean of every numeric client metric (loss included)."""
    total = sum(a.weight for a in accepted)
    sums: dict[str, float] = {}
    for a in accepted:
        for key, value in a.metrics.items():
            sums[key] = sums.get(key, 0.0) + a.weight * value / total
    return sums.get("train_loss", float("nan")), sums
