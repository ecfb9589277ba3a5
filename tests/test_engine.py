"""One engine for several runs (``fedcomp.shared_engine``): the same worker processes, the same results.

The suite runs inside one shared engine per test process (``conftest.one_engine_per_test_process``);
here ``fresh_engine`` makes the first run start its own, as a run outside the block does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

import fedcomp
from fedcomp.clients.training import train_local
from fedcomp.engine import release
from tests.conftest import small_config


def train_reporting_pid(model, data, config, *, device, generator, loss_term, loss, server_round) -> dict:
    """fedcomp's own training, plus the id of the worker process that ran it (a metric in the row)."""
    stats = train_local(model, data, config, generator, device, loss_term=loss_term, loss=loss)
    return {"train_loss": stats.loss, "local_steps": stats.steps, "worker_pid": os.getpid()}


KEYS = ("clients", "train_loss", "test_accuracy", "uplink_bytes", "downlink_bytes")


@pytest.fixture
def make_config(tmp_path):
    """This file is about Ray's engine: its federations run on Ray, not in the test's process."""

    def make(**sections):
        cfg = small_config(tmp_path, **sections)
        cfg["simulation"].update(backend="ray", num_cpus=float(os.cpu_count() or 1))  # one actor
        return cfg

    return make


def test_a_shared_engine_serves_the_next_run_with_the_same_workers_and_the_same_results(make_config):
    cfg = make_config(
        federation={"num_clients": 3, "rounds": 2}, client={"local_steps": 3, "train_fn": train_reporting_pid}
    )
    first = fedcomp.run(cfg, progress=False).rows
    assert ray.is_initialized()  # kept for the next run, not shut down
    again = fedcomp.run(cfg, progress=False).rows
    pid = round(first[0]["client_metrics"]["worker_pid"])
    assert pid != os.getpid()  # trained in a Ray worker, not in the driver
    assert [round(r["client_metrics"]["worker_pid"]) for r in first + again] == [pid] * 4
    assert [[r[k] for k in KEYS] for r in again] == [[r[k] for k in KEYS] for r in first]

    # The in-process backend: the same federation through the same Flower message path, bit for bit,
    # with the clients in this process (the tests' default: conftest.small_config).
    in_process = fedcomp.run({**cfg, "simulation": {**cfg["simulation"], "backend": "in-process"}}, progress=False)
    assert {round(r["client_metrics"]["worker_pid"]) for r in in_process.rows} == {os.getpid()}
    assert [[r[k] for k in KEYS] for r in in_process.rows] == [[r[k] for k in KEYS] for r in first]
    assert ray.is_initialized()  # it neither used nor shut down the kept engine

    # Other client resources (two actors at once): a new pool of workers, the same federation. Ray gives
    # each actor torch threads by its CPUs, so the losses agree to float rounding, not bit for bit.
    half_cpu = {**cfg, "simulation": {"num_cpus": (os.cpu_count() or 1) / 2}}
    two_actors = fedcomp.run(half_cpu, progress=False).rows
    assert pid not in {round(r["client_metrics"]["worker_pid"]) for r in two_actors}
    for a, b in zip(two_actors, first, strict=True):
        assert (a["clients"], a["uplink_bytes"], a["downlink_bytes"]) == (
            b["clients"],
            b["uplink_bytes"],
            b["downlink_bytes"],
        )
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)

    release()  # the next run starts a fresh engine, as a run outside shared_engine() does
    assert not ray.is_initialized()


def test_the_example_runs_two_densities_on_one_engine(tmp_path):
    """examples/compare_densities.py, as a user runs it (its own process, another directory), with its clients
    in-process: that Ray workers serve both runs is the test above's claim, and a Ray start costs 20 s."""
    example = Path(__file__).resolve().parents[1] / "examples" / "compare_densities.py"
    done = subprocess.run(
        [sys.executable, str(example), "--rounds", "2", "--output-dir", str(tmp_path), "--backend", "in-process"],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    runs = {}
    for run_dir in tmp_path.iterdir():
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "complete"
        runs[run_dir.name.split("-")[1]] = summary["uplink_bytes"]
    assert sorted(runs) == ["0.01", "0.1"] and runs["0.1"] > 5 * runs["0.01"]
    lines = [x for x in done.stdout.splitlines() if x.startswith("density ")]
    assert [x.split()[1] for x in lines] == ["0.1:", "0.01:"]


def test_the_in_process_backend_refuses_a_ray_cluster_and_unknown_backends(tmp_path):
    from fedcomp.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"'simulation.ray_address': the in-process backend runs clients in this"):
        config_from_dict({"simulation": {"backend": "in-process", "ray_address": "10.0.0.1:6379"}})
    with pytest.raises(ConfigError, match=r"simulation.backend"):
        config_from_dict({"simulation": {"backend": "threads"}})
