"""Shared fixtures: small real simulations run once per test module."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


# Seconds each file's tests took on a 2-core machine (setup + call + teardown from pytest --durations=0,
# summed per file; December 2026). pytest-xdist's
# loadfile hands whole files to the two workers in collection order; starting with the longest ones
# (longest processing time first) keeps both workers busy to the end instead of one finishing minutes
# early. Files not listed keep their order after these.
FILE_SECONDS = {
    "test_influence.py": 303,
    "test_resume_and_faults.py": 221,
    "test_server_compression_structured.py": 197,
    "test_example_flower_app.py": 146,
    "test_own_code.py": 122,
    "test_deployment.py": 122,
    "test_ray_cluster.py": 95,
    "test_reports.py": 90,
    "test_hostile_payloads.py": 83,
    "test_simulation_configs.py": 67,
    "test_update_compressors.py": 66,
    "test_udfc.py": 50,
    "test_server_compression_lc.py": 49,
    "test_engine.py": 48,
    "test_hostile_clients.py": 47,
    "test_compare.py": 44,
    "test_model_compressors.py": 37,
    "test_simulation.py": 36,
    "test_shakespeare.py": 30,
    "test_simulation_strategies.py": 29,
    "test_downlink.py": 20,
    "test_cli_start.py": 18,
    "test_reproducibility.py": 15,
    "test_trust_boundaries.py": 13,
}


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))  # stable: order within a file kept


@pytest.fixture(scope="session", autouse=True)
def one_engine_per_test_process():
    """Simulations share one engine (Ray and its client actors) per test process, as a sweep does.

    The engine's start-up (ray.init, then actors importing torch) is most of a tiny run's time; a test
    that must see a fresh start takes the ``fresh_engine`` fixture.
    """
    import fedcomp

    with fedcomp.shared_engine():  # as users call it
        yield


@pytest.fixture
def fresh_engine():
    """The next run starts its own engine, as a run outside ``shared_engine()`` does."""
    from fedcomp.engine import release

    release()


@pytest.fixture
def task_identity():
    """Flower's server runtime sets these before a ServerApp builds messages; tests that build messages do too."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    # As the runtime sets them: a server's messages come from the SuperLink's node id (a link state checks it).
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def small_config(tmp_path, **sections) -> dict:
    """A 3-client, 2-round federation on the embedded digits, as a TOML-shaped dict."""
    cfg = {
        "name": "test",
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "federation": {"num_clients": 3, "rounds": 2, "min_train_clients": 2},
        "client": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
        # One client actor: the tests' 3-client federations are tiny, and every extra actor is one more
        # process importing torch at each engine start (the suite is CPU-bound on 2 cores).
        "simulation": {"num_cpus": float(os.cpu_count() or 1)},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def make_config(tmp_path):
    return lambda **sections: small_config(tmp_path, **sections)
