"""Flower's strategies in real fedcomp simulations: FedAdam, FedProx and Krum, SuRP uplink, 2 rounds each."""

from __future__ import annotations

import json
import math

import pytest

import fedcomp
from tests.conftest import small_config

STRATEGIES = {
    "fedadam": {"eta": 0.01},
    "fedprox": {"proximal_mu": 0.5},
    "krum": {"num_malicious_nodes": 0},
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_flower_strategy_runs_a_compressed_federation(name, tmp_path):
    cfg = small_config(
        tmp_path,
        uplink={"name": "surp", "max_bytes": 3000},
        strategy={"name": name, **STRATEGIES[name]},
        client={"local_steps": 5},
    )
    result = fedcomp.run(cfg, progress=False)
    assert json.loads((result.run_dir / "summary.json").read_text())["status"] == "complete"
    rows = result.rows
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert r["failed_clients"] == 0 and r["skipped"] is None and sorted(r["clients"]) == [0, 1, 2]
        # The bytes recorded are the payloads as each client measured them before sending.
        assert r["uplink_bytes_per_client"] == r["uplink_bytes_sent_per_client"]
        assert all(0 < b <= 3000 for b in r["uplink_bytes_per_client"])
        assert r["uplink_bytes"] == sum(r["uplink_bytes_per_client"])
    assert math.isfinite(rows[-1]["test_loss"]) and rows[-1]["test_accuracy"] > 0.1
    assert len({r["downlink_crc32"] for r in rows}) == 2  # the model moved between rounds
    if name == "fedprox":  # the clients trained with the proximal term Flower's FedProx sent them
        assert all(r["client_metrics"]["proximal_mu"] == 0.5 for r in rows)
    else:
        assert "proximal_mu" not in rows[0]["client_metrics"]


def test_clients_evaluate_on_their_own_held_out_data_and_the_row_says_so(tmp_path):
    cfg = small_config(
        tmp_path,
        federation={"evaluate_on": "both"},
        data={"client_test_fraction": 0.25},
        client={"local_steps": 20},
        uplink={"name": "topk", "density": 0.1},
    )
    rows = fedcomp.run(cfg, progress=False).rows
    for r in rows:
        fed = r["federated_eval"]
        assert fed["clients"] == 3 and 0 <= fed["test_accuracy"] <= 1 and math.isfinite(fed["test_loss"])
        assert r["test_accuracy"] is not None  # and the server's test set too
        # The model each client evaluated was sent to it, dense, and counted as downlink.
        assert r["downlink_bytes"] > r["downlink_bytes_per_client"] * r["sampled_clients"]
    assert rows[-1]["federated_eval"]["test_accuracy"] > 0.3
    assert rows[-1]["federated_eval"]["test_loss"] < rows[0]["federated_eval"]["test_loss"] * 1.5
