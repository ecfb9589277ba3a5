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
- with ``error_feedback = "aggregate"`` in the uplink's parameters
  (:mod:`.predictor`), every train message also carries the previous
  round's aggregated update (the predictor, its bytes counted in the
  round's downlink bytes), the uplink's server end adds it to each decoded
  payload before the reply is judged, bounded or aggregated, and a round
  that aggregates makes the example-weighted mean of its reconstructed
  updates the next predictor (checkpointed);
- before a broadcast the model compressor acts on with the model's
  statistics (BWCP's pruning), ``configure_train`` first runs a statistics
  round (:mod:`.recalibration`): the round's nodes measure the
  normalization layers' moments on their data, and the model's running
  statistics are set from them (bytes counted both ways);
- ``configure_evaluate``: client-side evaluation gets the aggregated model
  as a dense payload; ``aggregate_evaluate`` is the inner strategy's, over
  the replies :func:`~fedcomp.strategies.replies.judge_evaluation` accepts
  (the others are the round's failures).

The wrapper orchestrates; each job is a collaborator's, one module each:
the open round's record and the wire's bytes (:mod:`.ledger`), judging the
replies and recording failures (:mod:`.judging`), the inner strategy's
aggregate, the quorum and the finiteness check (:mod:`.aggregation`), the
simulated clock and its deadline (:mod:`.clock`), the uplink's server end
(:mod:`.uplink`), the downlink of the model's change (:mod:`.downlink`), the
statistics round (:mod:`.recalibration`) and the inner strategy's state
(:mod:`.inner_state`).

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
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt
from torch import nn

from fedcomp.coding import DecodeLimits
from fedcomp.compressors.model.base import dense_payload
from fedcomp.compressors.model.structure import Architecture, Structure, structure_from_json, structure_to_json
from fedcomp.flower.aggregation import Aggregation
from fedcomp.flower.clock import SimulatedClock
from fedcomp.flower.downlink import DownlinkChannel
from fedcomp.flower.inner_state import InnerState
from fedcomp.flower.judging import ReplyJudge
from fedcomp.flower.ledger import RoundLedger
from fedcomp.flower.predictor import PREDICTOR_KEY, predictor_record
from fedcomp.flower.recalibration import gather
from fedcomp.flower.rounds import ClientFailure, RoundClose, RoundStats
from fedcomp.flower.settings import SettingsLedger
from fedcomp.flower.transport import TRANSPORT_KEY, Transport
from fedcomp.flower.uplink import UplinkReceiver
from fedcomp.flower.wire import WireGrid
from fedcomp.messages import CHECKPOINT_ROUND_KEY, PAYLOAD_KEY, payload_record
from fedcomp.network import NetworkModel
from fedcomp.strategies.influence import NormBound
from fedcomp.strategies.replies import ReplyPolicy, Roster

logger = logging.getLogger(__name__)

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


PREDICTOR_STATE = "uplink_predictor"
"""The checkpoint's entry for the aggregate-feedback predictor (:mod:`.predictor`)."""

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
        self.ledger = RoundLedger()
        """The open round's record and the wire's bytes counted into it (:mod:`.ledger`)."""
        self.policy = ReplyPolicy(num_partitions=num_partitions, max_examples=max_examples)
        self.judge = ReplyJudge(self.receiver, Roster(), self.policy, self.channel, update_norm_bound)
        """Which replies are usable, and the round's failures (:mod:`.judging`)."""
        self.aggregation = Aggregation(strategy, self.transport.arrays_key, min_replies)
        """The inner strategy's aggregate of the usable updates, or the model kept (:mod:`.aggregation`)."""
        self.round_offset = 0
        """Rounds already done before this attempt (a resumed run): Flower counts from 1 again."""
        self.last_checkpoint = 0
        """The last round saved in a checkpoint; clients keep state files from there on."""
        self.recorder = recorder
        """Writes a run directory of :meth:`start` (:class:`~fedcomp.flower.recording.AppRecorder`); None: none."""
        self.clock = SimulatedClock(network, round_timeout_s)
        """Each round's simulated duration on :attr:`network`, the deadline, the clock (:mod:`.clock`)."""
        self.settings = SettingsLedger(enabled=send_settings_once)
        """Which settings each node holds (:mod:`.settings`): later messages carry their digests instead."""

    # ------------------------------------------------------------------ what the collaborators hold
    @property
    def current(self) -> RoundStats | None:
        """The open round's record (:attr:`ledger`); None outside a round."""
        return self.ledger.current

    @current.setter
    def current(self, stats: RoundStats | None) -> None:
        self.ledger.current = stats

    @property
    def pending_failures(self) -> list[ClientFailure]:
        """Failures found before a round (a warm-up reply refused): recorded in the next round's row."""
        return self.ledger.pending_failures

    @property
    def unattributed_wire(self) -> dict[str, int]:
        """Wire bytes of messages sent outside a round (the warm-up of fedcomp's own app)."""
        return self.ledger.unattributed_wire

    @property
    def roster(self) -> Roster:
        """Node id → partition id and size, learnt at warm-up (fedcomp's own apps); replies are judged against it."""
        return self.judge.roster

    @roster.setter
    def roster(self, roster: Roster) -> None:
        self.judge.roster = roster

    @property
    def min_replies(self) -> int:
        """The usable replies a round needs (the quorum)."""
        return self.aggregation.min_replies

    @property
    def norm_bound(self) -> NormBound | None:
        return self.judge.norm_bound

    @property
    def network(self) -> NetworkModel | None:
        """Each client's link and compute (:mod:`fedcomp.network`): each round's simulated duration, and a deadline
        that drops slow clients from the aggregate; None: no simulated time."""
        return self.clock.network

    @property
    def sim_clock_s(self) -> float:
        """The simulated clock: the sum of the rounds' simulated durations so far (checkpointed)."""
        return self.clock.clock_s

    def wired(self, grid: Any) -> WireGrid:
        """``grid`` as this wrapper sends through it (:class:`~fedcomp.flower.wire.WireGrid`): every message
        measured into the round's ledger, the settings sent once per node."""
        if isinstance(grid, WireGrid) and self.ledger.on_wire in grid.listeners:
            return grid
        wire = WireGrid(grid, self.settings)
        wire.listeners.append(self.ledger.on_wire)
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
        stats = self.ledger.open(server_round)
        self.ledger.collect_late(grid, stats)
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
        self._send_predictor(messages, stats)
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
        self._send_predictor(messages, stats)
        return messages

    def _send_predictor(self, messages: list[Message], stats: RoundStats) -> None:
        """With aggregate feedback: the predictor into every train message, its bytes into each node's downlink
        bytes (they cross the wire with the broadcast, :mod:`.predictor`)."""
        predictor = self.receiver.predictor
        if predictor is None:
            return
        payload = predictor.payload()
        for m in messages:
            m.content[PREDICTOR_KEY] = predictor_record(payload)
        stats.downlink_bytes_sent = [n + len(payload) for n in stats.downlink_bytes_sent]
        stats.predictor_bytes_sent = len(payload) * len(messages)

    def _inner_messages(
        self, server_round: int, start: OrderedDict[str, torch.Tensor], config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The inner strategy's train messages for the model clients start from, with the transport settings."""
        view = _SampledGrid(grid, self.sampler(grid, server_round)) if self.sampler is not None else grid
        config[TRANSPORT_KEY] = self.transport.to_json()
        config[CHECKPOINT_ROUND_KEY] = self.last_checkpoint
        messages = list(self.inner.configure_train(server_round, _float_record(start), config, view))
        # Sent in partition order, not the sampler's: the in-process backend runs clients one at a time in the
        # order they were sent, so who waits behind whom (and a round timeout's victims) follows the seed alone.
        partition = self.roster.partition_of
        messages.sort(key=lambda m: (partition.get(int(m.metadata.dst_node_id), math.inf), m.metadata.dst_node_id))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Judge each reply; the inner strategy aggregates the usable ones if they reach the quorum."""
        server_round += self.round_offset
        stats = self.ledger.open_or_new(server_round)
        judged = self.judge.train_replies(stats, replies)
        accepted = judged.accepted
        if self.network is not None:  # the replies that missed the deadline are dropped
            accepted, missed = self.clock.time_round(stats, accepted, no_reply=judged.no_reply)
            self.judge.drop(stats, missed)
        out = self.aggregation.aggregate(server_round, stats, accepted, self.aggregate_base)
        predictor = self.receiver.predictor
        if predictor is not None and stats.skipped is None:  # a round that kept its model leaves it as it was
            predictor.learn([(a.weight, a.update) for a, _ in accepted])
        return out

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
            self.judge.fail(stats, node, f"statistics round: {why}", model_unknown=False)
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
        stats = self.ledger.open_or_new(server_round + self.round_offset)
        usable = self.judge.evaluation_replies(stats, replies)
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
        """Server state for a checkpoint: the model's structure, the model compressor's state, the inner strategy's,
        and the aggregate-feedback predictor (``uplink_predictor``, with ``error_feedback = "aggregate"``)."""
        state = {
            "structure": json.dumps(structure_to_json(self.structure)),
            "server_compression": self.server_compression.state_dict(),
            "strategy": self.inner_state.state_dict(),
            **self.clock.state_dict(),
        }
        if self.receiver.predictor is not None:
            state[PREDICTOR_STATE] = self.receiver.predictor.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (a resumed run)."""
        self.structure = structure_from_json(json.loads(state.get("structure", "[]")))
        self.receiver.follow(self.structure)
        # Checkpoints written before the rename keep the model compressor's state under "downlink".
        self.server_compression.load_state_dict(state.get("server_compression", state.get("downlink", {})))
        self.inner_state.load_state_dict(state.get("strategy", {}))
        self.clock.load_state_dict(state)
        if self.receiver.predictor is not None and PREDICTOR_STATE in state:
            self.receiver.predictor.load_state_dict(state[PREDICTOR_STATE])

    def take_round_stats(self) -> RoundStats | None:
        """Hand over (and forget) the statistics of the round just aggregated; None before round 1 (Flower
        calls ``evaluate_fn`` with round 0 for the initial model) and when already taken."""
        return self.ledger.take()

    def close_round(
        self, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord, *, last: bool, evaluating: bool
    ) -> RoundClose | None:
        """The round's end on the wrapper's side, once its model is aggregated: the round's counts handed over,
        a statistics round when the model compressor wants one before the final model (``last``) or an evaluation
        (``evaluating``), and the model compressor's end of round. None before round 1 (nothing to close)."""
        stats = self.take_round_stats()
        if stats is None:
            return None
        with self.ledger.closing(stats):  # a statistics round's messages are measured into this round's ledger
            self.ledger.collect_late(grid, stats)
            trained = OrderedDict(arrays.to_torch_state_dict())
            state = trained
            if last or evaluating:  # the final pruning or the evaluation may want the model's statistics (BWCP)
                state = self.recalibrate(grid, server_round, trained, config, stats, last, evaluating)
        snapshot = self.server_compression.end_of_round(server_round, state, self.structure, last)
        return RoundClose(stats, trained, state, snapshot)


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
