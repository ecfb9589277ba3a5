"""Every packaged config (fedcomp/configs/) loads and survives a round trip through its TOML.

The model-compression configs are also run (tiny) in test_server_compression.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcomp.config import dump_config, load_config
from tests.helpers import update_compressor
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


def test_the_baseline_comparison_compares_at_equal_bytes(tmp_path):
    """simulations/surp_vs_baselines.py: every budgeted method fills the same budget on a LeNet-5-sized update."""
    import importlib.util
    from collections import OrderedDict

    import numpy as np
    import torch

    from fedcomp.config import config_from_dict
    from fedcomp.models import build_model

    spec = importlib.util.spec_from_file_location("surp_vs_baselines", ROOT / "simulations" / "surp_vs_baselines.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rng = np.random.default_rng(0)
    model = build_model("lenet5_caffe", (1, 28, 28), 10)
    update = OrderedDict(
        (k, torch.from_numpy(rng.laplace(size=tuple(v.shape)).astype(np.float32))) for k, v in model.state_dict().items()
    )  # fmt: skip
    budget = 720
    sizes = {}
    for method, uplink in script.methods(budget).items():
        cfg = config_from_dict(script.experiment(uplink, "dirichlet", 0, 3, str(tmp_path)))  # a config fedcomp runs
        assert cfg.uplink.name == uplink["name"] and cfg.data.partition == "dirichlet"
        if method == "identity":
            continue
        sizes[method] = encoded_size(uplink, update)
    budgeted = {m: b for m, b in sizes.items() if m in ("surp", "topk", "rtopk", "dgc")}
    assert set(sizes) - set(budgeted) == {"rtopk-0.1%", *script.FIXED_RATE, *(f"surp@{m}" for m in script.FIXED_RATE)}
    assert all(0.95 * budget <= b <= budget for b in budgeted.values()), budgeted  # the budget binds for each
    assert sizes["rtopk-0.1%"] >= 3 * budget  # the reference SuRP must match with a third of its bytes
    # SuRP's twins fill the bytes their fixed-rate method sends on the gradient the budgets were set on.
    grad = script.first_gradient()
    for method, uplink in script.FIXED_RATE.items():
        twin = script.methods(budget)[f"surp@{method}"]
        own = encoded_size(uplink, grad)
        assert twin["max_bytes"] == own and 0.95 * own <= encoded_size(twin, grad) <= own, method


def encoded_size(uplink: dict, update) -> int:
    from fedcomp.compressors.update.base import EncodeContext

    codec = update_compressor(uplink["name"], **{k: v for k, v in uplink.items() if k != "name"})
    return len(codec.encode(update, None, EncodeContext(1, 0, 10)).payload)
