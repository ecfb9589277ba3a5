"""A simulation attached to an existing Ray cluster (``ray start --head``) on loopback."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import fedcomp
from fedcomp.config import config_from_dict
from fedcomp.simulation import backend_config
from tests.conftest import small_config
from tests.processes import free_port, process_group

RAY = str(Path(sys.executable).with_name("ray"))


def test_a_simulation_attaches_to_a_running_ray_cluster(tmp_path):
    port = free_port()
    temp_dir = Path("/tmp") / f"fc-ray-{os.getpid()}-{port}"  # short: Ray's socket paths have a length limit
    try:
        with process_group() as start:
            head = start([RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                          "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"])  # fmt: skip
            deadline = time.monotonic() + 120
            while not list(temp_dir.glob("session_*/logs/raylet.out")):
                assert head.poll() is None, "ray start --head exited"
                assert time.monotonic() < deadline, "the Ray head did not come up"
                time.sleep(0.2)
            cfg = small_config(tmp_path, simulation={"ray_address": f"127.0.0.1:{port}"})
            result = fedcomp.run(cfg, progress=False)
            assert [r["round"] for r in result.rows] == [1, 2] and result.rows[-1]["test_accuracy"] > 0.5
            # The driver (this process) joined the head's session instead of starting a cluster of its own.
            drivers = list(temp_dir.glob(f"session_*/logs/python-core-driver-*_{os.getpid()}.log"))
            assert drivers, "no driver log of this process in the head's session"
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_client_resources_follow_the_config():
    cfg = config_from_dict({"simulation": {"num_cpus": 2.0, "num_gpus": 0.25, "ray_address": "10.0.0.1:6379"}})
    backend = backend_config(cfg)
    assert backend["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.25}
    assert backend["init_args"]["address"] == "10.0.0.1:6379" and "num_cpus" not in backend["init_args"]
    local = backend_config(config_from_dict({}))["init_args"]
    assert local["address"] == "local" and local["num_cpus"] >= 1  # never joins a cluster left running here
