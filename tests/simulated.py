"""Tiny runs of the simulations/ configs: the configs people copy are the ones tested."""

from __future__ import annotations

from pathlib import Path

import fedcomp
from fedcomp.config import load_config
from tests.conftest import CPUS_PER_WORKER

SIMULATIONS = Path(__file__).resolve().parent.parent / "fedcomp" / "configs"
TINY = [
    "data.dataset=mnist5k",
    "data.test_size=300",  # the server evaluates every round: 1,000 test digits were a fifth of a ResNet-20 run
    "federation.num_clients=3",
    "federation.rounds=3",
    "federation.fraction_train=1.0",
    "client.local_steps=5",
    "client.batch_size=32",
    f"simulation.num_cpus={float(CPUS_PER_WORKER)}",
    'simulation.backend="in-process"',  # Flower's message path without Ray, as in conftest.small_config
]


def run_config(name: str, tmp_path: Path, *overrides: str):
    """The config ``simulations/<name>`` with the tiny overrides (3 clients, 3 rounds, 5 steps) and ``overrides``."""
    cfg = load_config(SIMULATIONS / name, [*TINY, *overrides, f'output_dir="{tmp_path}"'])
    return cfg, fedcomp.run(cfg, progress=False)


def assert_downlink_as_measured(rows) -> None:
    """Every round: all three clients aggregated, and what the server sent is what each client measured."""
    for row in rows:
        assert row["failed_clients"] == 0 and len(row["clients"]) == 3
        assert row["downlink_bytes_received_per_client"] == [row["downlink_bytes_per_client"]] * 3
        # The server's total is what the clients measured on arrival, not the server's own formula.
        # (Plus a statistics round's bytes, counted apart: the global model to each client asked.)
        assert (
            row["downlink_bytes"] == sum(row["downlink_bytes_received_per_client"]) + row["statistics_downlink_bytes"]
        )
