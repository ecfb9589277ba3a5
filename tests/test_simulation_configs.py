"""Every config in simulations/ loads and survives a round trip through its TOML.

The model-compression configs are also run (tiny) in test_server_compression.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcomp.config import dump_config, load_config

SIMULATIONS = Path(__file__).resolve().parent.parent / "simulations"


@pytest.mark.parametrize("path", sorted(SIMULATIONS.glob("*.toml")), ids=lambda p: p.name)
def test_every_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    again = tmp_path / "again.toml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg
