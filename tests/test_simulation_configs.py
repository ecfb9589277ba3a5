"""The configs in simulations/: every one loads, and the model-compression ones run (tiny)."""

from __future__ import annotations

from pathlib import Path

import pytest

import fedcomp
from fedcomp.config import dump_config, load_config

SIMULATIONS = Path(__file__).resolve().parent.parent / "simulations"
TINY = [
    "data.dataset=mnist5k",
    "federation.num_clients=3",
    "federation.rounds=2",
    "federation.fraction_train=1.0",
    "client.local_steps=3",
]


@pytest.mark.parametrize("path", sorted(SIMULATIONS.glob("*.toml")), ids=lambda p: p.name)
def test_every_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    again = tmp_path / "again.toml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("lc_lenet5.toml", ["server_compression.start_round=2"]),
        ("alds_lenet5.toml", ["server_compression.compress_at=[2]"]),
        ("lc_resnet20.toml", ["server_compression.start_round=2"]),
        ("alds_resnet20.toml", ["server_compression.compress_at=[2]"]),
        ("udfc_resnet20.toml", ["server_compression.final_only=false", "server_compression.start_round=2"]),
    ],
)
def test_model_compression_configs_run_tiny(name, extra, tmp_path):
    cfg = load_config(SIMULATIONS / name, [*TINY, *extra, f'output_dir="{tmp_path}"'])
    result = fedcomp.run(cfg, progress=False)
    first, second = result.rows
    assert first["failed_clients"] == second["failed_clients"] == 0
    assert second["downlink_bytes_received_per_client"] == [second["downlink_bytes_per_client"]] * 3
    assert second["test_accuracy"] is not None and second["server_metrics"]
    # Round 2 is compressed: LC's Θ travels (augmented Lagrangian: t too), ALDS's factors replace the layers,
    # UDFC's thinner b-bit model replaces the dense one.
    if name.startswith(("alds", "udfc")):
        assert second["downlink_bytes_per_client"] < first["downlink_bytes_per_client"]
    else:
        assert second["downlink_bytes_per_client"] > first["downlink_bytes_per_client"]
    assert (result.run_dir / "final_model.bin").exists()
