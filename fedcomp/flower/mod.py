"""The client mod: compressed transport around any Flower train (and evaluate) function.

``ClientApp(mods=[CompressionMod(model_fn=Net)])``. On the way in it
decodes the broadcast payload (with the configured model compressor,
within the receiver's limits) and hands the wrapped function a plain
Flower message: the global model as the ArrayRecord under the strategy's
``arrayrecord_key`` (``"arrays"``), the ConfigRecord as sent. On the way
out it takes the one ArrayRecord the function returned, forms the update
``w_local − w_received`` over the floating-point tensors, adds the error
feedback residual and encodes it with the configured update compressor,
and replaces the arrays by the payload (the uplink's client end,
:mod:`.uplink`). With ``error_feedback = "aggregate"`` it reads the
predictor the train message carries (:mod:`.predictor`, checked before
training: a missing or unusable one is a
:class:`~fedcomp.flower.predictor.PredictorError`), encodes the update minus
it, and keeps no residual. Error-feedback and compressor
state persists per node: in a file per round under the node's
``state-dir`` (or the run directory in simulation), read only when the
node is sampled, else in ``Context.state`` (:mod:`fedcomp.flower.state`).

When the server sends the model's change (``[downlink]``,
:mod:`.downlink`), the mod applies the catch-up to the model this node
holds (kept with the compressor state, checked by CRC; the seeded round-0
model from ``initial_model`` when it holds none) and reports the version it
now holds in the reply (``model-version``).

What it needs from the node: the model (``model_fn``, or the fedcomp
registry model the server names). Which codecs, their parameters and the
value bound come from the server in the message (:mod:`.transport`), so
one mod serves simulation and deployment.

Messages without transport settings (a warm-up query, a plain Flower
strategy's message) pass through untouched.

A client heals from damaged state rather than failing forever: a state it
cannot read (:class:`~fedcomp.flower.state.StateDamaged`, or a held-model
record of the wrong shape) is set aside and the client starts afresh,
reporting ``state_reset = 1`` in that round's metrics; an update or a
stored error-feedback residual that is not finite is never encoded (a
NaN residual would otherwise be sent as NaN, or, by SuRP and QSGD, as a
valid all-zero update every round): the round fails with
:class:`~fedcomp.compressors.update.base.NonFiniteUpdateError` naming it,
and a non-finite residual is dropped first, so the next round starts from
a zero residual.
"""

from __future__ import annotations

import contextvars
import functools
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from torch import nn

from fedcomp.coding import DecodeError, peek
from fedcomp.compressors.model.base import LossTerm, ModelCompressor, Received
from fedcomp.compressors.model.identity import IdentityModelCompressor
from fedcomp.compressors.model.structure import Architecture, Structure, structure_from_json, structure_to_json
from fedcomp.compressors.update.base import EncodeContext, UpdateCompressor
from fedcomp.flower import settings, uplink
from fedcomp.flower.downlink import (
    CHANGE_CODEC,
    Held,
    apply_change,
    dense_version,
    held_to_state,
    model_crc,
    split_state,
)
from fedcomp.flower.predictor import predictor_specs, read_predictor
from fedcomp.flower.state import StateDamaged, load_state, save_state, set_aside, state_dir_for
from fedcomp.flower.transport import STRUCTURE_KEY, TRANSPORT_KEY, Transport
from fedcomp.messages import CHECKPOINT_ROUND_KEY, CONFIG_KEY, STATE_DIR_KEY, payload_from

ClientAppCallable = Callable[[Message, Context], Message]
InitialModel = Callable[[Message, Context], Mapping[str, torch.Tensor]]
"""(the train message, the node's context) → the round-0 model's state, exactly as the server built it."""

# The loss term of the broadcast being trained on (LC's penalty, BWCP's sparsity regularizer): a function
# of the model, not data, so it is handed to the train function in-process, for the duration of the call.
_LOSS_TERM: contextvars.ContextVar[LossTerm | None] = contextvars.ContextVar("fedcomp_loss_term", default=None)


class CompressionMod:
    """A Flower client mod that decodes broadcasts and compresses updates (see the module docstring).

    ``model_fn``: builds this node's model (the architecture the payloads
    must match); may be omitted when the server names a fedcomp registry
    model. ``input_shape``: one input's shape, needed only by channel-pruning
    model compressors (UDFC, BWCP).
    """

    def __init__(
        self,
        model_fn: Callable[[], nn.Module] | None = None,
        input_shape: tuple[int, ...] = (),
        initial_model: InitialModel | None = None,
    ) -> None:
        self.arch = Architecture.of(model_fn, input_shape) if model_fn is not None else None
        self.initial_model = initial_model
        """Builds the server's round-0 model on this node (same seed), when the downlink sends the model's
        change: the first broadcast is then the change since round 0, not the dense model."""

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        settings.restore(msg.content, context)  # settings sent by digest, put back; full ones kept for later
        kind = msg.metadata.message_type
        if kind not in (MessageType.TRAIN, MessageType.EVALUATE) or CONFIG_KEY not in msg.content.config_records:
            return call_next(msg, context)
        config = msg.content.config_records[CONFIG_KEY]
        if TRANSPORT_KEY not in config:
            return call_next(msg, context)
        t0 = time.perf_counter()
        # One parse per distinct settings string (the server sends the same one every round), not per message.
        codecs = _codecs(str(config[TRANSPORT_KEY]), self.arch)
        transport = codecs.transport
        broadcast = payload_from(msg.content)
        server_round = int(config.get("server-round", 0))
        partition = _client_id(context)
        root = state_dir_for(context, str(config.get(STATE_DIR_KEY, "")) or None)
        folder = root / str(partition) if root is not None else None
        reset = False
        try:
            stored = load_state(context, folder, server_round) if kind == MessageType.TRAIN else {}
            held, uplink_state = split_state(stored)
        except (StateDamaged, ValueError) as exc:  # one damaged file must not disable this client for good
            set_aside(context, folder, server_round, str(exc))
            held, uplink_state, reset = None, {}, True
        if kind == MessageType.TRAIN and transport.sends_model_change:
            held = self._model_from_change(broadcast, held, codecs, transport, msg, context)
            received = Received(held.state)
        else:
            received = codecs.decode_broadcast(broadcast, transport.max_abs_value)
        predictor, predictor_bytes = None, 0
        if kind == MessageType.TRAIN and codecs.uplink.aggregate_feedback:  # checked before any training
            specs = predictor_specs(received.state)
            predictor, predictor_bytes = read_predictor(msg.content, specs, transport.max_abs_value)
        msg.content = _plain_content(msg.content, received, transport.arrays_key)
        t_decode = time.perf_counter()

        token = _LOSS_TERM.set(received.loss_term)
        try:
            reply = call_next(msg, context)
        finally:
            _LOSS_TERM.reset(token)
        if reply.has_error() or kind != MessageType.TRAIN:
            if not reply.has_error():
                _metrics_of(reply)["downlink-bytes"] = len(broadcast)
            return reply

        t_train = time.perf_counter()
        update = update_against(returned_arrays(reply), received.state)
        held_state = held_to_state(held) if held is not None else {}
        checkpoint_round = int(config.get(CHECKPOINT_ROUND_KEY, 0))
        num_clients = int(context.node_config.get("num-partitions", 1))
        ctx = EncodeContext(server_round, partition, max(num_clients, partition + 1))
        # Stores the node's state without the residual (a non-finite one is dropped, so the next round heals).
        drop_residual = functools.partial(save_state, context, folder, server_round, held_state, checkpoint_round)
        encoded = uplink.encode_update(codecs.uplink, update, uplink_state, ctx, drop_residual, predictor)
        save_state(context, folder, server_round, {**encoded.state, **held_state}, checkpoint_round,
                   stateless=codecs.uplink.aggregate_feedback)  # fmt: skip
        t_encode = time.perf_counter()

        metrics = _metrics_of(reply)
        if "partition-id" not in metrics and "partition-id" in context.node_config:
            metrics["partition-id"] = int(context.node_config["partition-id"])
        metrics.update(
            {
                "payload-bytes": uplink.count(encoded.payload),
                "downlink-bytes": len(broadcast) + predictor_bytes,  # the predictor came in the same message
                "decode_s": t_decode - t0,
                "encode_s": t_encode - t_train,
                **{f"uplink_{k}": float(v) for k, v in encoded.metrics.items()},
            }
        )
        if held is not None and transport.sends_model_change:
            metrics["model-version"] = held.version
        if reset:
            metrics["state_reset"] = 1.0
        reply.content = uplink.with_payload(reply.content, encoded.payload)
        return reply

    def _model_from_change(
        self, payload: bytes, held: Held | None, codecs: _Codecs, transport: Transport, msg: Message, context: Context
    ) -> Held:
        """The model a downlink of the model's change brings this node to: a catch-up, or the model dense."""
        try:
            codec, params = peek(payload)
        except DecodeError:
            codec, params = "", {}  # the decoder below says what is wrong with it
        if codec == CHANGE_CODEC:
            initial = functools.partial(self.initial_model, msg, context) if self.initial_model is not None else None
            return apply_change(payload, held, codecs.arch, codecs.downlink, transport.max_abs_value, initial)
        received = codecs.identity.decode(payload, max_abs=transport.max_abs_value)
        named = dense_version(params)
        if named is None:
            raise DecodeError("the downlink sends the model's change, but this dense broadcast names no version")
        version, crc = named
        if model_crc(received.state) != crc:
            raise DecodeError(
                f"dense broadcast: the model's CRC is {model_crc(received.state):#010x}, it names {crc:#010x}"
            )
        return Held(OrderedDict(received.state), version, crc)


class _Codecs:
    """The transport settings, and the decoders and the encoder they and one architecture imply (built once per
    process)."""

    def __init__(self, transport: Transport, arch: Architecture) -> None:
        self.transport = transport
        self.arch = arch
        self.server_compression: ModelCompressor = transport.model_compressor(arch)
        self.identity = IdentityModelCompressor(None, arch)
        self.uplink: UpdateCompressor = transport.update_compressor()
        self.downlink: UpdateCompressor = transport.downlink_compressor()

    def decode_broadcast(self, payload: bytes, max_abs: float) -> Received:
        """The configured model compressor's payload, or a dense one (what evaluate messages carry)."""
        decoder = self.server_compression
        if self.server_compression.name != "identity":
            try:
                codec, _ = peek(payload)
            except DecodeError:
                codec = self.server_compression.name  # the configured decoder says what is wrong with it
            if codec == "identity":
                decoder = self.identity
        return decoder.decode(payload, max_abs=max_abs)


@functools.lru_cache(maxsize=8)
def _codecs(transport_json: str, own: Architecture | None) -> _Codecs:
    """The message's transport settings (:data:`TRANSPORT_KEY`, JSON) parsed and checked once, with their codecs."""
    transport = Transport.from_json(transport_json)
    return _Codecs(transport, _architecture(transport, own))


def _architecture(transport: Transport, own: Architecture | None) -> Architecture:
    """The node's own model if it has one; else the fedcomp registry model the server names."""
    if own is not None:
        return own
    model = transport.model
    if not model:
        raise ValueError(
            "CompressionMod has no model_fn and the server names no fedcomp model: "
            "pass CompressionMod(model_fn=<a function returning your torch.nn.Module>)"
        )
    try:
        shape = tuple(int(d) for d in model["input_shape"])
        return Architecture(
            str(model["name"]), shape, int(model["num_classes"]), params_json=str(model.get("params", ""))
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed model in the transport settings: {exc}") from None


def _plain_content(content: RecordDict, received: Received, arrays_key: str) -> RecordDict:
    """The message as the user's function expects it: the decoded model as an ArrayRecord, the config as sent."""
    config = content.config_records[CONFIG_KEY]
    config[STRUCTURE_KEY] = json.dumps(structure_to_json(received.structure))
    records: dict[str, Any] = {arrays_key: ArrayRecord(received.state)}
    for key, value in content.config_records.items():
        records[key] = value
    for key, value in content.metric_records.items():
        records[key] = value
    return RecordDict(records)


def returned_arrays(reply: Message) -> OrderedDict[str, torch.Tensor]:
    """The model the train function returned: its reply's one ArrayRecord."""
    arrays = list(reply.content.array_records.values())
    if len(arrays) != 1:
        raise ValueError(
            f"the train function's reply must carry exactly one ArrayRecord (the trained model), got {len(arrays)}"
        )
    return OrderedDict(arrays[0].to_torch_state_dict())


def update_against(
    trained: dict[str, torch.Tensor], received: dict[str, torch.Tensor]
) -> OrderedDict[str, torch.Tensor]:
    """``w_local − w_received`` over the received model's floating-point tensors; ValueError naming a mismatch."""
    update: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, start in received.items():
        if not start.is_floating_point():
            continue
        if name not in trained:
            raise ValueError(f"the trained model has no tensor {name!r}: return the model you received, trained")
        if tuple(trained[name].shape) != tuple(start.shape):
            raise ValueError(
                f"tensor {name!r} came back with shape {tuple(trained[name].shape)}, was sent as {tuple(start.shape)}"
            )
        update[name] = trained[name].detach().to("cpu", torch.float32) - start.to(torch.float32)
    extra = sorted(set(trained) - set(received))
    if extra:
        raise ValueError(f"the trained model has tensors the received one has not: {extra[:5]}")
    return update


def _metrics_of(reply: Message) -> MetricRecord:
    records = reply.content.metric_records
    if not records:
        records["metrics"] = MetricRecord()
    if "metrics" in records:
        return records["metrics"]
    return next(iter(records.values()))


def _client_id(context: Context) -> int:
    """The partition this node holds if it says (simulation, configured devices), else its node id."""
    if "partition-id" in context.node_config:
        return int(context.node_config["partition-id"])
    return int(context.node_id) % (1 << 31)


def received_structure(msg: Message) -> Structure:
    """The architecture edits of the model the mod decoded (``()`` for the configured model)."""
    config = msg.content.config_records[CONFIG_KEY]
    return structure_from_json(json.loads(str(config.get(STRUCTURE_KEY, "[]"))))


def received_loss_term() -> LossTerm | None:
    """The loss term the broadcast being trained on asks for (LC's μ/2‖w − t‖², BWCP's regularizer), else None.

    Call it inside a train function the mod wraps, and add ``term(model)``
    to each mini-batch's loss (a term with ``proximal_step`` may instead be
    applied after each SGD step, see :func:`fedcomp.clients.training.train_local`).
    """
    return _LOSS_TERM.get()


def received_model(
    msg: Message, model_fn: Callable[[], nn.Module] | Architecture, arrays_key: str = "arrays"
) -> nn.Module:
    """The model the mod decoded, as a module: ``model_fn()`` with the broadcast's architecture edits, loaded.

    Needed only with model compressors that change the architecture (ALDS's
    factorized layers, channel pruning); otherwise ``model_fn()`` plus
    ``load_state_dict(msg.content["arrays"].to_torch_state_dict())`` is the same.
    """
    arch = model_fn if isinstance(model_fn, Architecture) else Architecture.of(model_fn)
    model = arch.build(received_structure(msg))
    model.load_state_dict(msg.content.array_records[arrays_key].to_torch_state_dict())
    return model
