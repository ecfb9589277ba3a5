"""Real Flower simulations where the broadcast model changes architecture: ALDS, UDFC, BWCP (configs, tiny)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import fedcomp
from fedcomp.compressors.model.alds import ALDSConv2d
from fedcomp.compressors.model.structure import Architecture
from tests.simulated import assert_downlink_as_measured, run_config


def test_federated_alds_trains_the_factorized_model(tmp_path):
    _, result = run_config(
        "alds_lenet5.toml",
        tmp_path,
        "server_compression.compress_at=[2]",
        "server_compression.target=0.5",
        "server_compression.exclude=['features.0']",
        "server_compression.seeds=3",
        'uplink={name="topk", density=0.05}',  # error feedback: residuals of factorized layers are dropped
    )
    rows, run_dir = result.rows, result.run_dir
    assert_downlink_as_measured(rows)
    first, *later = (r["downlink_bytes_per_client"] for r in rows)
    assert all(b < 0.75 * first for b in later)  # the factors are what travels
    assert rows[1]["server_metrics"]["alds_params_kept"] == pytest.approx(0.5, abs=0.005)
    assert "alds_params_kept" not in rows[0]["server_metrics"]  # dense before the compression round
    kept = [r["server_metrics"]["alds_params_kept"] for r in rows[1:]]
    assert kept == [rows[1]["server_metrics"]["alds_params_kept"]] * len(kept)  # every row after says what it is
    assert rows[2]["uplink_bytes"] < rows[0]["uplink_bytes"]  # smaller model, smaller updates
    model = fedcomp.load_model(run_dir)
    assert any(isinstance(m, ALDSConv2d) for m in model.modules())
    assert not isinstance(model.features[0], ALDSConv2d)  # excluded
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model_structure"]
    assert summary["final_model_bytes"] == len((run_dir / "final_model.bin").read_bytes())
    assert rows[-1]["test_accuracy"] is not None


def test_federated_udfc_broadcast_gets_thinner(tmp_path):
    _, result = run_config(
        "udfc_resnet20.toml",
        tmp_path,
        "federation.rounds=2",
        "server_compression.final_only=false",
        "server_compression.start_round=2",
    )
    rows, run_dir = result.rows, result.run_dir
    assert_downlink_as_measured(rows)
    first, second = (r["downlink_bytes_per_client"] for r in rows)
    assert second < 0.25 * first  # 30% of the inner channels gone, 6-bit weights
    assert rows[1]["uplink_bytes"] < rows[0]["uplink_bytes"]  # and the updates are of the thinner model
    assert rows[1]["server_metrics"]["udfc_channels_removed"] == 3 * 5 + 3 * 10 + 3 * 19
    model = fedcomp.load_model(run_dir)
    assert model.layer1[0].conv1.out_channels == 11 and model.layer3[2].conv2.in_channels == 45
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_model_bytes"] == len((run_dir / "final_model.bin").read_bytes()) < 0.25 * first


def test_federated_bwcp_trains_masks_and_broadcasts_the_pruned_model(tmp_path):
    # A strong regularizer so a few local steps already close channels (the paper's λ are for 160 epochs).
    # Progressive: pruned at round 2 (BWCP modules kept on the thinner layers), again at round 3.
    _, result = run_config(
        "bwcp_resnet20.toml",
        tmp_path,
        "federation.rounds=3",
        "server_compression.lambda1=0.05",
        "server_compression.lambda2=0.1",
        "server_compression.prune_at=[2, 3]",
        "server_compression.recalibrate_samples=128",  # the statistics round's forward passes: tiny, as the run
    )
    rows, run_dir = result.rows, result.run_dir
    assert_downlink_as_measured(rows)
    first, second, third = (r["downlink_bytes_per_client"] for r in rows)
    assert rows[2]["server_metrics"]["bwcp_prunings"] == 2 and rows[2]["server_metrics"]["statistics_clients"] == 3
    assert third < second and rows[2]["statistics_downlink_bytes"] > 0  # the second pruning removed more
    dense = 4 * sum(p.numel() for p in fedcomp.load_model(run_dir).parameters())
    # Round 1: the BWCP model (BatchNorms replaced by BWCP modules, whitening buffers added) is larger than the plain one.
    plain = Architecture("resnet20", (1, 28, 28), 10).build(()).state_dict().values()
    assert first > sum(4 * v.numel() for v in plain if v.is_floating_point())
    assert rows[1]["server_metrics"]["bwcp_channels_removed"] > 0
    # Before pruning, a statistics round: the BWCP model dense to each of the round's 3 clients, their moments back.
    assert rows[0]["statistics_downlink_bytes"] == rows[0]["statistics_uplink_bytes"] == 0
    assert rows[1]["server_metrics"]["statistics_clients"] == 3
    # The unpruned BWCP model, dense as in round 1 (its container header names "identity", not "bwcp").
    assert abs(rows[1]["statistics_downlink_bytes"] - 3 * first) <= 3 * 64
    report_bytes = rows[1]["statistics_uplink_bytes"] / 3
    assert 0 < report_bytes < 0.1 * first  # moments per channel and whitening group: small next to the model
    assert rows[1]["uplink_bytes"] == sum(rows[1]["uplink_bytes_per_client"]) + rows[1]["statistics_uplink_bytes"]
    updates = [sum(r["uplink_bytes_per_client"]) for r in rows]
    assert second < first and updates[2] < updates[1] < updates[0]  # channels physically gone
    assert third < dense + 64 * 1024  # what travels is the pruned model
    assert math.isfinite(rows[1]["train_loss"])  # the pruned model still trains (its BatchNorms kept)
    model = fedcomp.load_model(run_dir)
    inner = [model.get_submodule(f"layer{s}.{b}.conv1") for s in (1, 2, 3) for b in range(3)]
    assert sum(c.out_channels for c in inner) < 3 * (16 + 32 + 64)
    # The residual streams (A.6) are thinner too: stem, stage outputs, the shortcuts remapped, the classifier.
    streams = (model.conv1.out_channels, model.layer2[0].conv2.out_channels, model.layer3[0].conv2.out_channels)
    assert sum(streams) < 16 + 32 + 64 and model.fc.in_features == streams[2]
    assert type(model.layer2[0].shortcut).__name__ == "ChannelMap"
    assert rows[-1]["test_accuracy"] is not None


def test_bwcp_statistics_round_before_evaluation_changes_what_is_evaluated_not_the_training(tmp_path):
    """``recalibrate_eval``: round 1's evaluation runs on statistics the clients measured (bytes counted); the
    training, the pruning and the final model are bit for bit those of the same run without it."""
    common = (
        "federation.rounds=2",
        "server_compression.recalibrate_samples=128",
        "server_compression.lambda1=0.05",
        "server_compression.lambda2=0.1",
        "server_compression.prune_at=[2]",
    )
    _, plain = run_config("bwcp_resnet20.toml", tmp_path / "plain", *common)
    _, measured = run_config(
        "bwcp_resnet20.toml", tmp_path / "measured", *common, "server_compression.recalibrate_eval=true"
    )
    p, m = plain.rows, measured.rows
    assert_downlink_as_measured(m)
    # Round 1 (BWCP modules, not pruned yet): the model dense to each of the 3 clients, their moments back.
    assert p[0]["statistics_downlink_bytes"] == p[0]["statistics_uplink_bytes"] == 0
    assert m[0]["server_metrics"]["statistics_clients"] == 3 and m[0]["statistics_uplink_bytes"] > 0
    assert abs(m[0]["statistics_downlink_bytes"] - 3 * m[0]["downlink_bytes_per_client"]) <= 3 * 64
    assert m[0]["downlink_bytes"] == p[0]["downlink_bytes"] + m[0]["statistics_downlink_bytes"]
    assert m[0]["test_loss"] < p[0]["test_loss"]  # measured here: 3.16 against 7.99 under the averaged ones
    # Round 2 prunes (its own statistics round, as without); the pruned model has plain BatchNorm: no second one.
    assert m[1]["statistics_downlink_bytes"] == p[1]["statistics_downlink_bytes"] > 0
    # The training never saw the evaluation's statistics: the same updates, losses and final model.
    for a, b in zip(m, p, strict=True):
        assert a["uplink_bytes_per_client"] == b["uplink_bytes_per_client"] and a["train_loss"] == b["train_loss"]
    assert m[1]["test_accuracy"] == p[1]["test_accuracy"]
    final_m, final_p = fedcomp.load_model(measured.run_dir).state_dict(), fedcomp.load_model(plain.run_dir).state_dict()
    assert all(torch.equal(final_m[k], final_p[k]) for k in final_p) and final_m.keys() == final_p.keys()
