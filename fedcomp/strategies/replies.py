"""Judging a client's reply: the one place where everything a client sends is checked.

Clients are untrusted (DESIGN.md, principle 7). A reply carries a payload
and metrics; before its update may enter the average, every part of it is
checked here, inside one error handling:

- the message has no error and carries a payload (``payload_from``);
- the metrics record exists and every field the server uses parses into
  the range it must lie in: ``num-examples`` a positive integer no larger
  than ``federation.max_examples`` and equal to the partition's size
  where the server knows it (simulation: it partitions the same data, see
  :attr:`Roster.sizes`), else to what the node reported at warm-up; ``partition-id``
  the one the node gave at warm-up (or, for a node the warm-up did not
  reach, one no other node holds); ``payload-bytes``, ``downlink-bytes``
  and ``model-version`` (the model a client holds when the downlink
  carries the model's change) non-negative integers; ``train_loss`` finite (a diverged client);
- the payload decodes within the receiver's limits to finite values no
  larger than ``federation.max_abs_value`` (the codec's own checks).

Cheap checks run first, so a reply with bad metrics costs no decode. A
failed check raises :class:`ReplyRejected` with the reason; the caller
records it as the client's failure and the round goes on.

Evaluation replies are judged here too (:func:`judge_evaluation`): an
accuracy must lie in [0, 1], a loss be finite and ≥ 0, and ``num-examples``
be the node's held-out share where the server knows it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from flwr.app import Message

from fedcomp.coding import DecodeError
from fedcomp.messages import METRICS_KEY, payload_from

# Metrics the server reads itself; every other numeric metric is averaged into the row.
PROTOCOL_METRICS = ("num-examples", "partition-id", "payload-bytes", "downlink-bytes", "model-version")
MAX_BYTES_METRIC = 1 << 48
EVENT_METRICS = ("state_reset",)
"""Metrics a client sends only when something happened to it (its state file set aside): averaged into the row,
never handed to the inner strategy, whose aggregation requires every reply to carry the same keys."""


class ReplyRejected(Exception):
    """A reply that cannot enter the average; ``reason`` says why."""

    def __init__(self, reason: str, uplink_bytes: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.uplink_bytes = uplink_bytes


@dataclass(frozen=True)
class ReplyPolicy:
    """The bounds a reply's metrics must respect."""

    num_partitions: int | None
    """Partition ids lie in [0, num_partitions) and are required; None: optional (a Flower app's own nodes)."""
    max_examples: int


@dataclass
class Roster:
    """What each node said at warm-up: the partition it holds and how many examples are in it."""

    partition_of: dict[int, int] = field(default_factory=dict)
    examples_of: dict[int, int] = field(default_factory=dict)
    node_of: dict[int, int] = field(default_factory=dict)
    """Partition → the node holding it (the inverse of ``partition_of``)."""
    sizes: dict[int, int] = field(default_factory=dict)
    """Partition → the examples it trains on, as the server computed them itself (simulation: it partitions
    the same data the clients do); empty where it cannot know (data on each node). A node's word never
    overrides these."""
    test_sizes: dict[int, int] = field(default_factory=dict)
    """Partition → the examples of its held-out share (``data.client_test_fraction``), where the server knows."""

    def holder_of(self, partition: int) -> int | None:
        return self.node_of.get(partition)

    def examples_for(self, node: int, partition: int) -> int | None:
        """The ``num-examples`` a train reply of ``node`` (holding ``partition``) must claim, or None if unknown:
        the server's own size of the partition if it has one, else what the node said at warm-up."""
        if partition in self.sizes:
            return self.sizes[partition]
        return self.examples_of.get(node)

    def claim(self, node: int, partition: int) -> None:
        holder = self.node_of.get(partition)
        if holder is not None and holder != node:
            raise ReplyRejected(f"partition-id = {partition} is held by node {holder}")
        self.partition_of[node] = partition
        self.node_of[partition] = node

    def learn(self, node: int, metrics: Any, policy: ReplyPolicy) -> None:
        """Record a warm-up reply; raises ReplyRejected if it claims an impossible or taken partition."""
        partition = int_metric(metrics, "partition-id", 0, _last_partition(policy))
        examples = int_metric(metrics, "num-examples", 1, policy.max_examples)
        self.claim(node, partition)
        known = self.sizes.get(partition)
        # The node holds its partition either way (sampling orders by it); its weight is never more than known.
        self.examples_of[node] = examples if known is None else known
        if known is not None and examples != known:
            raise ReplyRejected(
                f"num-examples = {examples}, but partition {partition} holds {known} examples "
                "(the server's own partitioning of the same data)"
            )


class Uplink(Protocol):
    """The server's end of the uplink (:class:`fedcomp.flower.uplink.UplinkReceiver`): what a payload costs and
    carries."""

    def count(self, payload: bytes) -> int: ...

    def decode(self, payload: bytes) -> dict[str, torch.Tensor]: ...


@dataclass
class Accepted:
    """A reply that passed every check, with what the server takes from it."""

    node: int
    partition: int
    weight: int
    update: dict[str, torch.Tensor]
    metrics: dict[str, float]
    """The client's other numeric, finite metrics (averaged into the round's row)."""
    uplink_bytes: int
    payload_bytes_sent: int
    downlink_bytes_received: int
    model_version: int | None = None
    """The version of the model the client now holds (downlink update compression), if it said."""


def judge_reply(msg: Message, uplink: Uplink, roster: Roster, policy: ReplyPolicy) -> Accepted:
    """Check every part of ``msg`` (see the module docstring); raises :class:`ReplyRejected`. ``uplink`` counts
    the payload's bytes and decodes it."""
    node = int(msg.metadata.src_node_id)
    if msg.has_error():
        raise ReplyRejected(f"client error: {clean_reason(msg.error.reason)}")
    try:
        payload = payload_from(msg.content)
    except DecodeError as exc:
        raise ReplyRejected(f"bad reply: {exc}") from None
    size = uplink.count(payload)
    try:
        metrics = msg.content.metric_records[METRICS_KEY]
    except KeyError:
        raise ReplyRejected("reply lacks metrics", size) from None
    try:
        partition = _partition(node, metrics, roster, policy)
        weight = int_metric(metrics, "num-examples", 1, policy.max_examples)
        told = roster.examples_for(node, partition)
        if told is not None and weight != told:
            how = f"holds {told}" if partition in roster.sizes else f"reported {told} at warm-up"
            raise ReplyRejected(f"num-examples = {weight}, but its partition {how}")
        sent = int_metric(metrics, "payload-bytes", 0, MAX_BYTES_METRIC, default=-1)
        received = int_metric(metrics, "downlink-bytes", 0, MAX_BYTES_METRIC, default=-1)
        version = int_metric(metrics, "model-version", 0, MAX_BYTES_METRIC, default=-1)
        others = _other_metrics(metrics)
    except ReplyRejected as exc:
        raise ReplyRejected(f"bad metrics: {exc.reason}", size) from None
    try:
        update = uplink.decode(payload)
    except DecodeError as exc:
        raise ReplyRejected(f"undecodable payload: {exc}", size) from None
    if node not in roster.partition_of and partition >= 0:
        roster.claim(node, partition)
    return Accepted(node, partition, weight, update, others, size, sent, received, version if version >= 0 else None)


ACCURACY_METRICS = ("test_accuracy", "accuracy", "acc")
"""Evaluation metrics that are fractions: a value outside [0, 1] is a lie or a bug."""


def judge_evaluation(msg: Message, roster: Roster, policy: ReplyPolicy) -> Message:
    """An evaluation reply that may enter the aggregate; raises :class:`ReplyRejected` naming what is wrong.

    One MetricRecord; ``num-examples`` in [1, max_examples] and, where the
    server knows the node's held-out share (:attr:`Roster.test_sizes`),
    equal to it; every float finite; the accuracies of
    :data:`ACCURACY_METRICS` in [0, 1]; every ``*loss*`` metric ≥ 0.
    """
    if msg.has_error():
        raise ReplyRejected(f"client error: {clean_reason(msg.error.reason)}")
    records = list(msg.content.metric_records.values())
    if len(records) != 1:
        raise ReplyRejected(f"{len(records)} metric records, expected 1")
    metrics = records[0]
    examples = int_metric(metrics, "num-examples", 1, policy.max_examples)
    partition = roster.partition_of.get(int(msg.metadata.src_node_id))
    held_out = roster.test_sizes.get(partition) if partition is not None else None
    if held_out is not None and examples != held_out:
        raise ReplyRejected(f"num-examples = {examples}, but partition {partition} holds out {held_out} examples")
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            raise ReplyRejected(f"{key} = {value}")
        if key in ACCURACY_METRICS and not 0 <= value <= 1:
            raise ReplyRejected(f"{key} = {_show(value)} is not a fraction in [0, 1]")
        if "loss" in key and value < 0:
            raise ReplyRejected(f"{key} = {_show(value)} is negative")
    return msg


def int_metric(metrics: Any, key: str, lo: int, hi: int, default: int | None = None) -> int:
    """``metrics[key]`` as an integer in [lo, hi]; a float is accepted only if it is a whole number."""
    if key not in metrics:
        if default is not None:
            return default
        raise ReplyRejected(f"{key} is missing")
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReplyRejected(f"{key} must be an integer, got {_show(value)}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ReplyRejected(f"{key} must be an integer, got {_show(value)}")
    if not lo <= value <= hi:
        raise ReplyRejected(f"{key} = {_show(value)} is outside [{lo}, {hi}]")
    return int(value)


def _last_partition(policy: ReplyPolicy) -> int:
    return policy.num_partitions - 1 if policy.num_partitions is not None else (1 << 31) - 1


def _partition(node: int, metrics: Any, roster: Roster, policy: ReplyPolicy) -> int:
    """The reply's partition id; -1 where none is required and none is given (ordered by node id then)."""
    if policy.num_partitions is None and "partition-id" not in metrics and node not in roster.partition_of:
        return -1
    partition = int_metric(metrics, "partition-id", 0, _last_partition(policy))
    known = roster.partition_of.get(node)
    if known is not None and partition != known:
        raise ReplyRejected(f"partition-id = {partition}, but this node holds partition {known}")
    holder = roster.holder_of(partition)
    if holder is not None and holder != node:
        raise ReplyRejected(f"partition-id = {partition} is held by node {holder}")
    return partition


def _other_metrics(metrics: Any) -> dict[str, float]:
    """The numeric metrics besides the protocol's; a diverged client (train_loss not finite) is rejected."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key in PROTOCOL_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            if key == "train_loss":
                raise ReplyRejected(f"train_loss = {value}: local training diverged")
            continue
        out[key] = float(value)
    return out


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clean_reason(reason: str, limit: int = 500) -> str:
    """The client's own exception message, without Ray's wrapping and colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(reason))
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1].rstrip().removesuffix("'>")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
