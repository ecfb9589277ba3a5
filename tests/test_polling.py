"""fedcomp.polling: Flower's simulation loops, with their waits shortened and nothing else changed."""

from __future__ import annotations

import queue

import pytest
from flwr.server.superlink.fleet.vce import vce_api

import fedcomp
from fedcomp.polling import PROMPT_WAIT_S, PromptQueue, node_polling
from tests.conftest import small_config


def test_a_runs_simulation_workers_wait_one_poll_interval_not_a_second_for_the_stop(tmp_path, monkeypatch):
    """Flower's client workers and reply injector wait ``get(timeout=1.0)`` between looks at the stop event, so
    each run ended up to a second after its ServerApp. In a real run every such wait is now PROMPT_WAIT_S and the
    run completes its rounds with every client; outside a run (also after two overlapping ones) Flower's queue is
    back."""
    waits: list[float] = []
    get = queue.Queue.get

    def recording_get(self, block=True, timeout=None):
        if timeout is not None:
            waits.append(timeout)
        return get(self, block, timeout)

    cfg = small_config(tmp_path, model={"name": "mlp"}, client={"local_steps": 2}, federation={"rounds": 2})
    monkeypatch.setattr(queue.Queue, "get", recording_get)
    result = fedcomp.run(cfg, progress=False)
    # The workers' and the injector's 1.0 s waits, cut (the 3 s wait for the ServerApp's context is answered
    # at once: the ServerApp has ended when it begins).
    assert PROMPT_WAIT_S in waits and 1.0 not in waits, sorted(set(waits))
    assert [r["round"] for r in result.rows] == [1, 2] and all(r["failed_clients"] == 0 for r in result.rows)
    assert vce_api.Queue is queue.Queue  # restored after the run

    with node_polling():
        assert vce_api.Queue is PromptQueue
        with node_polling():  # a second run overlapping the first (another thread): its end restores nothing
            pass
        assert vce_api.Queue is PromptQueue
        with pytest.raises(queue.Empty):
            PromptQueue().get(timeout=1.0)
    assert waits[-1] == PROMPT_WAIT_S
    assert vce_api.Queue is queue.Queue
