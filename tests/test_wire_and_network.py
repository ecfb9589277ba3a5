"""Wire bytes beside payload bytes, the settings sent once, late replies, and the network model.

The messages are real Flower messages built by the wrapper and answered by the mod in this process;
:class:`LocalGrid` stands in for the network (it hands each message to its node, and can hold a reply back
past the round, as a slow link does). Every message goes through :class:`~fedcomp.flower.wire.WireGrid`, as
in fedcomp's server. One real federation (in-process engine) checks the rows a run writes.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp.strategy import FedAvg

import fedcomp
from fedcomp.config import ConfigError, config_from_dict
from fedcomp.flower import CompressedStrategy, CompressionMod
from fedcomp.flower.settings import CACHED_KEY
from fedcomp.flower.transport import TRANSPORT_KEY
from fedcomp.messages import EXPERIMENT_KEY, payload_from
from fedcomp.network import Link, NetworkModel, read_trace
from fedcomp.preflight import check_network
from tests.test_flower_building_blocks import ARCH, NODES, contexts, initial_state, local_train

pytestmark = pytest.mark.usefixtures("task_identity")

EXPERIMENT = json.dumps({"name": "x" * 40, "federation": {"num_clients": len(NODES)}, "padding": "y" * 1000})


class LocalGrid:
    """Hands each message to its node's mod and train function in this process; replies of ``late`` nodes come
    only on a later ``pull_messages`` (after their round, as over a slow link); a raised error is an error reply."""

    def __init__(self, ctxs, train=local_train, late=()):
        self.ctxs, self.train, self.late = ctxs, train, set(late)
        self.mod = CompressionMod()
        self.held: list[Message] = []
        self.count = 0

    def get_node_ids(self):
        return list(NODES)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for m in messages:
            self.count += 1
            m.metadata.__dict__["_message_id"] = f"message-{self.count}"  # as Flower's grid stamps it on push
            node = int(m.metadata.dst_node_id)
            try:
                # The node gets what the wire carries: the message serialized and parsed back.
                reply = self.mod(message_from_proto(message_to_proto(m)), self.ctxs[node], self.train)
            except Exception as exc:  # noqa: BLE001 - what Flower's ClientApp runtime does with an exception
                reply = Message(Error(code=0, reason=str(exc)), reply_to=m)
            (self.held if node in self.late else replies).append(reply)
        return replies

    def pull_messages(self, ids):
        ids = set(ids)
        out = [r for r in self.held if r.metadata.reply_to_message_id in ids]
        self.held = [r for r in self.held if r not in out]
        return out


def train_round(strategy, server_round, state, grid, seen=None):
    """One round through the wire grid: configure → send → aggregate; returns the state, the ledger, the wire."""
    wire = strategy.wired(grid)
    measured = []
    wire.listeners.append(lambda sent, got: measured.append((sent, got)))
    config = ConfigRecord({EXPERIMENT_KEY: EXPERIMENT})
    messages = strategy.configure_train(server_round, ArrayRecord(state), config, wire)
    replies = wire.send_and_receive(messages, timeout=10)
    arrays, _ = strategy.aggregate_train(server_round, replies)
    wire.listeners.pop()
    return OrderedDict(arrays.to_torch_state_dict()), strategy.take_round_stats(), measured[0]


def test_wire_bytes_are_flowers_own_serialization_and_hold_the_payload_both_ways():
    strategy = CompressedStrategy(FedAvg(), arch=ARCH, uplink="surp", num_partitions=len(NODES))
    _, stats, (sent, got) = train_round(strategy, 1, initial_state(), LocalGrid(contexts()))
    assert len(sent) == len(got) == len(NODES) and not stats.failures
    for m, n in sent + got:  # the whole message, as Flower's serde serializes it
        assert n == len(message_to_proto(m).SerializeToString())
    by_node = {int(m.metadata.dst_node_id): n for m, n in sent}
    row = stats.row()
    assert row.downlink_wire_bytes_sent_per_client == [by_node[n] for n in stats.sampled_nodes]
    assert row.downlink_wire_bytes == sum(by_node.values())
    assert all(
        p < w for p, w in zip(row.downlink_bytes_sent_per_client, row.downlink_wire_bytes_sent_per_client, strict=True)
    )
    replies = {int(r.metadata.src_node_id): (n, len(payload_from(r.content))) for r, n in got}
    clients_nodes = [NODES[p] for p in row.clients]
    assert row.uplink_wire_bytes_per_client == [replies[n][0] for n in clients_nodes]
    assert row.uplink_bytes_per_client == [replies[n][1] for n in clients_nodes]
    assert all(p < w for p, w in zip(row.uplink_bytes_per_client, row.uplink_wire_bytes_per_client, strict=True))
    assert row.uplink_wire_bytes == sum(n for n, _ in replies.values())


def test_settings_go_in_full_once_then_by_digest_and_a_node_that_lost_them_gets_them_again():
    seen: list[tuple[str, str]] = []

    def train(msg, context):  # what the train function reads: always the full settings
        config = msg.content["config"]
        seen.append((str(config[EXPERIMENT_KEY]), str(config[TRANSPORT_KEY])))
        return local_train(msg, context)

    strategy = CompressedStrategy(FedAvg(), arch=ARCH, uplink="surp", num_partitions=len(NODES))
    ctxs = contexts()
    grid = LocalGrid(ctxs, train=train)
    state, first, (sent1, _) = train_round(strategy, 1, initial_state(), grid)
    state, second, (sent2, _) = train_round(strategy, 2, state, grid)
    assert not first.failures and not second.failures
    config1 = sent1[0][0].content["config"]
    config2 = sent2[0][0].content["config"]
    assert EXPERIMENT_KEY in config1 and TRANSPORT_KEY in config1 and CACHED_KEY not in config1
    assert EXPERIMENT_KEY not in config2 and TRANSPORT_KEY not in config2 and CACHED_KEY in config2
    full = (EXPERIMENT, strategy.transport.to_json())
    assert seen == [full] * (2 * len(NODES))
    # The per-message overhead fell by the settings' length, less the digests.
    saved = min(n for _, n in sent1) - max(n for _, n in sent2)
    assert saved > len(EXPERIMENT) + len(full[1]) - 150, saved
    # A node whose stored state is lost fails once, naming the miss; its next message carries everything.
    lost = NODES[0]
    ctxs[lost].state = type(ctxs[lost].state)()
    state, third, _ = train_round(strategy, 3, state, grid)
    assert [f.node_id for f in third.failures] == [lost] and "settings digest miss" in third.failures[0].reason
    _, fourth, (sent4, _) = train_round(strategy, 4, state, grid)
    assert not fourth.failures and len(fourth.clients) == len(NODES)
    to_lost = next(m for m, _ in sent4 if int(m.metadata.dst_node_id) == lost)
    assert EXPERIMENT_KEY in to_lost.content["config"]


def test_a_reply_after_the_round_timeout_keeps_its_bytes():
    strategy = CompressedStrategy(FedAvg(), arch=ARCH, uplink="topk", uplink_params={"density": 0.5})
    grid = LocalGrid(contexts(), late=[NODES[1]])
    state, first, _ = train_round(strategy, 1, initial_state(), grid)
    assert [f.reason for f in first.failures] == ["no reply before the round timeout"]
    held = grid.held[0]
    grid.late = set()
    _, second, _ = train_round(strategy, 2, state, grid)
    late = second.row().late_replies
    assert late == [{"round": 1, "node_id": NODES[1], "uplink_bytes": len(payload_from(held.content)),
                     "wire_bytes": len(message_to_proto(held).SerializeToString())}]  # fmt: skip
    row = second.row()
    assert row.late_uplink_bytes == late[0]["uplink_bytes"] > 0
    assert row.uplink_bytes == sum(row.uplink_bytes_per_client) + row.late_uplink_bytes


def test_a_rounds_simulated_duration_is_the_formula_for_two_known_links():
    fast, slow = Link(uplink_mbps=8, downlink_mbps=40, latency_ms=20), Link(uplink_mbps=1, downlink_mbps=4)
    net = NetworkModel(links={0: fast, 1: slow}, compute_s=2.0)
    down, up = 1_000_000, 250_000
    t0, t1 = net.client_time(0, down, up, 99.0), net.client_time(1, down, up, 99.0)
    assert t0.total_s == pytest.approx(0.02 + 8 * down / 40e6 + 2.0 + 0.02 + 8 * up / 8e6)  # 2.27 s
    assert t1.total_s == pytest.approx(8 * down / 4e6 + 2.0 + 8 * up / 1e6)  # 6 s
    assert net.round_duration([t0, t1]) == pytest.approx(6.0)
    assert net.round_duration([t0], no_reply=True, timeout_s=30) == 30  # the server waited for the timeout
    measured = NetworkModel(links={0: fast}).client_time(0, down, up, 1.5)
    assert measured.compute_s == 1.5  # compute_s = 0: the client's own seconds
    deadline = NetworkModel(links={0: fast, 1: slow}, compute_s=2.0, deadline_s=4.0)
    assert [deadline.misses_deadline(t) for t in (t0, t1)] == [False, True]
    assert deadline.round_duration([t0, t1]) == 4.0
    # A runtime's own seconds per client and round (a deployment's polling and process start) add to each t_i.
    runtime = NetworkModel(links={0: fast, 1: slow}, compute_s=2.0, overhead_s=1.5)
    r0, r1 = runtime.client_time(0, down, up, 99.0), runtime.client_time(1, down, up, 99.0)
    assert (r0.total_s - t0.total_s, r1.total_s - t1.total_s) == (pytest.approx(1.5), pytest.approx(1.5))
    assert runtime.round_duration([r0, r1]) == pytest.approx(7.5)
    assert NetworkModel.from_config(config_from_dict({"network": {
        "link": "fixed", "uplink_mbps": 1.0, "downlink_mbps": 4.0, "overhead_s": 1.5}}).network).overhead_s == 1.5  # fmt: skip
    # Link rates of Ethernet frames (framing 1514/1448): every transferred byte costs that much more link time,
    # latency and compute nothing more.
    framed = NetworkModel(links={0: fast, 1: slow}, compute_s=2.0, framing=1514 / 1448)
    f1 = framed.client_time(1, down, up, 99.0)
    assert (f1.down_s, f1.up_s, f1.compute_s) == (
        pytest.approx(8 * down * 1514 / 1448 / 4e6), pytest.approx(8 * up * 1514 / 1448 / 1e6), 2.0)  # fmt: skip
    f0 = framed.client_time(0, down, up, 99.0)
    assert f0.down_s - 0.02 == pytest.approx((t0.down_s - 0.02) * 1514 / 1448)  # the latency is not scaled


def test_a_deadline_drops_the_slow_client_from_the_aggregate():
    slow_partition = 2
    links = {p: Link(uplink_mbps=100, downlink_mbps=100) for p in range(len(NODES))}
    links[slow_partition] = Link(uplink_mbps=0.01, downlink_mbps=0.01)
    network = NetworkModel(links=links, compute_s=0.5, deadline_s=5.0)
    strategy = CompressedStrategy(FedAvg(), arch=ARCH, uplink="identity", num_partitions=len(NODES), network=network)
    start = initial_state()
    state, stats, _ = train_round(strategy, 1, start, LocalGrid(contexts()))
    kept = [p for p in range(len(NODES)) if p != slow_partition]
    assert stats.clients == kept
    assert len(stats.failures) == 1 and stats.failures[0].reason.startswith("missed the deadline")
    assert stats.failures[0].uplink_bytes > 0  # sent all the same: counted
    assert stats.sim_client_s[slow_partition] > 5.0 > max(stats.sim_client_s[p] for p in kept)
    assert stats.sim_round_s == 5.0 and stats.sim_clock_s == 5.0
    # FedAvg of the kept clients' models only (local_train's: its weight is 10·(p+1)).
    trained = {}
    for p in kept:
        content = RecordDict({"arrays": ArrayRecord(start), "config": ConfigRecord({"server-round": 1})})
        msg = Message(content, dst_node_id=NODES[p], message_type="train")
        trained[p] = local_train(msg, contexts()[NODES[p]]).content["arrays"].to_torch_state_dict()
    weights = {p: 10.0 * (p + 1) for p in kept}
    for name, value in start.items():
        if value.is_floating_point():
            mean = sum(weights[p] * trained[p][name] for p in kept) / sum(weights.values())
            assert torch.allclose(state[name], mean, atol=1e-5), name


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"link": "fixed", "uplink_mbps": 5.0}, "network.downlink_mbps"),
        ({"link": "profile", "profile": ["lte", "5g"]}, "network.profile[1]"),
        ({"link": "profile"}, "network.profile"),
        ({"link": "off", "deadline_s": 3.0}, "network.deadline_s"),
        ({"link": "off", "overhead_s": 2.0}, "network.overhead_s"),
        ({"link": "off", "framing": 1.05}, "network.framing"),
        ({"link": "fixed", "uplink_mbps": 1.0, "downlink_mbps": 1.0, "framing": 0.5}, "network.framing"),
        ({"link": "fixed", "uplink_mbps": 1.0, "downlink_mbps": 1.0, "overhead_s": -1.0}, "network.overhead_s"),
        ({"link": "trace"}, "network.trace"),
        ({"link": "fixed", "uplink_mbps": 1.0, "downlink_mbps": 1.0, "latency_ms": -1.0}, "network.latency_ms"),
    ],
)
def test_a_bad_network_section_is_a_config_error_naming_the_key(section, key):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        config_from_dict({"network": section})


def test_a_bad_trace_is_refused_naming_the_file_and_line_before_the_run(tmp_path):
    trace = tmp_path / "links.csv"
    trace.write_text("client,uplink_mbps,downlink_mbps,latency_ms,compute_s\n0,1.5,10,40,\n1,2,20,30,0.5\n")
    links = read_trace(trace)
    assert links[0] == Link(1.5, 10.0, 40.0) and links[1].compute_s == 0.5
    cfg = config_from_dict({"federation": {"num_clients": 3}, "network": {"link": "trace", "trace": str(trace)}})
    with pytest.raises(ConfigError, match=r"'network.trace'.*no row for client\(s\) 2 of 3"):
        check_network(cfg)
    trace.write_text("client,uplink_mbps,downlink_mbps,latency_ms\n0,1,1,1\n1,fast,1,1\n")
    with pytest.raises(ConfigError, match=r"links.csv line 3: could not convert"):
        read_trace(trace)
    trace.write_text("client,uplink_mbps,latency_ms\n0,1,1\n")
    with pytest.raises(ConfigError, match=r"lacks the column\(s\) \['downlink_mbps'\]"):
        read_trace(trace)
    with pytest.raises(ConfigError, match=r"'network.trace'.*cannot read it"):
        read_trace(tmp_path / "absent.csv")


def test_a_run_records_wire_bytes_and_a_simulated_clock(make_config):
    """fedcomp's own apps end to end (in-process engine): the warm-up sends the experiment once, rows carry wire
    bytes beside payload bytes and the simulated clock, the summary their totals."""
    cfg = make_config(
        uplink={"name": "surp", "density": 0.01},
        network={"link": "profile", "profile": ["3g", "broadband"]},
        federation={"rounds": 2},
        client={"local_steps": 2},
    )
    result = fedcomp.run(cfg, progress=False)
    rows, experiment = result.rows, json.dumps(config_from_dict(cfg).to_dict())
    clock = 0.0
    for row in rows:
        assert len(row["clients"]) == 3 and row["failed_clients"] == 0
        assert all(
            p < w for p, w in zip(row["uplink_bytes_per_client"], row["uplink_wire_bytes_per_client"], strict=True)
        )
        sent = zip(row["downlink_bytes_sent_per_client"], row["downlink_wire_bytes_sent_per_client"], strict=True)
        assert all(p < w for p, w in sent)
        assert row["sim_round_s"] == pytest.approx(max(row["sim_client_s"].values()))
        clock += row["sim_round_s"]
        assert row["sim_clock_s"] == pytest.approx(clock)
    # The experiment went out whole at warm-up: every train message carries digests only.
    overhead = [w - p for row in rows for p, w in
                zip(row["downlink_bytes_sent_per_client"], row["downlink_wire_bytes_sent_per_client"], strict=True)]  # fmt: skip
    assert max(overhead) < 1000 < len(experiment)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["uplink_wire_bytes"] == sum(r["uplink_wire_bytes"] for r in rows)
    assert summary["downlink_wire_bytes"] == sum(r["downlink_wire_bytes"] for r in rows)
    assert summary["sim_clock_s"] == pytest.approx(clock)
    assert summary["warmup_wire_bytes"]["downlink"] > 3 * len(experiment)


def test_the_network_example_runs_as_written_and_compression_shortens_the_simulated_round(tmp_path):
    """examples/network_time.py, as a user runs it (its own process), with its clients in-process."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "network_time.py"
    done = subprocess.run(
        [sys.executable, str(example), "--rounds", "2", "--output-dir", str(tmp_path / "runs"),
         "--backend", "in-process"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    lines = [x for x in done.stdout.splitlines() if " s simulated" in x]
    assert [x.split(":")[0] for x in lines] == ["dense", "SuRP 1%"]
    clocks = []
    for line in lines:
        run_dir = Path(line.rsplit("run ", 1)[1])
        rows = [json.loads(r) for r in (run_dir / "rounds.jsonl").read_text().splitlines()]
        assert f"{rows[-1]['sim_clock_s']:.1f} s simulated" in line  # what it prints is the run's own clock
        clocks.append(rows[-1]["sim_clock_s"])
    assert clocks[1] < clocks[0]  # SuRP's smaller uplink makes the slowest client's round shorter
