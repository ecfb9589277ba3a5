"""FedAvg with every transfer carried as a ``bytes`` payload and counted.

:class:`CompressedFedAvg` is Flower's message-API FedAvg with the transport
replaced: the global model is broadcast as the payload the configured model
compressor builds (:mod:`fedcomp.compressors.model`; identity by default),
each reply's update is a payload decoded by the configured update
compressor, and this class is the one place bytes are counted
(``len(payload)`` both ways, STYLE.md's single measuring stage).
Aggregation is FedAvg on the decoded updates (weighted by
``num-examples``), added to the model the clients started from as they
decoded it, followed by a server step of size ``server_lr``. When the model
compressor changes the architecture, the strategy keeps the structure and
expects updates in its shapes. Replies that carry an error, or a payload
that does not decode, are recorded as failed with the reason; the round
aggregates the rest.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedcomp.coding import DecodeError, DecodeLimits, TensorSpec
from fedcomp.compressors.model.base import ModelCompressor
from fedcomp.compressors.model.identity import IdentityModelCompressor
from fedcomp.compressors.model.structure import Architecture, Structure, structure_from_json, structure_to_json
from fedcomp.compressors.update.base import UpdateCompressor
from fedcomp.messages import (
    CHECKPOINT_ROUND_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    PAYLOAD_KEY,
    payload_from,
    payload_record,
)
from fedcomp.seeding import CLIENT_SAMPLING, numpy_rng

logger = logging.getLogger(__name__)


class NotEnoughClientsError(RuntimeError):
    """Fewer nodes connected than the round needs, within the wait limit."""


@dataclass
class ClientFailure:
    node_id: int
    reason: str
    uplink_bytes: int = 0


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
    downlink_bytes_per_client: int = 0
    downlink_crc32: int = 0
    """CRC32 of the broadcast payload (without its trailing CRC field): identifies the model a round started from."""
    downlink_bytes_received: list[int] = field(default_factory=list)
    """The broadcast's length as each aggregated client measured it on arrival, same order as ``clients``."""
    downlink_metrics: dict[str, float] = field(default_factory=dict)
    """What the model compressor reported when it built the broadcast."""
    train_loss: float | None = None
    client_metrics: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def downlink_bytes(self) -> int:
        return self.downlink_bytes_per_client * len(self.sampled_nodes)

    @property
    def uplink_bytes_total(self) -> int:
        """Every uplink byte received, undecodable payloads included."""
        return sum(self.uplink_bytes) + sum(f.uplink_bytes for f in self.failures)


class CompressedFedAvg(FedAvg):
    """FedAvg over real payloads, with seeded client sampling and byte accounting."""

    def __init__(
        self,
        *,
        uplink: UpdateCompressor,
        arch: Architecture,
        num_clients: int,
        downlink: ModelCompressor | None = None,
        fraction_train: float = 1.0,
        min_train_clients: int = 2,
        server_lr: float = 1.0,
        seed: int = 0,
        node_wait_s: float = 120.0,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=0.0,  # evaluation is centralized, on the server
            min_train_nodes=min_train_clients,
            min_available_nodes=min_train_clients,
        )
        self.uplink = uplink
        self.downlink = downlink if downlink is not None else IdentityModelCompressor(None, arch)
        self.arch = arch
        self.structure: Structure = ()
        """The global model's architecture edits (ALDS factorized layers, ...); () = the configured model."""
        self.update_limits = _update_limits(arch.specs(()))
        self.num_clients = num_clients
        self.server_lr = server_lr
        self.seed = seed
        self.node_wait_s = node_wait_s
        self.global_state: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.current: RoundStats | None = None
        self.partition_of: dict[int, int] = {}
        """Node id → partition id, learnt at warm-up: sampling over partitions, not random node ids."""
        self.round_offset = 0
        """Rounds already done before this attempt (a resumed run): Flower counts from 1 again."""
        self.last_checkpoint = 0
        """The last round saved in a checkpoint; clients keep state files from there on."""

    # ------------------------------------------------------------------ sampling
    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """All connected node ids, once every client is there (or the wait runs out)."""
        deadline = time.monotonic() + self.node_wait_s
        while len(nodes := sorted(grid.get_node_ids())) < self.num_clients:
            if time.monotonic() > deadline:
                if len(nodes) >= self.min_train_nodes:
                    logger.warning("only %d of %d nodes connected; sampling from those", len(nodes), self.num_clients)
                    break
                raise NotEnoughClientsError(
                    f"{len(nodes)} nodes connected after {self.node_wait_s:.0f} s; "
                    f"need at least {self.min_train_nodes} (federation.min_train_clients)"
                )
            time.sleep(0.1)
        return nodes

    def sample(self, grid: Grid, server_round: int) -> list[int]:
        """Seeded sample of ``fraction_train`` of the nodes (at least the minimum)."""
        nodes = self.wait_for_nodes(grid)
        # Node ids are random per run; order them by the partition they hold so the seed fixes who trains.
        nodes = sorted(nodes, key=lambda n: (self.partition_of.get(n, 1 << 62), n))
        size = min(len(nodes), max(int(len(nodes) * self.fraction_train), self.min_train_nodes))
        rng = numpy_rng(self.seed, CLIENT_SAMPLING, server_round)
        # Choose positions, not ids: node ids are uint64 and numpy would turn them into floats.
        return sorted(nodes[int(i)] for i in rng.choice(len(nodes), size=size, replace=False))

    # ------------------------------------------------------------------ train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Encode the global model once, send the same payload to each sampled node."""
        server_round += self.round_offset
        stats = RoundStats(round=server_round)
        self.current = stats
        broadcast = self.downlink.broadcast(server_round, OrderedDict(arrays.to_torch_state_dict()), self.structure)
        if broadcast.structure != self.structure:  # the architecture changed: updates now come in its shapes
            self.structure = broadcast.structure
            self.update_limits = _update_limits(self.arch.specs(self.structure))
        # Updates are added to the model the clients start from, exactly as they decode it.
        self.global_state = broadcast.start
        payload = broadcast.payload
        stats.downlink_metrics = broadcast.metrics
        stats.sampled_nodes = self.sample(grid, server_round)
        stats.downlink_bytes_per_client = len(payload)
        # Over all but the container's own trailing CRC: a CRC32 over data plus its CRC is a constant.
        stats.downlink_crc32 = zlib.crc32(payload[:-4])
        config["server-round"] = server_round
        config[CHECKPOINT_ROUND_KEY] = self.last_checkpoint
        record = RecordDict({PAYLOAD_KEY: payload_record(payload), CONFIG_KEY: config})
        return self._construct_messages(record, stats.sampled_nodes, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode each update, average the good ones, take the server step."""
        server_round += self.round_offset
        stats = self.current if self.current is not None else RoundStats(round=server_round)
        decoded: list[tuple[float, OrderedDict[str, torch.Tensor], MetricRecord]] = []
        replied: set[int] = set()
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            replied.add(node)
            if msg.has_error():
                stats.failures.append(ClientFailure(node, f"client error: {_clean_reason(msg.error.reason)}"))
                continue
            try:
                payload = payload_from(msg.content)
            except DecodeError as exc:
                stats.failures.append(ClientFailure(node, f"bad reply: {exc}"))
                continue
            try:
                metrics = msg.content.metric_records[METRICS_KEY]
                weight = float(metrics["num-examples"])
                update = self.uplink.decode(payload, self.update_limits)
            except DecodeError as exc:
                stats.failures.append(ClientFailure(node, f"undecodable payload: {exc}", len(payload)))
                continue
            except (KeyError, TypeError, ValueError) as exc:
                stats.failures.append(ClientFailure(node, f"reply lacks metrics: {exc!r}", len(payload)))
                continue
            stats.clients.append(int(metrics.get("partition-id", -1)))
            stats.uplink_bytes.append(len(payload))
            stats.uplink_bytes_sent.append(int(metrics.get("payload-bytes", -1)))
            stats.downlink_bytes_received.append(int(metrics.get("downlink-bytes", -1)))
            decoded.append((weight, update, metrics))
        for node in stats.sampled_nodes:
            if node not in replied:
                stats.failures.append(ClientFailure(node, "no reply before the round timeout"))

        if not decoded or sum(w for w, _, _ in decoded) <= 0:
            logger.warning("round %d: no usable update (%d failures)", server_round, len(stats.failures))
            # The round's start model stays the global one (in the structure it was broadcast in).
            return ArrayRecord(self.global_state), None
        # Partition order, not arrival order, so neither the sum nor the row depends on timing.
        decoded.sort(key=lambda item: int(item[2].get("partition-id", -1)))
        order = sorted(range(len(stats.clients)), key=stats.clients.__getitem__)
        stats.clients = [stats.clients[i] for i in order]
        stats.uplink_bytes = [stats.uplink_bytes[i] for i in order]
        stats.uplink_bytes_sent = [stats.uplink_bytes_sent[i] for i in order]
        stats.downlink_bytes_received = [stats.downlink_bytes_received[i] for i in order]
        new_state = self._fedavg_step([(w, u) for w, u, _ in decoded])
        stats.train_loss, stats.client_metrics = _weighted_metrics(decoded)
        return ArrayRecord(new_state), MetricRecord({"train_loss": stats.train_loss})

    def _fedavg_step(self, weighted: list[tuple[float, dict[str, torch.Tensor]]]) -> OrderedDict[str, torch.Tensor]:
        """w ← w + η_s · Σ_k (n_k / n) Δ_k over the float entries; others kept."""
        total = sum(w for w, _ in weighted)
        new_state: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, value in self.global_state.items():
            if not value.is_floating_point():
                new_state[name] = value
                continue
            avg = torch.zeros_like(value, dtype=torch.float32)
            for w, update in weighted:
                avg.add_(update[name].to(torch.float32), alpha=w / total)
            new_state[name] = (value.float() + self.server_lr * avg).to(value.dtype)
        return new_state

    def state_dict(self) -> dict[str, Any]:
        """Server state for a checkpoint: the model's structure and the model compressor's state
        (FedAvg's step has none beyond its settings)."""
        return {
            "server_lr": self.server_lr,
            "structure": json.dumps(structure_to_json(self.structure)),
            "downlink": self.downlink.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (a resumed run)."""
        self.structure = structure_from_json(json.loads(state.get("structure", "[]")))
        self.update_limits = _update_limits(self.arch.specs(self.structure))
        self.downlink.load_state_dict(state.get("downlink", {}))

    def take_round_stats(self) -> RoundStats | None:
        """Hand over (and forget) the statistics of the round just aggregated."""
        stats, self.current = self.current, None
        return stats

    def summary(self) -> None:
        logger.info(
            "CompressedFedAvg: downlink=%s, uplink=%s, fraction_train=%.2f, min_train=%d, server_lr=%g",
            self.downlink.name,
            self.uplink.name,
            self.fraction_train,
            self.min_train_nodes,
            self.server_lr,
        )


def _update_limits(specs: Iterable[TensorSpec]) -> DecodeLimits:
    """Updates cover the model's floating-point tensors."""
    return DecodeLimits.for_specs([s for s in specs if s.dtype.is_floating_point])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _clean_reason(reason: str, limit: int = 500) -> str:
    """The client's own exception message, without Ray's wrapping and colour codes."""
    text = _ANSI.sub("", str(reason))
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1].rstrip().removesuffix("'>")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _weighted_metrics(decoded: list[tuple[float, Any, MetricRecord]]) -> tuple[float, dict[str, float]]:
    """Example-weighted mean of every numeric client metric (loss included)."""
    total = sum(w for w, _, _ in decoded)
    sums: dict[str, float] = {}
    for w, _, metrics in decoded:
        for key, value in metrics.items():
            if key in ("num-examples", "partition-id", "payload-bytes", "downlink-bytes") or not isinstance(
                value, (int, float)
            ):
                continue
            sums[key] = sums.get(key, 0.0) + w * float(value) / total
    return sums.get("train_loss", float("nan")), sums
