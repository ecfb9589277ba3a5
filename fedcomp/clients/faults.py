"""Hostile clients on purpose: the attacks ``[faults] hostile_client`` / ``attacks`` make one client send.

For testing that a federation survives a client that lies (DESIGN.md,
principle 7): each attack changes what one client sends in a round, either
its update before it is compressed (in the train function), its reply's
metrics, or the payload bytes themselves (in :func:`wire_faults_mod`, the
client mod outside the compression mod: it acts on what is sent). Round r uses ``attacks[(r − 1) mod len(attacks)]``. A
correct server rejects every one of these replies, so a run with a hostile
client ends with the model of a run in which that client simply failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, MessageType

from fedcomp.coding import TensorSpec, pack

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


UPDATE_ATTACKS: dict[str, Callable[[Update], None]] = {
    "nan_update": _nan_update,
    "inf_coordinate": _inf_coordinate,
    "diverged": _diverged,
}


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
}


def surp_refresh_2_63(specs: list[TensorSpec]) -> bytes:
    """A valid-looking SuRP payload (for a model of ``specs``) whose one refresh advances the λ schedule by 2^63 steps.

    On the landed decoder this froze the server (a negative exponent in
    compiled code holding the GIL); it must be a DecodeError.
    """
    from fedcomp.compressors.update.surp import SurpStream, write_stream

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

ATTACKS = sorted({"raise", *UPDATE_ATTACKS, *METRIC_ATTACKS, *PAYLOAD_ATTACKS})
"""``raise``: the client fails outright (the reference a rejected attack must equal)."""


def attack_of(faults: Any, partition: int, server_round: int) -> str | None:
    """The attack this client makes this round, or None."""
    if faults.hostile_client != partition or not faults.attacks:
        return None
    return faults.attacks[(server_round - 1) % len(faults.attacks)]


def wire_faults_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """The faults that act on the wire, after compression: a flipped byte, lying metrics, a hostile payload.

    Seeded per client and round like the train function's faults
    (``faults.corrupt_payload_rate``; the hostile client's metric and
    payload ``attacks``). Messages that are not fedcomp's train messages pass.
    """
    from fedcomp.clients.app import runtime_for
    from fedcomp.messages import CONFIG_KEY, METRICS_KEY, PAYLOAD_KEY, payload_from, payload_record
    from fedcomp.seeding import FAULTS, numpy_rng

    reply = call_next(msg, context)
    if msg.metadata.message_type != MessageType.TRAIN or reply.has_error() or PAYLOAD_KEY not in reply.content:
        return reply
    rt = runtime_for(msg, context)
    cfg, partition = rt.cfg, rt.partition_id
    server_round = int(msg.content.config_records[CONFIG_KEY]["server-round"])
    _, draw_corrupt, _ = numpy_rng(cfg.seed, FAULTS, server_round, partition).random(3)
    attack = attack_of(cfg.faults, partition, server_round)
    payload = payload_from(reply.content)
    if draw_corrupt < cfg.faults.corrupt_payload_rate:  # injected: one flipped byte in transit
        pos = int(numpy_rng(cfg.seed, FAULTS, server_round, partition, 1).integers(len(payload)))
        payload = payload[:pos] + bytes([payload[pos] ^ 0xFF]) + payload[pos + 1 :]
    if attack in PAYLOAD_ATTACKS:
        specs = [s for s in rt.arch.specs(()) if s.dtype.is_floating_point]
        payload = PAYLOAD_ATTACKS[attack]([TensorSpec(s.name, s.shape, torch.float32) for s in specs])
    reply.content[PAYLOAD_KEY] = payload_record(payload)
    if attack in METRIC_ATTACKS:
        METRIC_ATTACKS[attack](reply.content.metric_records[METRICS_KEY], partition, cfg.federation.num_clients)
    return reply
