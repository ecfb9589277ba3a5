"""FedAvg with every transfer carried as a ``bytes`` payload and counted.

:class:`CompressedFedAvg` is Flower's message-API FedAvg with the transport
replaced: the global model is broadcast as the payload the configured model
compressor builds (:mod:`fedcomp.compressors.model`; identity by default),
each reply is judged (:mod:`.replies`: metrics range-checked, the payload
decoded by the configured update compressor within limits, to finite
values), and this class is the one place bytes are counted
(``len(payload)`` both ways, STYLE.md's single measuring stage).
Aggregation is FedAvg on the decoded updates (weighted by
``num-examples``), added to the model the clients started from as they
decoded it, followed by a server step of size ``server_lr``. When the model
compressor changes the architecture, the strategy keeps the structure and
expects updates in its shapes. A rejected reply is recorded as failed with
the reason; the round aggregates the rest if at least ``min_replies`` are
usable (the quorum), else it keeps the model and records why.
"""

from __future__ import annotations

import json
import logging
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

from fedcomp.coding import DecodeLimits, TensorSpec
from fedcomp.compressors.model.base import ModelCompressor
from fedcomp.compressors.model.identity import IdentityModelCompressor
from fedcomp.compressors.model.structure import Architecture, Structure, structure_from_json, structure_to_json
from fedcomp.compressors.update.base import UpdateCompressor
from fedcomp.messages import (
    CHECKPOINT_ROUND_KEY,
    CONFIG_KEY,
    PAYLOAD_KEY,
    payload_record,
)
from fedcomp.seeding import CLIENT_SAMPLING, numpy_rng
from fedcomp.strategies.replies import Accepted, ReplyPolicy, ReplyRejected, Roster, judge_reply

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
    skipped: str | None = None
    """Why the round aggregated nothing (no usable reply, or fewer than the quorum); None if it did."""
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
        min_replies: int = 1,
        max_examples: int = 10_000_000,
        max_abs_value: float = float("inf"),
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
        self.max_abs_value = max_abs_value
        self.update_limits = _update_limits(arch.specs(()), max_abs_value)
        self.num_clients = num_clients
        self.server_lr = server_lr
        self.seed = seed
        self.node_wait_s = node_wait_s
        self.global_state: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.current: RoundStats | None = None
        self.roster = Roster()
        """Node id → partition id and size, learnt at warm-up: sampling over partitions, not random node ids."""
        self.min_replies = min_replies
        self.policy = ReplyPolicy(num_partitions=num_clients, max_examples=max_examples)
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
        nodes = sorted(nodes, key=lambda n: (self.roster.partition_of.get(n, 1 << 62), n))
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
            self.update_limits = _update_limits(self.arch.specs(self.structure), self.max_abs_value)
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
        """Judge each reply, average the usable ones if they reach the quorum, take the server step."""
        server_round += self.round_offset
        stats = self.current if self.current is not None else RoundStats(round=server_round)
        accepted: list[Accepted] = []
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
                accepted.append(judge_reply(msg, self._decode_update, self.roster, self.policy))
            except ReplyRejected as exc:
                self._fail(stats, node, exc.reason, exc.uplink_bytes)
        for node in stats.sampled_nodes:
            if node not in replied:
                self._fail(stats, node, "no reply before the round timeout")

        if len(accepted) < max(1, self.min_replies):
            stats.skipped = (
                f"{len(accepted)} usable of {len(stats.sampled_nodes)} replies, "
                f"quorum is {max(1, self.min_replies)} (federation.min_replies): model kept"
            )
            logger.warning("round %d: %s", server_round, stats.skipped)
            # The round's start model stays the global one (in the structure it was broadcast in).
            return ArrayRecord(self.global_state), None
        # Partition order, not arrival order, so neither the sum nor the row depends on timing.
        accepted.sort(key=lambda a: a.partition)
        stats.clients = [a.partition for a in accepted]
        stats.uplink_bytes = [a.uplink_bytes for a in accepted]
        stats.uplink_bytes_sent = [a.payload_bytes_sent for a in accepted]
        stats.downlink_bytes_received = [a.downlink_bytes_received for a in accepted]
        new_state = self._fedavg_step([(float(a.weight), a.update) for a in accepted])
        stats.train_loss, stats.client_metrics = _weighted_metrics(accepted)
        return ArrayRecord(new_state), MetricRecord({"train_loss": stats.train_loss})

    def _decode_update(self, payload: bytes) -> dict[str, torch.Tensor]:
        return self.uplink.decode(payload, self.update_limits)

    def _fail(self, stats: RoundStats, node: int, reason: str, uplink_bytes: int = 0) -> None:
        """Record a client's failure; one short line on the console (the details are in the row)."""
        stats.failures.append(ClientFailure(node, reason, uplink_bytes))
        partition = self.roster.partition_of.get(node)
        who = f"client {partition}" if partition is not None else f"node {node}"
        logger.warning("round %d: %s failed: %s", stats.round, who, reason[:200])

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
        self.update_limits = _update_limits(self.arch.specs(self.structure), self.max_abs_value)
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


def _update_limits(specs: Iterable[TensorSpec], max_abs_value: float) -> DecodeLimits:
    """Updates cover the model's floating-point tensors."""
    return DecodeLimits.for_specs([s for s in specs if s.dtype.is_floating_point], max_abs=max_abs_value)


def _weighted_metrics(accepted: list[Accepted]) -> tuple[float, dict[str, float]]:
    """Example-weighted mean of every numeric client metric (loss included)."""
    total = sum(a.weight for a in accepted)
    sums: dict[str, float] = {}
    for a in accepted:
        for key, value in a.metrics.items():
            sums[key] = sums.get(key, 0.0) + a.weight * value / total
    return sums.get("train_loss", float("nan")), sums
