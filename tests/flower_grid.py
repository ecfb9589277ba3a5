"""Flower's own in-memory grid, set up as its simulation sets it up, without Ray: for tests that need a grid.

Strategies ask a grid which nodes are connected; the stop request and the seeded sampler wait on it.
Building messages and pushing them also needs Flower's task identity: use the ``task_identity``
fixture (tests/conftest.py), whose run id this federation's run has.
"""

from __future__ import annotations

import threading

from flwr.proto.task_pb2 import Task  # pylint: disable=no-name-in-module
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

RUN_ID = 1  # the task_identity fixture's


class InMemoryFederation:
    """Flower's in-memory link state with one run and ``nodes`` registered nodes; ``grid`` is its InMemoryGrid."""

    def __init__(self, nodes: int) -> None:
        self.factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
        self.node_ids = list(_register_nodes(nodes, self.factory))
        run = Run.create_empty(run_id=RUN_ID)
        run.primary_task_id, run.federation_id = 9, NOOP_FEDERATION_ID
        state = self.factory.state()
        state.run_ids[RUN_ID] = RunRecord(run=run)
        state.task_store[9] = Task(task_id=9, run_id=RUN_ID)
        self.grid = InMemoryGrid(state_factory=self.factory)
        self.grid.set_run(run)

    def add_node_after(self, seconds: float) -> threading.Timer:
        """One more node joins after ``seconds``."""
        timer = threading.Timer(seconds, lambda: self.node_ids.extend(_register_nodes(1, self.factory)))
        timer.start()
        return timer
