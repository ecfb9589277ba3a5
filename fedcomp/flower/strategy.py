"""The strategy wrapper: compressed transport around any Flower strategy.

``CompressedStrategy(FedAdam(...), model_fn=Net, uplink="surp")`` is a
``flwr.serverapp.strategy.Strategy`` that changes how models and updates
travel, not how they are aggregated (the pattern of Flower's own
``DifferentialPrivacyServerSideFixedClipping``):

- ``configure_train``: the configured model compressor turns the global
  model into the broadcast payload (:mod:`fedcomp.compressors.model`); the
  inner strategy chooses the nodes and the config (FedProx's
  ``proximal-mu``, ...) for the model the clients will start from, exactly
  as they decode it; the wrapper swaps that model's arrays for the payload
  and adds the transport settings (:mod:`.transport`) the client mod obeys.
- with ``downlink`` (an update compressor), the broadcast is the
  model's *change* instead (:mod:`.downlink`): the wrapper keeps the model
  the clients hold, sends each sampled node its own catch-up (or the model
  dense when that is smaller) and learns from each reply which version the
  node now holds;
- ``aggregate_train``: every reply is judged (:mod:`fedcomp.strategies.replies`:
  metrics range-checked, the payload decoded within limits to finite
  values); a usable reply becomes the message the inner strategy expects,
  the client's weights ``start + Δ`` with its metrics, in partition order;
  the inner strategy aggregates them if at least ``min_replies`` are usable
  (the quorum), else the model is kept and the round records why. With an
  ``update_norm_bound`` (:mod:`fedcomp.strategies.influence`) each decoded
  update's norm is bounded first (clipped, or the reply refused);
- before a broadcast the model compressor acts on with the model's
  statistics (BWCP's pruning), ``configure_train`` first runs a statistics
  round (:mod:`.recalibration`): the round's nodes measure the
  normalization layers' moments on their data, and the model's running
  statistics are set from them (bytes counted both ways);
- ``configure_evaluate``: client-side evaluation gets the aggregated model
  as a dense payload; ``aggregate_evaluate`` is the inner strategy's, over
  the replies :func:`~fedcomp.strategies.replies.judge_evaluation` accepts
  (the others are the round's failures).

Bytes are counted where they cross the wire, ``len(payload)`` (STYLE.md's
single measuring stage): the broadcasts here, the replies by the uplink's
server end (:class:`~fedcomp.flower.uplink.UplinkReceiver`, which also
decodes them within limits). The inner strategy sees only the
model's floating-point tensors; integer buffers (BatchNorm's step count)
are carried over from the broadcast model. When the model compressor
changes the architecture, the inner strategy's own state (FedAdam's
moments, FedAvgM's momentum) no longer fits and is reset, with a warning
(:mod:`.inner_state`, which also carries it in checkpoints).
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from copy import copy
from typing import Any, Protocol

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt
from torch import nn

from fedcomp.coding import DecodeError, DecodeLimits, values_within
from fedcomp.compressors.model.base import dense_payload
from fedcomp.compressors.model.structure import Architecture, Structure, structure_from_json, structure_to_json
from fedcomp.flower.downlink import DownlinkChannel
from fedcomp.flower.inner_state import InnerState
from fedcomp.flower.recalibration import gather
from fedcomp.flower.rounds import ClientFailure, RoundClose, RoundStats
from fedcomp.flower.settings import SettingsLedger
from fedcomp.flower.transport import TRANSPORT_KEY, Transport
from fedcomp.flower.uplink import UplinkReceiver
from fedcomp.flower.wire import WireGrid, wire_bytes
from fedcomp.messages import CHECKPOINT_ROUND_KEY, METRICS_KEY, PAYLOAD_KEY, payload_from, payload_record
from fedcomp.network import NetworkModel
from fedcomp.strategies.influence import NormBound, apply_bound
from fedcomp.strategies.replies import (
    EVENT_METRICS,
    Accepted,
    ReplyPolicy,
    ReplyRejected,
    Roster,
    judge_evaluation,
    judge_reply,
)

logger = logging.getLogger(__name__)

COMPUTE_METRICS = ("decode_s", "train_s", "encode_s")
"""A client's measured compute in a round: the seconds it reports decoding, training and encoding."""
LATE_ROUNDS = 3
"""How many rounds a train message's reply is still looked for after its round timed out."""

Sampler = Callable[[Grid, int], list[int]]
"""(grid, round) → the node ids to train this round (fedcomp's seeded sampling); None: the inner strategy samples."""


class Recorder(Protocol):
    """What ``recorder=`` takes (:class:`~fedcomp.flower.recording.AppRecorder`): it runs Flower's round loop
    (``start``) with every round recorded."""

    def run(self, strategy: CompressedStrategy, start: Callable[..., Result], **flower_args: Any) -> Result: ...


class _SampledGrid:
    """The grid as the inner strategy sees it: only the nodes fedcomp sampled this round."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self._grid, self._nodes = grid, nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


RENAMED_ARGUMENTS = {
    "downlink_update": "downlink_update is now downlink (the compressor of the model's change)",
    "downlink_update_params": "downlink_update_params is now downlink_params (its parameters)",
}
"""Keyword arguments of :class:`CompressedStrategy` that were renamed: what each is now."""


def _refuse_renamed(renamed: Mapping[str, Any]) -> None:
    """A TypeError for a keyword argument the wrapper does not take, naming the new one where it was renamed."""
    for name in renamed:
        if name in RENAMED_ARGUMENTS:
            raise TypeError(
                f"CompressedStrategy got {name}=: {RENAMED_ARGUMENTS[name]}; the model compressor is server_compression"
            )
        raise TypeError(f"CompressedStrategy got an unexpected keyword argument {name!r}")


class CompressedStrategy(Strategy):
    """Compressed, counted, checked transport around ``strategy`` (see the module docstring).

    ``model_fn`` builds the model the payloads carry (or pass ``arch``, a
    fedcomp :class:`~fedcomp.compressors.model.structure.Architecture`).
    ``uplink`` names an update compressor and ``server_compression`` a model
    compressor (``fedcomp list``), with their parameters as dicts;
    ``downlink``, an update compressor, sends the model's change instead of
    the model (:mod:`.downlink`; "identity": the model). ``min_replies``:
    usable replies a round needs (the quorum). ``max_examples``: the largest
    ``num-examples`` a reply may claim. ``num_partitions``: when set, every
    reply must name its ``partition-id`` in [0, num_partitions).
    ``update_norm_bound``: clip or refuse updates whose norm exceeds a bound
    (:class:`~fedcomp.strategies.influence.NormBound`); None: no bound.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        model_fn: Callable[[], nn.Module] | None = None,
        arch: Architecture | None = None,
        uplink: str = "identity",
        uplink_params: dict[str, Any] | None = None,
        server_compression: str = "identity",
        server_compression_params: dict[str, Any] | None = None,
        downlink: str = "identity",
        downlink_params: dict[str, Any] | None = None,
        clients_build_initial_model: bool = False,
        seed: int = 0,
        max_abs_value: float = 1e6,
        min_replies: int = 1,
        max_examples: int = 10_000_000,
        num_partitions: int | None = None,
        sampler: Sampler | None = None,
        input_shape: tuple[int, ...] = (),
        evaluate_rounds: Callable[[int], bool] | None = None,
        round_timeout_s: float | None = None,
        recorder: Recorder | None = None,
        update_norm_bound: NormBound | None = None,
        network: NetworkModel | None = None,
        send_settings_once: bool = True,
        **renamed: Any,
    ) -> None:
        _refuse_renamed(renamed)
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a flwr.serverapp.strategy.Strategy, got {type(strategy).__name__}")
        if (model_fn is None) == (arch is None):
            raise TypeError("give exactly one of model_fn (a function returning your model) or arch")
        if update_norm_bound is not None and not isinstance(update_norm_bound, NormBound):
            raise TypeError(
                "update_norm_bound must be a fedcomp.strategies.influence.NormBound, "
                f"got {type(update_norm_bound).__name__}"
            )
        self.inner = strategy
        self.inner_state = InnerState(strategy)
        """The inner strategy's own state between rounds (:mod:`.inner_state`): checkpointed, reset on a changed
        architecture; checked here, so a Flower that renamed what it reads fails now."""
        self.arch = arch if arch is not None else Architecture.of(model_fn, input_shape)
        registry_model = (
            {
                "name": self.arch.model_name,
                "input_shape": list(self.arch.input_shape),
                "num_classes": self.arch.num_classes,
                "params": self.arch.params_json,
            }
            if self.arch.factory is None
            else None
        )
        self.transport = Transport(
            uplink=uplink,
            uplink_params=dict(uplink_params or {}),
            server_compression=server_compression,
            server_compression_params=dict(server_compression_params or {}),
            downlink=downlink,
            downlink_params=dict(downlink_params or {}),
            seed=seed,
            max_abs_value=max_abs_value,
            model=registry_model,
            arrays_key=str(getattr(strategy, "arrayrecord_key", "arrays")),
        )
        self.uplink = self.transport.update_compressor()
        if isinstance(strategy, FedOpt) and hasattr(self.transport.update_params(), "density"):
            logger.warning(
                "%s with %s updates: an adaptive server optimizer steps each coordinate by m/√v, so a coordinate "
                "that is nonzero in few rounds (a sparse update's) moves by about eta in its sign whatever its "
                "size; measured, this can stall training (docs/own_code.md, 'Adaptive server optimizers'). "
                "FedAvg, FedAvgM or a lower eta are safer with sparse updates",
                type(strategy).__name__,
                uplink,
            )
        self.server_compression = self.transport.model_compressor(self.arch)
        self.structure: Structure = ()
        """The global model's architecture edits (ALDS factorized layers, ...); () = the configured model."""
        self.max_abs_value = max_abs_value
        self.receiver = UplinkReceiver(self.uplink, self.arch, max_abs_value)
        """The uplink's server end (:mod:`.uplink`): decodes replies' payloads within limits, counts their bytes."""
        self.channel = (
            DownlinkChannel(
                self.transport.downlink_compressor(),
                self.update_limits,
                seeded_start=clients_build_initial_model,
            )
            if self.transport.sends_model_change
            else None
        )
        """The downlink of the model's change (:mod:`.downlink`); None: the broadcast is the model."""
        self.sampler = sampler
        self.evaluate_rounds = evaluate_rounds
        """Which rounds clients evaluate in (None: whenever the inner strategy asks them)."""
        self.round_timeout_s = round_timeout_s
        """How long a statistics round waits for replies (None: Flower's default, no limit)."""
        self.global_state: OrderedDict[str, torch.Tensor] = OrderedDict()
        """The model this round's clients start from, as they decode it (they train from it)."""
        self.aggregate_base: OrderedDict[str, torch.Tensor] = OrderedDict()
        """The model the round's updates are added to and the inner strategy steps from: the broadcast model,
        or, when the downlink carries the model's change, the server's own model w (so w − R, what the change's
        compressor left out, stays in w and goes out in later rounds: the downlink's error feedback)."""
        self.current: RoundStats | None = None
        self.roster = Roster()
        """Node id → partition id and size, learnt at warm-up (fedcomp's own apps)."""
        self.min_replies = min_replies
        self.policy = ReplyPolicy(num_partitions=num_partitions, max_examples=max_examples)
        self.round_offset = 0
        """Rounds already done before this attempt (a resumed run): Flower counts from 1 again."""
        self.last_checkpoint = 0
        """The last round saved in a checkpoint; clients keep state files from there on."""
        self.recorder = recorder
        """Writes a run directory of :meth:`start` (:class:`~fedcomp.flower.recording.AppRecorder`); None: none."""
        self.norm_bound = update_norm_bound
        self.pending_failures: list[ClientFailure] = []
        """Failures found before a round (a warm-up reply refused): recorded in the next round's row."""
        if network is not None and not isinstance(network, NetworkModel):
            raise TypeError(f"network must be a fedcomp.network.NetworkModel, got {type(network).__name__}")
        self.network = network
        """Each client's link and compute (:mod:`fedcomp.network`): each round's simulated duration, and a deadline
        that drops slow clients from the aggregate; None: no simulated time."""
        self.sim_clock_s = 0.0
        """The simulated clock: the sum of the rounds' simulated durations so far (checkpointed)."""
        self.settings = SettingsLedger(enabled=send_settings_once)
        """Which settings each node holds (:mod:`.settings`): later messages carry their digests instead."""
        self.unattributed_wire = {"downlink": 0, "uplink": 0}
        """Wire bytes of messages sent outside a round (the warm-up of fedcomp's own app)."""
        self._closing: RoundStats | None = None
        self._awaiting: dict[str, tuple[int, int]] = {}
        """Train message id → (round, node), for replies that missed their round's timeout."""

    def wired(self, grid: Any) -> WireGrid:
        """``grid`` as this wrapper sends through it (:class:`~fedcomp.flower.wire.WireGrid`): every message
        measured into the round's ledger, the settings sent once per node."""
        if isinstance(grid, WireGrid) and self._on_wire in grid.listeners:
            return grid
        wire = WireGrid(grid, self.settings)
        wire.listeners.append(self._on_wire)
        return wire

    def start(  # noqa: PLR0913 - Flower's signature
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's round loop; with a ``recorder``, every round also goes into its run directory."""
        grid = self.wired(grid)
        if self.recorder is None:
            return super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, evaluate_fn)
        return self.recorder.run(
            self, super().start, grid=grid, initial_arrays=initial_arrays, num_rounds=num_rounds, timeout=timeout,
            train_config=train_config, evaluate_config=evaluate_config, evaluate_fn=evaluate_fn,
        )  # fmt: skip

    # ------------------------------------------------------------------ train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Build the broadcast once; the inner strategy picks nodes and config; every message carries the payload."""
        server_round += self.round_offset
        stats = RoundStats(round=server_round)
        self.current = stats
        stats.failures, self.pending_failures = self.pending_failures, []
        self._collect_late(grid, stats)
        if self.channel is not None:
            return self._configure_change(server_round, arrays, config, grid, stats)
        state = self.recalibrate(grid, server_round, OrderedDict(arrays.to_torch_state_dict()), config, stats)
        broadcast = self.server_compression.broadcast(server_round, state, self.structure)
        if broadcast.structure != self.structure:  # the architecture changed: updates now come in its shapes
            self.structure = broadcast.structure
            self.receiver.follow(self.structure)
            self._reset_inner_state()
        self.global_state = self.aggregate_base = broadcast.start
        payload = broadcast.payload
        stats.server_metrics.update(broadcast.metrics)
        messages = self._inner_messages(server_round, broadcast.start, config, grid)
        stats.sampled_nodes = sorted(int(m.metadata.dst_node_id) for m in messages)
        stats.downlink_bytes_sent = [len(payload)] * len(stats.sampled_nodes)
        # Over all but the container's own trailing CRC: a CRC32 over data plus its CRC is a constant.
        stats.downlink_crc32 = zlib.crc32(payload[:-4])
        for m in messages:
            m.content = _with_payload(m.content, payload)
        return messages

    def _configure_change(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, stats: RoundStats
    ) -> list[Message]:
        """The round's messages when the downlink carries the model's change: each node its own catch-up."""
        assert self.channel is not None
        model = OrderedDict(arrays.to_torch_state_dict())  # w_t, the server's own model
        self.global_state = self.channel.advance(server_round, model, first_round_of_run=server_round == 1)
        # Updates go onto w_t, not R_t: aggregating onto R_t would drop w_t − R_t every round (no error feedback).
        self.aggregate_base = model
        stats.server_metrics = dict(self.channel.last_metrics)
        stats.server_metrics["downlink_residual_norm"] = _distance(model, self.global_state)
        stats.downlink_crc32 = self.channel.crc
        stats.client_model = self.global_state
        # The inner strategy steps from w_t (FedAdam's, FedAvgM's current model); clients get R_t's catch-up.
        messages = self._inner_messages(server_round, model, config, grid)
        dense = self.channel.dense()
        sent: dict[int, int] = {}
        for m in messages:
            node = int(m.metadata.dst_node_id)
            payload = self.channel.payload_for(node, dense)
            sent[node] = len(payload)
            m.content = _with_payload(m.content, payload)
        stats.sampled_nodes = sorted(sent)
        stats.downlink_bytes_sent = [sent[n] for n in stats.sampled_nodes]
        return messages

    def _inner_messages(
        self, server_round: int, start: OrderedDict[str, torch.Tensor], config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The inner strategy's train messages for the model clients start from, with the transport settings."""
        view = _SampledGrid(grid, self.sampler(grid, server_round)) if self.sampler is not None else grid
        config[TRANSPORT_KEY] = self.transport.to_json()
        config[CHECKPOINT_ROUND_KEY] = self.last_checkpoint
        return list(self.inner.configure_train(server_round, _float_record(start), config, view))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Judge each reply; the inner strategy aggregates the usable ones if they reach the quorum."""
        server_round += self.round_offset
        stats = self.current if self.current is not None else RoundStats(round=server_round)
        accepted: list[tuple[Accepted, Message]] = []
        replied: set[int] = set()
        sampled = set(stats.sampled_nodes)
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if node in replied or (sampled and node not in sampled):
                why = "a second reply in this round" if node in replied else "a reply from a node not sampled"
                self._fail(stats, node, f"{why}: ignored")
                continue
            replied.add(node)
            try:
                judged = judge_reply(msg, self.receiver, self.roster, self.policy)
                if self.channel is not None:
                    self.channel.check_version(judged.model_version, judged.uplink_bytes)
                    self.channel.learn(node, judged.model_version)
                accepted.append((judged, msg))
            except ReplyRejected as exc:
                self._fail(stats, node, exc.reason, exc.uplink_bytes, wire_bytes=stats.uplink_wire.get(node, 0))
        no_reply = [node for node in stats.sampled_nodes if node not in replied]
        for node in no_reply:
            self._fail(stats, node, "no reply before the round timeout")
        if self.norm_bound is not None and accepted:
            accepted = self._bounded(stats, accepted)
        if self.network is not None:
            accepted = self._simulate(stats, accepted, no_reply=bool(no_reply))

        quorum = max(1, self.min_replies)
        if len(accepted) < quorum:
            return self._keep(stats, f"{len(accepted)} usable of {len(stats.sampled_nodes)} replies, "
                              f"quorum is {quorum} (federation.min_replies): model kept", accepted)  # fmt: skip
        # Partition order, not arrival order, so neither the aggregate nor the row depends on timing.
        accepted.sort(key=lambda pair: (pair[0].partition, pair[0].node))
        try:
            arrays, metrics = self.inner.aggregate_train(
                server_round, [self._as_weights(a, msg) for a, msg in accepted]
            )
        except Exception as exc:  # noqa: BLE001 - the inner strategy refusing is the round's outcome, not a crash
            return self._keep(stats, f"{type(self.inner).__name__} did not aggregate: {exc}: model kept", accepted)
        if arrays is None:
            return self._keep(stats, f"{type(self.inner).__name__} aggregated nothing: model kept", accepted)
        merged = self._merge(arrays)
        overflowed = [k for k, v in merged.items() if not values_within(v)]
        if overflowed:  # finite replies, yet the server step overflowed: no compressor or client gets that model
            return self._keep(stats, f"{type(self.inner).__name__}'s aggregate is not finite "
                              f"({len(overflowed)} tensors, first {overflowed[0]!r}): model kept", accepted)  # fmt: skip
        stats.clients = [a.partition for a, _ in accepted]
        stats.uplink_bytes = [a.uplink_bytes for a, _ in accepted]
        stats.uplink_wire_clients = [stats.uplink_wire.get(a.node, 0) for a, _ in accepted]
        stats.uplink_bytes_sent = [a.payload_bytes_sent for a, _ in accepted]
        stats.downlink_bytes_received = [a.downlink_bytes_received for a, _ in accepted]
        stats.train_loss, stats.client_metrics = _weighted_metrics([a for a, _ in accepted])
        out = MetricRecord({"train_loss": stats.train_loss})
        if metrics is not None:
            for key, value in metrics.items():
                if key not in out and isinstance(value, (int, float)):
                    out[key] = value
        return ArrayRecord(merged), out

    def recalibrate(
        self,
        grid: Grid,
        server_round: int,
        state: OrderedDict[str, torch.Tensor],
        config: ConfigRecord,
        stats: RoundStats,
        last: bool = False,
        evaluating: bool = False,
    ) -> OrderedDict[str, torch.Tensor]:
        """``state`` with its normalization statistics measured by the round's nodes, when the model compressor
        asks for them (:mod:`.recalibration`; ``last``: before the final model is made, ``evaluating``: before
        the round's model is evaluated); else ``state`` as it is. The bytes go into ``stats``."""
        samples = self.server_compression.statistics_wanted(server_round, self.structure, last, evaluating)
        if not samples:
            return state
        nodes = self.sampler(grid, server_round) if self.sampler is not None else list(grid.get_node_ids())
        settings = ConfigRecord(dict(config))
        settings[TRANSPORT_KEY] = self.transport.to_json()
        settings["server-round"] = server_round
        result = gather(grid, nodes, state, self.structure, self.arch, settings, samples=samples,
                        max_abs=self.max_abs_value, policy=self.policy, timeout=self.round_timeout_s,
                        roster=self.roster)  # fmt: skip
        stats.statistics_downlink_bytes += result.downlink_bytes
        stats.statistics_uplink_bytes += result.uplink_bytes
        stats.server_metrics["statistics_clients"] = float(result.clients)
        for node, why in result.failures:  # what each node holds is unchanged: no effect on the downlink
            self._fail(stats, node, f"statistics round: {why}", model_unknown=False)
        return result.state if result.state is not None else state

    # ------------------------------------------------------------------ evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Client-side evaluation of the aggregated model, sent dense (and counted)."""
        server_round += self.round_offset
        if self.evaluate_rounds is not None and not self.evaluate_rounds(server_round):
            return []
        state = OrderedDict(arrays.to_torch_state_dict())
        messages = list(self.inner.configure_evaluate(server_round, _float_record(state), config, grid))
        if not messages:
            return messages
        payload = dense_payload("identity", state, self.structure)
        config[TRANSPORT_KEY] = self.transport.to_json()
        for m in messages:
            m.content = _with_payload(m.content, payload)
        if self.current is not None:
            self.current.evaluate_downlink_bytes += len(payload) * len(messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The inner strategy's aggregate of the evaluation replies whose metrics hold up (the rest are logged)."""
        usable = []
        stats = self.current if self.current is not None else RoundStats(round=server_round + self.round_offset)
        for msg in replies:
            try:
                usable.append(judge_evaluation(msg, self.roster, self.policy))
            except ReplyRejected as exc:
                node = int(msg.metadata.src_node_id)
                self._fail(stats, node, f"evaluation not counted: {exc.reason}", model_unknown=False)
        if not usable:
            return None
        out = self.inner.aggregate_evaluate(server_round + self.round_offset, usable)
        if out is not None and self.current is not None:
            self.current.evaluate_metrics = {
                **{k: float(v) for k, v in out.items() if isinstance(v, (int, float))},
                "clients": float(len(usable)),
            }
        return out

    def summary(self) -> None:
        logger.info(
            "CompressedStrategy(%s): server_compression=%s, downlink=%s, uplink=%s",
            type(self.inner).__name__,
            self.server_compression.name,
            self.transport.downlink,
            self.uplink.name,
        )
        self.inner.summary()

    # ------------------------------------------------------------------ helpers
    @property
    def update_limits(self) -> DecodeLimits:
        """What an update may decode to now (:attr:`receiver`'s limits)."""
        return self.receiver.limits

    def _as_weights(self, accepted: Accepted, msg: Message) -> Message:
        """The reply as the inner strategy expects it: the weights ``base + Δ`` (:attr:`aggregate_base`) and its
        metrics."""
        base = self.aggregate_base
        weights = OrderedDict(
            (name, (base[name].float() + delta).to(base[name].dtype)) for name, delta in accepted.update.items()
        )
        shared = {k: v for k, v in accepted.metrics.items() if k not in EVENT_METRICS}
        metrics = MetricRecord({"num-examples": accepted.weight, **shared})
        return Message(
            metadata=copy(msg.metadata),
            content=RecordDict({self.transport.arrays_key: ArrayRecord(weights), METRICS_KEY: metrics}),
        )

    def _merge(self, arrays: ArrayRecord) -> OrderedDict[str, torch.Tensor]:
        """The full model: the inner strategy's float tensors in their dtypes, integer buffers from the base."""
        out = arrays.to_torch_state_dict()
        merged: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, value in self.aggregate_base.items():
            if value.is_floating_point() and name in out:
                merged[name] = out[name].to(value.dtype).reshape(value.shape)
            else:
                merged[name] = value
        return merged

    def _keep(
        self, stats: RoundStats, why: str, accepted: Sequence[tuple[Accepted, Message]] = ()
    ) -> tuple[ArrayRecord, None]:
        stats.skipped = why
        stats.unused_uplink_bytes = sum(a.uplink_bytes for a, _ in accepted)  # received all the same: counted
        logger.warning("round %d: %s", stats.round, why)
        # The model the round stepped from stays the global one (in the structure it was broadcast in).
        return ArrayRecord(self.aggregate_base), None

    def _bounded(self, stats: RoundStats, accepted: list[tuple[Accepted, Message]]) -> list[tuple[Accepted, Message]]:
        """The round's updates under :attr:`norm_bound`: clipped in place, or refused as the client's failure."""
        assert self.norm_bound is not None
        bounded = apply_bound(self.norm_bound, [a.update for a, _ in accepted])
        stats.server_metrics["update_norm_limit"] = bounded.limit
        stats.server_metrics["update_norm_clipped"] = float(len(bounded.clipped))
        for i, why in bounded.rejected.items():
            judged = accepted[i][0]
            self._fail(stats, judged.node, why, judged.uplink_bytes, wire_bytes=stats.uplink_wire.get(judged.node, 0))
        for i in bounded.clipped:
            partition = accepted[i][0].partition
            logger.info("round %d: client %d's update clipped from norm %.4g to %.4g",
                        stats.round, partition, bounded.norms[i], bounded.limit)  # fmt: skip
        return [pair for i, pair in enumerate(accepted) if i not in bounded.rejected]

    def _fail(
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

    def _reset_inner_state(self) -> None:
        reset = self.inner_state.reset()
        if reset:
            logger.warning(
                "the model's architecture changed under %s: %s's %s start again from zero",
                self.server_compression.name,
                type(self.inner).__name__,
                ", ".join(reset),
            )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Server state for a checkpoint: the model's structure, the model compressor's state, the inner strategy's."""
        return {
            "structure": json.dumps(structure_to_json(self.structure)),
            "server_compression": self.server_compression.state_dict(),
            "strategy": self.inner_state.state_dict(),
            "sim_clock_s": self.sim_clock_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (a resumed run)."""
        self.structure = structure_from_json(json.loads(state.get("structure", "[]")))
        self.receiver.follow(self.structure)
        # Checkpoints written before the rename keep the model compressor's state under "downlink".
        self.server_compression.load_state_dict(state.get("server_compression", state.get("downlink", {})))
        self.inner_state.load_state_dict(state.get("strategy", {}))
        self.sim_clock_s = float(state.get("sim_clock_s", 0.0))

    def take_round_stats(self) -> RoundStats | None:
        """Hand over (and forget) the statistics of the round just aggregated; None before round 1 (Flower
        calls ``evaluate_fn`` with round 0 for the initial model) and when already taken."""
        stats, self.current = self.current, None
        return stats

    def close_round(
        self, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord, *, last: bool, evaluating: bool
    ) -> RoundClose | None:
        """The round's end on the wrapper's side, once its model is aggregated: the round's counts handed over,
        a statistics round when the model compressor wants one before the final model (``last``) or an evaluation
        (``evaluating``), and the model compressor's end of round. None before round 1 (nothing to close)."""
        stats = self.take_round_stats()
        if stats is None:
            return None
        self._closing = stats  # a statistics round's messages are measured into this round's ledger
        try:
            self._collect_late(grid, stats)
            trained = OrderedDict(arrays.to_torch_state_dict())
            state = trained
            if last or evaluating:  # the final pruning or the evaluation may want the model's statistics (BWCP)
                state = self.recalibrate(grid, server_round, trained, config, stats, last, evaluating)
        finally:
            self._closing = None
        snapshot = self.server_compression.end_of_round(server_round, state, self.structure, last)
        return RoundClose(stats, trained, state, snapshot)

    # ------------------------------------------------------------------ the wire, late replies, simulated time
    def _on_wire(self, sent: list[tuple[Message, int]], replies: list[tuple[Message, int]]) -> None:
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

    def _collect_late(self, grid: Any, stats: RoundStats) -> None:
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

    def _simulate(
        self, stats: RoundStats, accepted: list[tuple[Accepted, Message]], *, no_reply: bool
    ) -> list[tuple[Accepted, Message]]:
        """Each usable reply's simulated time on its link (:attr:`network`), the round's simulated duration and
        clock; replies that missed the deadline are dropped from the aggregate (the client's failure)."""
        assert self.network is not None
        times, kept = [], []
        for a, msg in accepted:
            measured = sum(a.metrics.get(k, 0.0) for k in COMPUTE_METRICS)
            t = self.network.client_time(
                a.partition, stats.downlink_wire.get(a.node, 0), stats.uplink_wire.get(a.node, 0), measured
            )
            times.append(t)
            stats.sim_client_s[a.partition] = t.total_s
            if self.network.misses_deadline(t):
                why = f"missed the deadline: {t.total_s:.4g} s simulated > {self.network.deadline_s:g} s (network.deadline_s)"
                self._fail(stats, a.node, why, a.uplink_bytes, model_unknown=False,
                           wire_bytes=stats.uplink_wire.get(a.node, 0))  # fmt: skip
            else:
                kept.append((a, msg))
        timeout = self.round_timeout_s or 0.0
        stats.sim_round_s = self.network.round_duration(times, no_reply=no_reply, timeout_s=timeout)
        self.sim_clock_s += stats.sim_round_s
        stats.sim_clock_s = self.sim_clock_s
        return kept


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """‖a − b‖₂ over the floating-point tensors."""
    total = sum(float((a[k].double() - v.double()).square().sum()) for k, v in b.items() if v.is_floating_point())
    return math.sqrt(total)


def _float_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord(OrderedDict((k, v) for k, v in state.items() if v.is_floating_point()))


def _with_payload(content: RecordDict, payload: bytes) -> RecordDict:
    """The inner strategy's message with its model arrays replaced by the payload (configs kept)."""
    records: dict[str, Any] = {PAYLOAD_KEY: payload_record(payload)}
    records.update(content.config_records)
    records.update(content.metric_records)
    return RecordDict(records)


def _weighted_metrics(accepted: list[Accepted]) -> tuple[float, dict[str, float]]:
    """Example-weighted mean of every numeric client metric (loss included)."""
    total = sum(a.weight for a in accepted)
    sums: dict[str, float] = {}
    for a in accepted:
        for key, value in a.metrics.items():
            sums[key] = sums.get(key, 0.0) + a.weight * value / total
    return sums.get("train_loss", float("nan")), sums
