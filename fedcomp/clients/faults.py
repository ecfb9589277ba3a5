"""Hostile clients on purpose: the attacks ``[faults] hostile_client`` / ``attacks`` make one client send.

For testing that a federation survives a client that lies (DESIGN.md,
principle 7): each attack changes what one client sends in a round, either
its update before it is compressed (in the train function), its reply's
metrics, or the payload bytes themselves (in :func:`wire_faults_mod`, the
client mod outside the compression mod: it acts on what is sent). Round r uses ``attacks[(r − 1) mod len(attacks)]``. A
correct server rejects every one of these replies, so a run with a hostile
client ends with the model of a run in which that client simply failed.

Two kinds are well-formed replies no per-reply check can refuse, and show
what the threat model says about influence (docs/threat_model.md):

- ``bounded_shift``: an update of +999,000 on every coordinate (inside the
  default ``max_abs_value``); FedAvg without ``update_norm_bound`` takes it;
- ``replacement``: the client claims 10⁷ examples at warm-up and in every
  train reply, and sends −w (so w + Δ = 0): the model replacement of
  Bagdasaryan et al. 2020 with the weight inflated instead of the update
  scaled. Where the server knows the partition sizes (simulation) the claim
  is refused.

Others act outside training: ``statistics_shift`` (a statistics round's
means +500), ``evaluation_inflated`` / ``evaluation_out_of_range`` (an
evaluation reply claiming accuracy 1.0 on 10⁷ examples / accuracy 1e300),
``damaged_state`` / ``nan_residual`` (the client's own state file truncated /
its error-feedback residual NaN before the round reads it: a disk fault,
not a lie, which the client must heal from).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, MessageType

from fedcomp.clients.runtime import runtime_for
from fedcomp.coding import DecodeLimits, TensorSpec, pack, unpack
from fedcomp.compressors.model import statistics as stats_codec
from fedcomp.compressors.model.base import read_whole
from fedcomp.compressors.update.base import EncodeContext
from fedcomp.compressors.update.surp import SurpStream, write_stream
from fedcomp.flower.recalibration import MESSAGE_TYPE as STATISTICS_TYPE
from fedcomp.flower.state import newest_state_file, state_dir_for
from fedcomp.flower.transport import transport_from
from fedcomp.messages import CONFIG_KEY, METRICS_KEY, PAYLOAD_KEY, STATE_DIR_KEY, payload_from, payload_record
from fedcomp.seeding import FAULTS, numpy_rng

Update = dict[str, torch.Tensor]


def _nan_update(update: Update) -> None:
    for t in update.values():
        t.fill_(float("nan"))


def _inf_coordinate(update: Update) -> None:
    next(iter(update.values())).view(-1)[0] = float("inf")


def _diverged(update: Update) -> None:
    """What a client whose local training blew up sends: huge values (and a loss that says so)."""
    for t in update.values():
        t.mul_(1e30)


BOUNDED_SHIFT = 999_000.0
"""Within the default ``max_abs_value`` (10⁶): every value check passes."""


def _bounded_shift(update: Update) -> None:
    for t in update.values():
        t.fill_(BOUNDED_SHIFT)


UPDATE_ATTACKS: dict[str, Callable[[Update], None]] = {
    "nan_update": _nan_update,
    "inf_coordinate": _inf_coordinate,
    "diverged": _diverged,
    "bounded_shift": _bounded_shift,
}

INFLATED_EXAMPLES = 10**7
"""The weight a replacing client claims: the default ``federation.max_examples``, so no bound refuses it."""
STATISTICS_SHIFT = 500.0
REPLACEMENT = "replacement"
LIFECYCLE_ATTACKS = ("replacement", "statistics_shift", "evaluation_inflated", "evaluation_out_of_range",
                     "damaged_state", "nan_residual")  # fmt: skip
"""Attacks :func:`wire_faults_mod` makes on the warm-up, statistics and evaluation messages and the state file."""


def _set(key: str, value: Any) -> Callable[[dict[str, Any], int, int], None]:
    def attack(metrics: dict[str, Any], partition: int, num_clients: int) -> None:
        metrics[key] = value

    return attack


def _steal_partition(metrics: dict[str, Any], partition: int, num_clients: int) -> None:
    metrics["partition-id"] = (partition + 1) % num_clients


METRIC_ATTACKS: dict[str, Callable[[dict[str, Any], int, int], None]] = {
    "huge_examples": _set("num-examples", 10**9),
    "negative_examples": _set("num-examples", -1500),
    "nan_examples": _set("num-examples", float("nan")),
    "steal_partition": _steal_partition,
    "inf_partition": _set("partition-id", float("inf")),
    "malformed_metrics": _set("payload-bytes", [1, 2]),
    "nan_loss": _set("train_loss", float("nan")),
    "stale_version": _set("model-version", 0),  # "I hold the round-1 model": a catch-up it cannot use, or dense
}


def surp_refresh_2_63(specs: list[TensorSpec]) -> bytes:
    """A valid-looking SuRP payload (for a model of ``specs``) whose one refresh advances the λ schedule by 2^63 steps.

    On the landed decoder this froze the server (a negative exponent in
    compiled code holding the GIL); it must be a DecodeError.
    """
    n = sum(s.numel for s in specs)
    stream = SurpStream(
        seed=1,
        logf=math.log(n / math.log(n)),
        lam0=1.0,
        norms=np.ones(len(specs), dtype=np.float32),
        symbols=[0, 1],
        steps=[1 << 63],
        signs=[False],
    )
    return pack("surp", {"mode": "iterative"}, specs, write_stream(stream), by_digest=True)


PAYLOAD_ATTACKS: dict[str, Callable[[list[TensorSpec]], bytes]] = {"surp_refresh_2_63": surp_refresh_2_63}

IMPLEMENTED = sorted({"raise", *UPDATE_ATTACKS, *METRIC_ATTACKS, *PAYLOAD_ATTACKS, *LIFECYCLE_ATTACKS})
"""Every attack made here: the names ``[faults] attacks`` accepts (:data:`fedcomp.schema.ATTACKS`, which
``raise`` is part of: the client fails outright, the reference a rejected attack must equal)."""


def attack_of(faults: Any, partition: int, server_round: int) -> str | None:
    """The attack this client makes this round, or None."""
    if faults.hostile_client != partition or not faults.attacks:
        return None
    return faults.attacks[(server_round - 1) % len(faults.attacks)]


def wire_faults_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """The faults that act on the wire, after compression: a flipped byte, lying metrics, a hostile payload.

    Seeded per client and round like the train function's faults
    (``faults.corrupt_payload_rate``; the hostile client's metric and
    payload ``attacks``); also the attacks on the warm-up, statistics and
    evaluation replies and on the client's state file. Messages that are
    not fedcomp's pass.
    """
    kind = msg.metadata.message_type
    if CONFIG_KEY not in msg.content.config_records:
        return call_next(msg, context)
    config = msg.content.config_records[CONFIG_KEY]
    server_round = int(config.get("server-round", 0))
    if kind == MessageType.TRAIN:  # the state file is damaged before the compression mod reads it
        rt = runtime_for(msg, context)  # what the train function does first: the same error if it fails
        attack = attack_of(rt.cfg.faults, rt.partition_id, server_round)
        if attack in ("damaged_state", "nan_residual"):
            _damage_state(context, config, rt.partition_id, server_round, attack)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    rt = runtime_for(msg, context)
    cfg, partition = rt.cfg, rt.partition_id
    attack = attack_of(cfg.faults, partition, server_round)
    if kind == MessageType.QUERY:  # the warm-up: the replacing client claims its inflated weight from the start
        if cfg.faults.hostile_client == partition and REPLACEMENT in cfg.faults.attacks:
            reply.content.metric_records[METRICS_KEY]["num-examples"] = INFLATED_EXAMPLES
        return reply
    if kind == STATISTICS_TYPE and attack == "statistics_shift":
        reply.content[PAYLOAD_KEY] = payload_record(_shifted_statistics(payload_from(reply.content)))
        return reply
    if kind == MessageType.EVALUATE and attack in ("evaluation_inflated", "evaluation_out_of_range"):
        metrics = reply.content.metric_records[METRICS_KEY]
        if attack == "evaluation_inflated":
            metrics["test_accuracy"], metrics["num-examples"] = 1.0, INFLATED_EXAMPLES
        else:
            metrics["test_accuracy"] = 1e300
        return reply
    if kind != MessageType.TRAIN or PAYLOAD_KEY not in reply.content:
        return reply
    _, draw_corrupt, _ = numpy_rng(cfg.seed, FAULTS, server_round, partition).random(3)
    payload = payload_from(reply.content)
    if draw_corrupt < cfg.faults.corrupt_payload_rate:  # injected: one flipped byte in transit
        pos = int(numpy_rng(cfg.seed, FAULTS, server_round, partition, 1).integers(len(payload)))
        payload = payload[:pos] + bytes([payload[pos] ^ 0xFF]) + payload[pos + 1 :]
    if attack in PAYLOAD_ATTACKS:
        specs = [s for s in rt.arch.specs(()) if s.dtype.is_floating_point]
        payload = PAYLOAD_ATTACKS[attack]([TensorSpec(s.name, s.shape, torch.float32) for s in specs])
    if attack == REPLACEMENT:
        payload = _replacement(msg, config, partition, server_round, cfg.federation.num_clients)
        reply.content.metric_records[METRICS_KEY]["num-examples"] = INFLATED_EXAMPLES
        reply.content.metric_records[METRICS_KEY]["payload-bytes"] = len(payload)
    reply.content[PAYLOAD_KEY] = payload_record(payload)
    if attack in METRIC_ATTACKS:
        METRIC_ATTACKS[attack](reply.content.metric_records[METRICS_KEY], partition, cfg.federation.num_clients)
    return reply


def _replacement(msg: Message, config: Any, partition: int, server_round: int, num_clients: int) -> bytes:
    """The uplink payload of Δ = −w for the model w this client received: w + Δ = 0 (the model replaced)."""
    transport = transport_from(config)
    assert transport is not None  # a train message of fedcomp's: the compression mod ran
    # The compression mod has replaced the message's payload by the model it decoded (what the client trains on).
    received = msg.content.array_records[transport.arrays_key].to_torch_state_dict()
    update = {k: -v.float() for k, v in received.items() if v.is_floating_point()}
    ctx = EncodeContext(server_round, partition, num_clients)
    return transport.update_compressor().encode(update, {}, ctx).payload


def _shifted_statistics(payload: bytes) -> bytes:
    """A statistics report with every mean moved by :data:`STATISTICS_SHIFT` (in range, well-formed)."""
    moments = read_whole(unpack(payload, DecodeLimits()))
    for key, value in moments.items():
        if key.endswith(".mean"):
            moments[key] = value + STATISTICS_SHIFT
    return stats_codec.encode(moments)


def _damage_state(context: Context, config: Any, partition: int, server_round: int, attack: str) -> None:
    """Damage the newest state file this client would read this round (a disk fault, not a lie)."""
    root = state_dir_for(context, str(config.get(STATE_DIR_KEY, "")) or None)
    path = newest_state_file(root / str(partition), server_round) if root is not None else None
    if path is None:
        return
    if attack == "damaged_state":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in state.items():
        if key.startswith("ef/"):
            state[key] = torch.full_like(value, float("nan"))
    torch.save(state, path)
