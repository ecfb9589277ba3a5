"""fedcomp's client sampling: seeded, over partitions, after every node is there.

Flower's strategies sample with Python's global ``random`` over node ids,
which are random per run; a seeded run must choose the same clients every
time. :class:`SeededSampler` orders the nodes by the partition each holds
(learnt at warm-up) and draws positions with the run's seed, so the seed
fixes who trains in every round. The inner strategy then sees only the
sampled nodes (``CompressedStrategy(sampler=...)``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from flwr.serverapp import Grid

from fedcomp.seeding import CLIENT_SAMPLING, numpy_rng
from fedcomp.strategies.replies import Roster

logger = logging.getLogger(__name__)


class NotEnoughClientsError(RuntimeError):
    """Fewer nodes connected than the round needs, within the wait limit."""


@dataclass
class SeededSampler:
    """Sample ``fraction`` of the nodes (at least ``min_nodes``), seeded per round."""

    num_clients: int
    fraction: float = 1.0
    min_nodes: int = 2
    seed: int = 0
    node_wait_s: float = 120.0
    roster: Roster = field(default_factory=Roster)

    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """All connected node ids, once every client is there (or the wait runs out)."""
        deadline = time.monotonic() + self.node_wait_s
        while len(nodes := sorted(grid.get_node_ids())) < self.num_clients:
            if time.monotonic() > deadline:
                if len(nodes) >= self.min_nodes:
                    logger.warning("only %d of %d nodes connected; sampling from those", len(nodes), self.num_clients)
                    break
                raise NotEnoughClientsError(
                    f"{len(nodes)} nodes connected after {self.node_wait_s:.0f} s; "
                    f"need at least {self.min_nodes} (federation.min_train_clients)"
                )
            time.sleep(0.1)
        return nodes

    def __call__(self, grid: Grid, server_round: int) -> list[int]:
        nodes = self.wait_for_nodes(grid)
        # Node ids are random per run; order them by the partition they hold so the seed fixes who trains.
        nodes = sorted(nodes, key=lambda n: (self.roster.partition_of.get(n, 1 << 62), n))
        size = min(len(nodes), max(int(len(nodes) * self.fraction), self.min_nodes))
        rng = numpy_rng(self.seed, CLIENT_SAMPLING, server_round)
        # Choose positions, not ids: node ids are uint64 and numpy would turn them into floats.
        return sorted(nodes[int(i)] for i in rng.choice(len(nodes), size=size, replace=False))
