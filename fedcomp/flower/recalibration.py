"""The statistics round: the server asks clients for the global model's normalization moments.

A model compressor that needs the model's statistics before it acts (BWCP
before pruning: its hard masks and the fold read the running statistics
and whitening) says so with ``statistics_wanted``; the strategy then sends
the round's nodes the global model dense (a ``query.statistics`` message),
each client measures the moments of every normalization layer's input on
its data (:func:`fedcomp.compressors.model.statistics.measure`) and
replies with them as a payload, and the server sets the model's statistics
from their example-weighted mean. Both directions' bytes are counted in
the round's row. Each reply is judged (:func:`judge_statistics`): its
``num-examples`` at most the examples asked for and, where the server knows
the node's partition size (simulation), exactly min(asked, size); its
moments decodable, finite, within bounds. Reports far from the other
clients' are refused before pooling
(:func:`~fedcomp.compressors.model.statistics.outliers`), so one client
cannot shift everyone's statistics. Every refused reply is the node's
failure in the round's row, with its reason; the others' moments are
applied. If none is usable, the model keeps the statistics it had (and the
row says 0 clients): the round goes on either way.

fedcomp's own ClientApp answers these messages; a Flower app of your own
needs a ``@app.query("statistics")`` handler (:func:`statistics_reply`
does the work, see its docstring), else its error replies simply leave the statistics as
they were.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from torch import nn

from fedcomp.coding import DecodeError, TensorSpec, values_within
from fedcomp.compressors.model import statistics as stats_codec
from fedcomp.compressors.model.base import State, dense_payload
from fedcomp.compressors.model.identity import IdentityModelCompressor
from fedcomp.compressors.model.structure import Architecture, Structure
from fedcomp.messages import CONFIG_KEY, METRICS_KEY, PAYLOAD_KEY, payload_from, payload_record
from fedcomp.strategies.replies import ReplyPolicy, ReplyRejected, Roster, clean_reason, int_metric

logger = logging.getLogger(__name__)

ACTION = "statistics"
MESSAGE_TYPE = f"{MessageType.QUERY}.{ACTION}"
SAMPLES_KEY = "statistics-samples"
MAX_ABS_KEY = "statistics-max-abs"


@dataclass
class StatisticsRound:
    """What one statistics round sent, received and made of it."""

    clients: int = 0
    """Replies whose moments were used."""
    downlink_bytes: int = 0
    uplink_bytes: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)
    """(node, why) for every reply refused (or missing)."""
    problem: str | None = None
    """Why the combined moments were not applied (non-finite or out of range), if they were not."""
    state: State | None = None
    """The model with its statistics set from the combined moments; None if no reply was usable."""


def statistics_messages(
    nodes: Iterable[int], state: State, structure: Structure, config: ConfigRecord, samples: int, max_abs: float
) -> tuple[list[Message], int]:
    """One ``query.statistics`` message per node (the model dense, how many examples to measure); and its bytes."""
    payload = dense_payload("identity", state, structure)
    settings = ConfigRecord({**dict(config), SAMPLES_KEY: int(samples), MAX_ABS_KEY: float(max_abs)})
    messages = [
        Message(
            content=RecordDict({PAYLOAD_KEY: payload_record(payload), CONFIG_KEY: settings}),
            message_type=MESSAGE_TYPE,
            dst_node_id=int(n),
        )
        for n in nodes
    ]
    return messages, len(payload)


def judge_statistics(
    reply: Message,
    specs: Sequence[TensorSpec],
    max_abs: float,
    policy: ReplyPolicy,
    samples: int | None = None,
    size: int | None = None,
) -> tuple[int, State]:
    """A statistics reply's example count and moments; ReplyRejected naming what is wrong with it.

    ``samples``: the examples asked for (a reply may not claim more); ``size``: the examples the node's
    partition holds, where the server knows it (the reply must then claim exactly min(samples, size)).
    """
    if reply.has_error():
        raise ReplyRejected(f"client error: {clean_reason(reply.error.reason)}")
    if METRICS_KEY not in reply.content.metric_records:
        raise ReplyRejected("statistics reply lacks metrics")
    most = policy.max_examples if samples is None else min(policy.max_examples, samples)
    examples = int_metric(reply.content.metric_records[METRICS_KEY], "num-examples", 1, most)
    if size is not None and samples is not None and examples != min(samples, size):
        raise ReplyRejected(
            f"num-examples = {examples}, but its partition holds {size} examples and {samples} were asked for"
        )
    try:
        return examples, stats_codec.decode(payload_from(reply.content), specs, max_abs)
    except DecodeError as exc:
        raise ReplyRejected(f"undecodable statistics: {exc}") from None


def apply_reports(model: nn.Module, reports: Sequence[tuple[int, State]], max_abs: float) -> State | None:
    """``model``'s state with its statistics set from the combined ``reports`` (in place); None if that gives
    non-finite or out-of-range values."""
    stats_codec.apply(model, stats_codec.combine(reports))
    new = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    if all(values_within(v, max_abs) for v in new.values() if v.is_floating_point()):
        return new
    return None  # moments within bounds can still make an indefinite Σ_N


def gather(
    grid: Grid,
    nodes: Iterable[int],
    state: State,
    structure: Structure,
    arch: Architecture,
    config: ConfigRecord,
    *,
    samples: int,
    max_abs: float,
    policy: ReplyPolicy,
    timeout: float | None,
    roster: Roster | None = None,
) -> StatisticsRound:
    """Ask ``nodes`` for ``state``'s moments on up to ``samples`` of their examples; combine and apply them.

    ``roster``: each node's partition and the partition sizes the server knows (the counts are checked
    against them)."""
    model = arch.build(structure)
    model.load_state_dict(state)
    specs = stats_codec.statistics_specs(model)
    nodes = [int(n) for n in nodes]
    messages, payload_bytes = statistics_messages(nodes, state, structure, config, samples, max_abs)
    out = StatisticsRound(downlink_bytes=payload_bytes * len(nodes))
    reports: list[tuple[int, State]] = []
    reporters: list[int] = []
    answered: set[int] = set()
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = int(reply.metadata.src_node_id)
        if node in answered or node not in nodes:
            out.failures.append((node, "an unexpected statistics reply: ignored"))
            continue
        answered.add(node)
        if not reply.has_error() and PAYLOAD_KEY in reply.content.array_records:
            try:
                out.uplink_bytes += len(payload_from(reply.content))
            except DecodeError:
                pass  # judged below
        size = _known_size(roster, node)
        try:
            reports.append(judge_statistics(reply, specs, max_abs, policy, samples, size))
            reporters.append(node)
        except ReplyRejected as exc:
            out.failures.append((node, exc.reason))
    out.failures += [(n, "no statistics reply before the timeout") for n in nodes if n not in answered]
    refused = stats_codec.outliers([moments for _, moments in reports])
    out.failures += [(reporters[i], f"moments refused: {why}") for i, why in sorted(refused.items())]
    reports = [r for i, r in enumerate(reports) if i not in refused]
    if reports:
        out.state = apply_reports(model, reports, max_abs)
        if out.state is None:
            out.problem = "the combined moments gave non-finite or out-of-range statistics: not applied"
        else:
            out.clients = len(reports)
    for node, why in out.failures:
        logger.warning("statistics round: node %d: %s", node, why[:200])
    if out.problem is not None:
        logger.warning("statistics round: %s", out.problem)
    logger.info("statistics round: %d of %d clients' moments applied (%d bytes down, %d up)",
                out.clients, len(nodes), out.downlink_bytes, out.uplink_bytes)  # fmt: skip
    return out


def _known_size(roster: Roster | None, node: int) -> int | None:
    if roster is None or node not in roster.partition_of:
        return None
    return roster.sizes.get(roster.partition_of[node])


def statistics_reply(
    msg: Message,
    model_fn: Callable[[], nn.Module] | Architecture,
    inputs: Iterable[torch.Tensor],
    device: torch.device | str = "cpu",
) -> Message:
    """A client's answer to a ``query.statistics`` message: the received model's moments on ``inputs``.

    ``inputs``: batches of model inputs (as training sees them: the same
    batch size and normalization), consumed until the message's
    ``statistics-samples`` examples have been measured. In a Flower app of
    your own::

        @app.query("statistics")
        def statistics(msg, context):
            return statistics_reply(msg, Net, (x for x, _ in my_train_loader))
    """
    arch = model_fn if isinstance(model_fn, Architecture) else Architecture.of(model_fn)
    config = msg.content.config_records[CONFIG_KEY]
    samples = int(config[SAMPLES_KEY])
    received = IdentityModelCompressor(None, arch).decode(payload_from(msg.content), max_abs=float(config[MAX_ABS_KEY]))
    model = arch.build(received.structure)
    model.load_state_dict(received.state)
    model.to(device)

    def capped() -> Iterable[torch.Tensor]:
        left = samples
        for x in inputs:
            if left <= 0:
                return
            yield x[:left].to(device)
            left -= len(x)

    moments, examples = stats_codec.measure(model, capped())
    moments = OrderedDict((k, v.cpu()) for k, v in moments.items())
    content = RecordDict(
        {
            PAYLOAD_KEY: payload_record(stats_codec.encode(moments)),
            METRICS_KEY: MetricRecord({"num-examples": examples}),
        }
    )
    return Message(content=content, reply_to=msg)
