"""Waiting on nodes and replies, on Flower's own in-memory grid (the one its simulation runs on, without Ray).

The seeded sampler's wait for nodes (all of them, a partial set past the wait, too few), and the stop
request (Ctrl-C) ending the server's wait for replies and for nodes. The whole path, a real ``fedcomp
run`` stopped by SIGINT, is in ``test_resume_and_faults.py``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import pytest
from flwr.app import Message, RecordDict

from fedcomp.errors import RunInterruptedError
from fedcomp.servers.stopping import StoppableGrid, ctrl_c_stops
from fedcomp.strategies.sampling import NotEnoughClientsError, SeededSampler
from tests.flower_grid import InMemoryFederation

pytestmark = pytest.mark.usefixtures("task_identity")  # pushing messages needs Flower's task identity


def test_the_sampler_waits_for_every_node_to_join():
    fed = InMemoryFederation(2)
    joined = fed.add_node_after(0.3)
    sampler = SeededSampler(num_clients=3, fraction=1.0, min_nodes=2, node_wait_s=30.0)
    t0 = time.monotonic()
    assert sampler(fed.grid, 1) == sorted(fed.node_ids) and len(fed.node_ids) == 3
    assert 0.25 < time.monotonic() - t0 < 10  # it waited for the third node, not for the whole wait
    joined.join()


def test_past_the_wait_the_sampler_samples_the_nodes_that_joined(caplog):
    fed = InMemoryFederation(2)
    sampler = SeededSampler(num_clients=3, fraction=1.0, min_nodes=2, node_wait_s=0.2)
    with caplog.at_level(logging.WARNING, logger="fedcomp.strategies.sampling"):
        assert sampler(fed.grid, 1) == sorted(fed.node_ids)
    assert "only 2 of 3 nodes connected" in caplog.text


def test_fewer_nodes_than_a_round_needs_is_a_named_error():
    fed = InMemoryFederation(2)
    sampler = SeededSampler(num_clients=3, fraction=1.0, min_nodes=3, node_wait_s=0.2)
    with pytest.raises(NotEnoughClientsError, match=r"2 nodes connected .* need at least 3"):
        sampler(fed.grid, 1)


def test_a_stop_request_ends_the_wait_for_replies_at_once():
    fed = InMemoryFederation(2)
    stop = threading.Event()
    grid = StoppableGrid(fed.grid, stop)
    messages = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in fed.node_ids]
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(RunInterruptedError, match="Ctrl-C"):
        grid.send_and_receive(messages, timeout=60.0)  # nobody answers: without the stop, a minute
    assert time.monotonic() - t0 < 5
    with pytest.raises(RunInterruptedError):
        SeededSampler(num_clients=3, node_wait_s=60.0)(grid, 2)  # nor does it wait for nodes any more


def test_without_a_stop_the_wait_for_replies_ends_at_the_timeout_with_what_came():
    fed = InMemoryFederation(1)
    grid = StoppableGrid(fed.grid, threading.Event())
    t0 = time.monotonic()
    replies = grid.send_and_receive(
        [Message(RecordDict(), dst_node_id=fed.node_ids[0], message_type="train")], timeout=0.5
    )
    assert replies == [] and 0.45 < time.monotonic() - t0 < 10
    assert sorted(grid.get_node_ids()) == sorted(fed.node_ids)  # the rest is Flower's grid


def test_the_first_ctrl_c_asks_the_second_forces():
    stop = threading.Event()
    # As in a terminal, whatever this test process inherited (a shell's background job ignores SIGINT).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with ctrl_c_stops(stop):
            signal.raise_signal(signal.SIGINT)
            assert stop.is_set()  # a request, no exception: the server thread ends the run
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_an_ignored_sigint_stays_ignored():
    stop = threading.Event()
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ctrl_c_stops(stop):
            signal.raise_signal(signal.SIGINT)
        assert not stop.is_set()
    finally:
        signal.signal(signal.SIGINT, before)


def test_poll_s_sets_how_often_replies_are_looked_for_whatever_the_grids_own_interval():
    """fedcomp's loop looks every ``poll_s``; here against an in-memory grid slowed to the 3 s that Flower's
    deployment grid (HttpGrid) sleeps in its own send_and_receive."""
    fed = InMemoryFederation(1)
    fed.grid.pull_interval = 3.0
    message = Message(RecordDict(), dst_node_id=fed.node_ids[0], message_type="train")
    t0 = time.monotonic()
    assert StoppableGrid(fed.grid, threading.Event(), poll_s=0.05).send_and_receive([message], timeout=0.3) == []
    assert time.monotonic() - t0 < 2.5  # polling at the grid's 3 s, the first wait alone overshoots to 3 s


def test_the_deployed_server_app_polls_every_reply_poll_s_unless_its_grid_has_its_own_interval():
    from flwr.superlink.grid.http_grid import HttpGrid  # the deployment runtime's grid (not connected here)

    from fedcomp.servers.deploy import REPLY_POLL_S, replies_polled

    deployed = replies_polled(HttpGrid("127.0.0.1:1", insecure=True, token="t"))
    assert isinstance(deployed, StoppableGrid) and deployed._poll_s == REPLY_POLL_S == 0.2
    in_memory = InMemoryFederation(1).grid  # what a simulation-mode SuperLink hands the same app
    assert replies_polled(in_memory)._poll_s == in_memory.pull_interval
    with pytest.raises(ValueError, match="poll_s must be > 0"):
        StoppableGrid(in_memory, threading.Event(), poll_s=0)
