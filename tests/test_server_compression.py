"""Real Flower simulations with the global model compressed before broadcast (LC, ALDS)."""

from __future__ import annotations

import json

import pytest
import torch

import fedcomp
from fedcomp.compressors.model.alds import ALDSConv2d
from fedcomp.compressors.model.lc import LCCompressor, LCParams
from fedcomp.compressors.model.structure import Architecture
from fedcomp.compressors.update.identity import IdentityCompressor
from fedcomp.config import load_config

LENET = Architecture("lenet5_caffe", (1, 28, 28), 10)
LC_GROUPS = [
    {"layers": ["features.*"], "forms": [{"form": "quantize", "k": 4}]},
    {"layers": ["classifier.*"], "forms": [{"form": "quantize", "k": 2}, {"form": "prune", "keep": 0.01}]},
]


def _rows_bytes_as_measured(rows):
    for row in rows:
        assert row["failed_clients"] == 0
        # What the server sent is what every client measured on arrival.
        assert row["downlink_bytes_received_per_client"] == [row["downlink_bytes_per_client"]] * len(row["clients"])
        assert row["downlink_bytes"] == row["downlink_bytes_per_client"] * row["sampled_clients"]


@pytest.mark.parametrize("variant", ["augmented_lagrangian", "compressed_start"])
def test_federated_lc_ends_with_delta_theta_and_records_its_bytes(make_config, variant):
    sc = {"name": "lc", "variant": variant, "start_round": 2, "mu0": 0.01, "mu_growth": 2.0, "groups": LC_GROUPS}
    cfg = make_config(server_compression=sc, federation={"rounds": 3}, client={"local_steps": 25})
    result = fedcomp.run(cfg, progress=False)
    rows, run_dir = result.rows, result.run_dir
    _rows_bytes_as_measured(rows)
    model = torch.load(run_dir / "model.pt", weights_only=True)
    dense = len(IdentityCompressor().encode(model).payload)
    assert dense < rows[0]["downlink_bytes_per_client"] < dense + 64  # round 1 trains the reference model, dense
    for row in rows[1:]:
        if variant == "augmented_lagrangian":  # w̄ and t = Δ(Θ) + λ/μ, both dense
            assert 1.9 * dense < row["downlink_bytes_per_client"] < 2 * dense
        else:  # only Θ (and the small uncompressed tensors)
            assert row["downlink_bytes_per_client"] < dense / 10
    # The μ schedule: μ₀ at the first L step, ×a after each C step.
    assert [r["server_metrics"]["lc_mu"] for r in rows[1:]] == pytest.approx([0.02, 0.04])
    assert all(r["server_metrics"]["global_test_accuracy"] is not None for r in rows[1:])

    # The saved model is exactly Δ(Θ): what a client decodes from the final payload ...
    summary = json.loads((run_dir / "summary.json").read_text())
    final = (run_dir / "final_model.bin").read_bytes()
    assert summary["final_model_bytes"] == len(final) < dense / 10
    params = {k: v for k, v in sc.items() if k != "name"}
    decoded = LCCompressor(LCCompressor.parse_params(params, "server_compression"), LENET).decode(final)
    assert all(torch.equal(decoded.state[k], model[k]) for k in model)
    # ... whose compressed tensors take the forms' values: 4 levels; 2 levels plus ≤ 1% corrections.
    for name in ("features.0.weight", "features.2.weight"):
        assert torch.unique(model[name]).numel() <= 4
    fc = model["classifier.1.weight"]
    levels, counts = torch.unique(fc, return_counts=True)
    assert counts.topk(2).values.sum() >= 0.99 * fc.numel()
    assert rows[-1]["test_accuracy"] > 0.3  # Δ(Θ) of a trained net, evaluated as such (chance: 0.1)
    # The run's configuration reloads with its server compression (what a sweep or a resume reads back).
    again = load_config(run_dir / "config.toml")
    assert again.server_compression.name == "lc"
    assert LCParams is type(LCCompressor.parse_params(again.server_compression.params, "server_compression"))


def test_federated_alds_trains_the_factorized_model(make_config):
    sc = {"name": "alds", "target": 0.5, "compress_at": [2], "seeds": 3}
    uplink = {"name": "topk", "density": 0.05}  # error feedback: residuals of factorized layers are dropped
    cfg = make_config(server_compression=sc, uplink=uplink, federation={"rounds": 3}, client={"local_steps": 25})
    result = fedcomp.run(cfg, progress=False)
    rows, run_dir = result.rows, result.run_dir
    _rows_bytes_as_measured(rows)
    assert all(len(r["clients"]) == 3 for r in rows)  # every factorized update decoded
    first, *later = (r["downlink_bytes_per_client"] for r in rows)
    assert all(b < 0.75 * first for b in later)  # the factors are what travels
    assert rows[1]["server_metrics"]["alds_params_kept"] == pytest.approx(0.5, abs=0.005)
    assert rows[2]["uplink_bytes"] < rows[0]["uplink_bytes"]  # smaller model, smaller updates
    model = fedcomp.load_model(run_dir)
    assert any(isinstance(m, ALDSConv2d) for m in model.modules())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model_structure"] and summary["final_model_bytes"] == len(
        (run_dir / "final_model.bin").read_bytes()
    )
    assert rows[-1]["test_accuracy"] > 0.3


def test_federated_udfc_broadcast_gets_thinner(make_config):
    sc = {"name": "udfc", "prune": 0.3, "bits": 6, "start_round": 2}
    cfg = make_config(
        model={"name": "resnet20"}, server_compression=sc, federation={"rounds": 3}, client={"local_steps": 5}
    )
    result = fedcomp.run(cfg, progress=False)
    rows, run_dir = result.rows, result.run_dir
    _rows_bytes_as_measured(rows)
    assert all(len(r["clients"]) == 3 for r in rows)  # the thinner model's updates decode
    first, second, third = (r["downlink_bytes_per_client"] for r in rows)
    assert second < 0.25 * first and third < 0.25 * first  # 30% of the inner channels gone, 6-bit weights
    assert rows[1]["uplink_bytes"] < rows[0]["uplink_bytes"]  # and the updates are of the thinner model
    assert rows[1]["server_metrics"]["udfc_channels_removed"] == 3 * 5 + 3 * 10 + 3 * 19
    model = fedcomp.load_model(run_dir)
    assert model.layer1[0].conv1.out_channels == 11 and model.layer3[2].conv2.in_channels == 45
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_model_bytes"] == len((run_dir / "final_model.bin").read_bytes()) < 0.25 * first
