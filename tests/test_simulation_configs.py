"""Every packaged config (fedcomp/configs/) loads and survives a round trip through its TOML.

The model-compression configs are also run (tiny) in test_server_compression.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcomp.config import dump_config, load_config
from tests.simulated import assert_downlink_as_measured, run_config

ROOT = Path(__file__).resolve().parent.parent
SIMULATIONS = ROOT / "fedcomp" / "configs"  # the packaged configs; the comparison scripts stay in simulations/


@pytest.mark.parametrize("path", sorted(SIMULATIONS.glob("*.toml")), ids=lambda p: p.name)
def test_every_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    again = tmp_path / "again.toml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("alds_resnet20.toml", ["server_compression.compress_at=[2]"]),
        ("lc_resnet20.toml", ["server_compression.start_round=1", "server_compression.rounds_per_step=1"]),
    ],
)
def test_the_resnet20_configs_run_tiny_on_the_digits(name, overrides, tmp_path):
    """Their CIFAR-10 runs take hours; tiny (3 clients, 2 rounds, 5 steps) on the digits they must run as written."""
    cfg, result = run_config(name, tmp_path, "federation.rounds=2", *overrides)
    assert cfg.model.name == "resnet20" and cfg.client.weight_decay > 0 and cfg.client.momentum > 0
    assert_downlink_as_measured(result.rows)
    assert [r["round"] for r in result.rows] == [1, 2]
    # Compression acted: the round-2 broadcast is not the dense round-1 model.
    first, second = (r["downlink_bytes_per_client"] for r in result.rows)
    assert second != first
    assert result.rows[-1]["test_accuracy"] is not None


def test_the_fair_comparison_scripts_methods_are_the_command_line_they_print_and_each_loads():
    """simulations/fair_uplink.py: its printed ``fedcomp compare`` line parses back to its methods, and every
    method and tuned value is a config fedcomp runs on both partitions (checked as compare checks it)."""
    import importlib.util
    import shlex

    from fedcomp.compare import parse_method
    from fedcomp.config import config_from_dict
    from fedcomp.sweep import load_base

    spec = importlib.util.spec_from_file_location("fair_uplink", ROOT / "simulations" / "fair_uplink.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = shlex.split(" ".join(f"'{a}'" for a in script.command("dirichlet")))
    printed = [parse_method(args[i + 1]) for i, a in enumerate(args) if a == "--method"]
    assert printed == [{"uplink": u} for u in script.METHODS.values()]
    assert args[args.index("--tune") + 1] == "client.lr=" + ",".join(map(str, script.LRS))
    for partition in ("iid", "dirichlet"):
        base = load_base(script.BASE, [f'data.partition="{partition}"'])
        for uplink in script.METHODS.values():
            for lr in script.LRS:
                cfg = config_from_dict({**base, "uplink": uplink, "client": {**base["client"], "lr": lr}})
                assert (cfg.uplink.name, cfg.data.partition, cfg.client.lr) == (uplink["name"], partition, lr)
