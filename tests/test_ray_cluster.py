"""A simulation attached to an existing Ray cluster (``ray start --head``) on loopback."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import tomli_w

from fedcomp.config import config_from_dict
from fedcomp.simulation import backend_config
from tests.conftest import small_config
from tests.processes import free_port, process_group

RAY = str(Path(sys.executable).with_name("ray"))


@contextlib.contextmanager
def ray_head(env: dict[str, str] | None = None) -> Iterator[tuple[int, Path]]:
    """``ray start --head`` on loopback, up and running; yields its port and temp dir, stops and removes it after."""
    port = free_port()
    temp_dir = Path("/tmp") / f"fc-ray-{os.getpid()}-{port}"  # short: Ray's socket paths have a length limit
    try:
        with process_group(env) as start:
            head = start([RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                          "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"])  # fmt: skip
            deadline = time.monotonic() + 120
            while not list(temp_dir.glob("session_*/logs/raylet.out")):
                assert head.poll() is None, "ray start --head exited"
                assert time.monotonic() < deadline, "the Ray head did not come up"
                time.sleep(0.2)
            yield port, temp_dir
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_client_resources_follow_the_config():
    cfg = config_from_dict({"simulation": {"num_cpus": 2.0, "num_gpus": 0.25, "ray_address": "10.0.0.1:6379"}})
    backend = backend_config(cfg)
    assert backend["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.25}
    assert backend["init_args"]["address"] == "10.0.0.1:6379" and "num_cpus" not in backend["init_args"]
    local = backend_config(config_from_dict({}))["init_args"]
    assert local["address"] == "local" and local["num_cpus"] >= 1  # never joins a cluster left running here


def test_fedcomp_attaches_to_a_running_ray_cluster_with_the_documented_token_authentication(tmp_path):
    """docs/deployment.md's cluster commands with RAY_AUTH_MODE=token, on loopback: ``fedcomp run`` with
    ``simulation.ray_address`` joins that cluster's session (no cluster of its own) and trains; a driver
    without the token is refused. One head for both claims: each ``ray start`` costs half a minute."""
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    plain = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    with ray_head({**plain, **token}) as (port, temp_dir):
        (tmp_path / "exp.toml").write_text(tomli_w.dumps(small_config(tmp_path, simulation={"backend": "ray"})))
        ours = subprocess.Popen(
            [str(Path(sys.executable).with_name("fedcomp")), "run", str(tmp_path / "exp.toml"), "--no-progress",
             "--set", f'simulation.ray_address="127.0.0.1:{port}"'],
            env={**plain, **token}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        stdout, stderr = ours.communicate(timeout=300)
        assert ours.returncode == 0, (stdout + stderr)[-3000:]
        assert "test acc" in stdout  # its rounds table
        rows = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
        assert [int(r[0]) for r in rows] == [1, 2]
        # The driver (that process) joined the head's session instead of starting a cluster of its own.
        drivers = list(temp_dir.glob(f"session_*/logs/python-core-driver-*_{ours.pid}.log"))
        assert drivers, "no driver log of fedcomp's process in the head's session"
        stranger = subprocess.run(
            [sys.executable, "-c", f"import ray; ray.init(address='127.0.0.1:{port}', logging_level='ERROR')"],
            env=plain, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert stranger.returncode != 0
        assert "Authentication token is missing or incorrect" in stranger.stderr
