"""Shared fixtures: small real simulations run once per test module."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Flower's processes send a telemetry event and wait up to 4 s for it on exit; the suite's processes (and
# the SuperLinks, SuperNodes and `flwr run`s they start) send none: tests do not phone home, and where the
# network answers slowly they would wait.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

# The cores each pytest-xdist worker may use: `make test` runs one worker per core, so one torch thread each.
# Two workers with two threads each on two cores spin in OpenMP's barriers: a 30 s ResNet training took
# over 240 s that way.
CPUS_PER_WORKER = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def pytest_configure(config):
    import torch

    torch.set_num_threads(CPUS_PER_WORKER)


# Seconds each test took (setup + call + teardown), measured by `python tools/time_tests.py`, which
# rewrites the table. `make test` runs `-n 2 --dist loadgroup --no-loadscope-reorder`: pytest-xdist hands
# work units to its two workers in collection order, one at a time as each frees up, so starting with the
# longest (longest processing time first) keeps both workers busy to the end. A unit is one test, or a
# whole file whose tests share a module-scoped fixture (a simulation run once for the file): those go to
# one worker together, so the fixture runs once. A test not in the table yet counts as a short one.
DURATIONS = Path(__file__).with_name("durations.json")
NEW_TEST_SECONDS = 1.0


def _shares_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    return any(d.scope in ("module", "package") and d.baseid.endswith(".py") for ds in defs for d in ds)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist turns the groups into node-id suffixes
def pytest_collection_modifyitems(config, items):
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    units: dict[str, list] = {}
    for item in items:
        if _shares_module_fixture(item):
            unit = item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(unit))
        else:
            unit = item.nodeid
        units.setdefault(unit, []).append(item)
    cost = {unit: sum(seconds.get(i.nodeid, NEW_TEST_SECONDS) for i in group) for unit, group in units.items()}
    items[:] = [item for unit in sorted(units, key=lambda u: -cost[u]) for item in units[unit]]  # stable sort


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
        # Ten mini-batches a client and round (a full epoch of the embedded digits is 42): enough for every
        # claim that is not about how much a run learns, and for the learning bars the tests set (a test
        # whose bar needs more asks for more).
        "client": {"local_steps": 10, "batch_size": 32, "lr": 0.05},
        # Flower's real message path with the ClientApp in the test's process: no Ray engine to start or
        # share. Tests about Ray, the engine and resource placement ask for backend = "ray".
        "simulation": {"num_cpus": float(CPUS_PER_WORKER), "backend": "in-process"},
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
