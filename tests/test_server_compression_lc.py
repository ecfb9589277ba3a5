"""Real Flower simulations with LC compressing the global model before broadcast (simulations/ configs, tiny)."""

from __future__ import annotations

import json

import pytest
import torch

from fedcomp.compressors.model import MODEL_COMPRESSORS
from fedcomp.compressors.model.structure import Architecture
from fedcomp.compressors.update.identity import IdentityCompressor
from tests.simulated import assert_downlink_as_measured, run_config


@pytest.mark.parametrize(
    ("config", "variant", "steps"),
    [("lc_lenet5.toml", "augmented_lagrangian", 25), ("lc_lenet5.toml", "compressed_start", 25)],
)
def test_federated_lc_ends_with_delta_theta_and_records_its_bytes(tmp_path, config, variant, steps):
    cfg, result = run_config(
        config,
        tmp_path,
        f"client.local_steps={steps}",
        f'server_compression.variant="{variant}"',
        "server_compression.start_round=2",
        "server_compression.rounds_per_step=1",
        "server_compression.mu0=0.01",
        "server_compression.mu_growth=2.0",
    )
    rows, run_dir = result.rows, result.run_dir
    assert_downlink_as_measured(rows)
    model = torch.load(run_dir / "model.pt", weights_only=True)
    dense = len(IdentityCompressor().encode(model).payload)
    assert dense < rows[0]["downlink_bytes_per_client"] < dense + 64  # round 1 trains the reference model, dense
    for row in rows[1:]:
        if variant == "augmented_lagrangian":  # w̄ and t = Δ(Θ) + λ/μ, both dense
            assert 1.9 * dense < row["downlink_bytes_per_client"] < 2 * dense
        else:  # only Θ (and the small uncompressed tensors)
            assert row["downlink_bytes_per_client"] < dense / 4
    # The μ schedule: μ₀ at the first L step, ×a after each C step.
    assert [r["server_metrics"]["lc_mu"] for r in rows[1:]] == pytest.approx([0.02, 0.04])
    assert all(r["server_metrics"]["global_test_accuracy"] is not None for r in rows[1:])

    # The saved model is exactly Δ(Θ): what a client decodes from the final payload ...
    summary = json.loads((run_dir / "summary.json").read_text())
    final = (run_dir / "final_model.bin").read_bytes()
    assert summary["final_model_bytes"] == len(final) < dense / 4
    split_shape = tuple(summary["input_shape"])
    sc = cfg.server_compression
    lc = MODEL_COMPRESSORS.get("lc")
    comp = lc(lc.parse_params(sc.params, "server_compression"), Architecture(cfg.model.name, split_shape, 10))
    decoded = comp.decode(final)
    assert all(torch.equal(decoded.state[k], model[k]) for k in model)
    # ... whose compressed tensors take their group's values: at most k levels (plus ≤ 1% corrections).
    for name, forms in comp.forms.items():
        k = forms[0].k
        levels, counts = torch.unique(model[name], return_counts=True)
        if len(forms) == 1:
            assert levels.numel() <= k
        else:
            assert counts.topk(k).values.sum() >= 0.99 * model[name].numel()
    assert rows[-1]["test_accuracy"] is not None  # Δ(Θ), evaluated as such
    assert rows[-1]["test_accuracy"] > 0.3  # Δ(Θ) of a trained net (chance: 0.1)
