"""examples/flower_app, run as its users run it: ``flwr run .`` on a local simulation SuperLink, offline.

The SuperLink is the one ``flwr run`` would start itself for the ``:local:``
address (simulation mode, subprocess isolation); the test starts it in its
own process group on free ports and stops it afterwards, so nothing is left
running. Two runs of the same app: the plain Flower app (no fedcomp in the
path) and fedcomp with the identity codec both ways (compressed codecs go
through the same mod and wrapper in test_flower_building_blocks.py and the
simulation tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.processes import free_port, process_group, wait_for_port

APP = Path(__file__).resolve().parents[1] / "examples" / "flower_app"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def local_superlink(tmp_path_factory):
    home = tmp_path_factory.mktemp("flwr-home")
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\noptions.num-supernodes = 2\n'
    )
    http, control = free_port(), free_port()
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # fedcomp and torch are installed; no internet
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with process_group(env, logs=home) as start:
        link = start(
            [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
             "--control-api-address", f"127.0.0.1:{control}", "--host", "127.0.0.1", "--port", str(http)],
            "superlink.log",
        )  # fmt: skip
        wait_for_port(http, link)  # 1.42 serves the Control API on this port too; `flwr run` probes its /health
        yield env, home


def flwr_run(env, out: Path, **run_config) -> dict:
    settings = " ".join(
        f"{k}={v}" for k, v in {"num-server-rounds": 2, "result-file": f'"{out}"', **run_config}.items()
    )
    done = subprocess.run(
        [str(BIN / "flwr"), "run", ".", "--stream", "--run-config", settings],
        cwd=APP,
        env=env,
        capture_output=True,
        timeout=300,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0 and out.exists(), output[-3000:]
    return torch.load(out, weights_only=True)


def test_the_example_app_runs_with_flwr_run_and_fedcomp_changes_only_the_transport(local_superlink, tmp_path):
    env, _ = local_superlink
    plain = flwr_run(env, tmp_path / "plain.pt", compression='"none"')
    identity = flwr_run(env, tmp_path / "identity.pt", compression='"identity"')

    # The wrapper around Flower's FedAdam changes how the model travels, not what FedAdam computes.
    assert plain["rounds"] == []  # no fedcomp in that path: nothing counted
    # (Flower's FedAdam hands back float64 arrays; the wrapper keeps the model's float32, so compare in float32.)
    for name, value in plain["model"].items():
        assert identity["model"][name].dtype == torch.float32
        assert torch.allclose(value.float(), identity["model"][name], atol=1e-6, rtol=1e-5), name
    dense = sum(v.numel() * 4 for v in plain["model"].values())
    for r in identity["rounds"]:
        assert r["failures"] == 0 and 2 * dense < r["uplink_bytes"] < 2 * dense * 1.05
    assert [r["round"] for r in identity["rounds"]] == [1, 2]
