"""benchmarks/emulated_link.py without root: its skip, the arithmetic it compares, and what it reads back.

The benchmark itself (network namespaces, tc, a deployment) needs root and minutes; these are the parts
that do not: it skips with a reason and exit status 0 where ``ip`` and ``tc`` are missing, it splits the
run's own prediction into the model's parts correctly, it pairs a SuperNode's log lines into per-message
transfer times, and it reads the bytes of an htb class from ``tc -s``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedcomp.network import NetworkModel

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "emulated_link.py"


def load_benchmark():
    if "emulated_link" not in sys.modules:  # its dataclasses look their module up there
        spec = importlib.util.spec_from_file_location("emulated_link", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["emulated_link"] = module
        spec.loader.exec_module(module)
    return sys.modules["emulated_link"]


def test_without_ip_and_tc_it_says_why_and_exits_0_with_a_skipped_json_line(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty folder: no ip, no tc
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("emulated link: skipped: ip and tc not found on PATH")
    assert json.loads(lines[-1]) == {"skipped": "ip and tc not found on PATH (iproute2)"}


def test_the_prediction_is_split_into_the_slowest_clients_transfers_and_compute():
    bench = load_benchmark()
    model = NetworkModel.fixed(uplink_mbps=2.0, downlink_mbps=4.0)
    down, ups, compute = 500_000, {0: 400_000, 1: 20_000}, {0: 1.5, 1: 9.0}
    times = {p: model.client_time(p, down, ups[p], compute[p]) for p in (0, 1)}
    row = {
        "clients": [1, 0],  # the row's order, not the partitions'
        "downlink_wire_bytes_sent_per_client": [down, down - 8],  # node order; the largest is taken
        "uplink_wire_bytes_per_client": [ups[1], ups[0]],
        "sim_client_s": {str(p): t.total_s for p, t in times.items()},
        "sim_round_s": model.round_duration(times.values()),
    }
    parts = bench.slowest_client(row, model)
    assert parts["client"] == 1  # 1 s down + 9 s compute + 0.08 s up beats 1 + 1.5 + 1.6
    assert parts["predicted_s"] == pytest.approx(1.0 + 9.0 + 0.08)
    assert parts["down_s"] == pytest.approx(1.0)
    assert parts["up_s"] == pytest.approx(0.08)
    assert parts["compute_s"] == pytest.approx(9.0)
    # With the runtime's overhead in the model (network.overhead_s), the prediction includes it and the
    # compute left over is still the client's own.
    slow = NetworkModel.fixed(uplink_mbps=2.0, downlink_mbps=4.0, overhead_s=4.0)
    times = {p: slow.client_time(p, down, ups[p], compute[p]) for p in (0, 1)}
    row |= {
        "sim_client_s": {str(p): t.total_s for p, t in times.items()},
        "sim_round_s": slow.round_duration(times.values()),
    }
    parts = bench.slowest_client(row, slow)
    assert parts["predicted_s"] == pytest.approx(1.0 + 9.0 + 4.0 + 0.08)
    assert parts["compute_s"] == pytest.approx(9.0)


def test_a_supernodes_log_lines_become_per_message_transfer_times():
    bench = load_benchmark()
    lines = [
        (0.0, "INFO :      [RUN 7]\n"),
        (0.1, "INFO :      Receiving: query message (ID: a)\n"),  # fedcomp's warm-up, no round
        (0.2, "INFO :      Received successfully\n"),
        (1.0, "INFO :      [RUN 7]\n"),
        (1.1, "INFO :      Sending: query message (ID: b)\n"),
        (1.2, "INFO :      Sent successfully\n"),
        (2.0, "INFO :      [RUN 6, ROUND 1]\n"),  # another run's message: not counted
        (2.0, "INFO :      Receiving: train message (ID: x)\n"),
        (3.0, "INFO :      [RUN 7, ROUND 1]\n"),
        (3.0, "INFO :      Receiving: train message (ID: c)\n"),
        (4.5, "INFO :      Received successfully\n"),
        (5.0, "some ClientApp output in between\n"),
        (7.0, "INFO :      [RUN 7, ROUND 1]\n"),
        (7.0, "INFO :      Sending: train message (ID: d)\n"),
        (9.5, "INFO :      Sent successfully\n"),
    ]
    events = bench.node_events(lines, run_id=7)
    assert events["train"] == [{"recv_start": 3.0, "recv_end": 4.5, "send_start": 7.0, "send_end": 9.5}]
    assert events["query"] == [{"recv_start": 0.1, "recv_end": 0.2, "send_start": 1.1, "send_end": 1.2}]
    assert sorted(events) == ["query", "train"]


def test_an_htb_class_s_bytes_are_read_from_tc_s():
    bench = load_benchmark()
    out = (
        "class htb 1:10 root leaf 10: prio 0 rate 8Mbit ceil 8Mbit burst 1600b cburst 1600b \n"
        " Sent 1722841 bytes 1190 pkt (dropped 3, overlimits 120 requeues 0) \n"
        " backlog 0b 0p requeues 0\n"
        "class htb 1:20 root prio 0 rate 1Mbit ceil 1Mbit burst 1600b cburst 1600b \n"
        " Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) \n"
    )
    assert bench.class_bytes(out) == {"1:10": 1722841, "1:20": 0}
