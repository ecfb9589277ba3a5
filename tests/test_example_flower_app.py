"""Flower apps run as their users run them: ``flwr run .`` on a local simulation SuperLink, offline.

Two apps: examples/flower_app (a Flower app of a user's, with fedcomp's mod
and wrapper added), and fedcomp's own app (this repository's
``[tool.flwr.app]``: the ClientApp and the deployment ServerApp, an
experiment config named in the run config), on Flower's supported runtime.

The SuperLink is the one ``flwr run`` would start itself for the ``:local:``
address (simulation mode, subprocess isolation); the test starts it in its
own process group on free ports and stops it afterwards, so nothing is left
running. Two runs of the same app: the plain Flower app (no fedcomp in the
path) and fedcomp with the identity codec both ways (compressed codecs go
through the same mod and wrapper in test_flower_building_blocks.py and the
simulation tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
import torch

from fedcomp.config import config_from_dict
from fedcomp.models import initial_model
from fedcomp.servers.recorder import read_rounds
from tests.conftest import small_config
from tests.processes import free_port, process_group, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "flower_app"
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


def flwr_run_app(app: Path, env, settings: str) -> str:
    """``flwr run . --stream`` in ``app`` against the local SuperLink; its output, after checking it succeeded."""
    done = subprocess.run(
        [str(BIN / "flwr"), "run", ".", "--stream", "--run-config", settings],
        cwd=app,
        env=env,
        capture_output=True,
        timeout=300,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, output[-3000:]
    return output


def flwr_run(env, out: Path, **run_config) -> dict:
    """examples/flower_app for ``num-server-rounds`` 2; its result file (the model and fedcomp's rows)."""
    settings = " ".join(
        f"{k}={v}" for k, v in {"num-server-rounds": 2, "result-file": f'"{out}"', **run_config}.items()
    )
    output = flwr_run_app(APP, env, settings)
    assert out.exists(), output[-3000:]
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


def test_fedcomps_own_app_runs_with_flwr_run_on_a_local_simulation(local_superlink, tmp_path):
    env, _ = local_superlink
    cfg = small_config(tmp_path, federation={"num_clients": 2, "rounds": 2}, client={"local_steps": 5})
    cfg["uplink"] = {"name": "surp", "density": 0.01}
    cfg["downlink"] = {"name": "surp", "density": 0.01}  # the model's change, both ways compressed
    (tmp_path / "exp.toml").write_text(tomli_w.dumps(cfg))
    run_dir = tmp_path / "run"
    settings = f'config="{tmp_path / "exp.toml"}" run-dir="{run_dir}"'
    flwr_run_app(ROOT, env, settings)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["runtime"]) == ("complete", "deployment"), summary
    rows = read_rounds(run_dir)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(sorted(r["clients"]) == [0, 1] and r["failed_clients"] == 0 for r in rows)
    dense = 4 * sum(v.numel() for v in initial_model(config_from_dict(cfg), (1, 28, 28), 10).state_dict().values())
    assert all(0 < b < 0.05 * dense for r in rows for b in r["uplink_bytes_per_client"])  # SuRP at 1%
    # The clients built the round-0 model from the seed: round 1 sends no model, round 2 one step of it.
    sent = [r["downlink_bytes_sent_per_client"] for r in rows]
    assert all(0 < b < 0.05 * dense for per_round in sent for b in per_round) and max(sent[0]) < max(sent[1])
    assert all(
        sorted(r["downlink_bytes_received_per_client"]) == sorted(r["downlink_bytes_sent_per_client"]) for r in rows
    )
