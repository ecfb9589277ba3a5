"""Flower's deployment runtime on loopback: a SuperLink, two SuperNodes, `flwr run`, SuRP uplink.

Insecure mode (no TLS) is fine on loopback; every process this test starts
is in its own process group and stopped by PID afterwards, and the whole
run is bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedcomp.clients.training import float_state
from fedcomp.compressors.update.identity import IdentityCompressor
from fedcomp.config import load_config
from fedcomp.data import load_dataset
from fedcomp.servers.app import initial_model
from fedcomp.servers.recorder import read_rounds
from tests.processes import free_port, process_group, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def deployment(tmp_path):
    """A SuperLink and two SuperNodes on loopback; yields (env, connection name)."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    link_port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # fedcomp is installed already; no internet
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with process_group(env, logs=tmp_path) as start:
        link = start([str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link_port)],
                     "superlink.log")  # fmt: skip
        wait_for_port(link_port, link)
        for i in range(2):
            node_config = f"partition-id={i} num-partitions=2 state-dir='{tmp_path / f'node{i}-state'}'"
            start(
                [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                 "--port", str(free_port()), "--node-config", node_config],
                f"supernode{i}.log",
            )  # fmt: skip
        yield env, "loopback"


def test_superlink_and_two_supernodes_run_two_rounds_with_surp(deployment, tmp_path):
    env, connection = deployment
    run_dir = tmp_path / "run"
    run_config = f'config="{ROOT / "simulations" / "deploy.toml"}" run-dir="{run_dir}"'
    done = subprocess.run(
        [str(BIN / "flwr"), "run", ".", connection, "--stream", "--run-config", run_config],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=400,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["runtime"] == "deployment", summary
    rows = read_rounds(run_dir)
    assert [r["round"] for r in rows] == [1, 2]
    cfg = load_config(run_dir / "config.toml")
    assert cfg.uplink.name == "surp"
    split = load_dataset(cfg.data.dataset, test_size=cfg.data.test_size, seed=cfg.seed)
    model = initial_model(cfg, split.input_shape, split.num_classes)
    dense = len(IdentityCompressor().encode(float_state(model)).payload)
    downlink = len(IdentityCompressor().encode(model.state_dict()).payload)
    for r in rows:
        assert r["clients"] == [0, 1] and r["failed_clients"] == 0
        # What the server received is what each device measured before sending, and it is SuRP-sized.
        assert r["uplink_bytes_per_client"] == r["uplink_bytes_sent_per_client"]
        assert all(0 < b < dense / 20 for b in r["uplink_bytes_per_client"])
        assert r["downlink_bytes"] == 2 * downlink
    assert rows[-1]["test_accuracy"] > 0.5
    # Each device kept its compressor state (SuRP's error feedback) in its own state-dir.
    for i in range(2):
        assert sorted(p.name for p in (tmp_path / f"node{i}-state" / str(i)).iterdir()) == ["round-1.pt", "round-2.pt"]
