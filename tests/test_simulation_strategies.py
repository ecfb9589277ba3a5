"""Flower's strategies in real fedcomp simulations: FedAdam and FedProx, SuRP uplink, 2 rounds each.

FedAdam's run also evaluates on the clients' held-out data (``federation.evaluate_on = "both"``);
FedProx's clients train with the proximal term Flower's strategy sends them. Every one of the 12
strategies aggregates real payloads through the wrapper in test_flower_building_blocks.py (in one
process: the engine adds nothing strategy-specific).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import fedcomp
from tests.conftest import small_config

STRATEGIES = {
    "fedadam": {"eta": 0.01},
    "fedprox": {"proximal_mu": 0.5},
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_flower_strategy_runs_a_compressed_federation(name, tmp_path):
    # FedAdam's run also has the clients evaluate on their own held-out data (federation.evaluate_on).
    federated_eval = name == "fedadam"
    # A budget (and steps) at which FedAdam's model clearly learns, so its federated evaluation shows it.
    budget, steps = (30_000, 20) if federated_eval else (3000, 5)
    cfg = small_config(
        tmp_path,
        uplink={"name": "surp", "density": 0.05, "max_bytes": budget},
        strategy={"name": name, **STRATEGIES[name]},
        client={"local_steps": steps},
        federation={"evaluate_on": "both" if federated_eval else "server"},
        data={"client_test_fraction": 0.25},
    )
    result = fedcomp.run(cfg, progress=False)
    assert json.loads((result.run_dir / "summary.json").read_text())["status"] == "complete"
    rows = result.rows
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert r["failed_clients"] == 0 and r["skipped"] is None and sorted(r["clients"]) == [0, 1, 2]
        # The bytes recorded are the payloads as each client measured them before sending.
        assert r["uplink_bytes_per_client"] == r["uplink_bytes_sent_per_client"]
        assert all(0 < b <= budget for b in r["uplink_bytes_per_client"])
        assert r["uplink_bytes"] == sum(r["uplink_bytes_per_client"])
    assert math.isfinite(rows[-1]["test_loss"]) and rows[-1]["test_accuracy"] > 0.1
    assert len({r["downlink_crc32"] for r in rows}) == 2  # the model moved between rounds
    for r in rows:
        if federated_eval:
            fed = r["federated_eval"]
            assert fed["clients"] == 3 and 0 <= fed["test_accuracy"] <= 1 and math.isfinite(fed["test_loss"])
            # The model each client evaluated was sent to it, dense, and counted as downlink.
            assert r["downlink_bytes"] > r["downlink_bytes_per_client"] * r["sampled_clients"]
        else:
            assert r["federated_eval"] == {} and r["downlink_bytes"] == r["downlink_bytes_per_client"] * 3
    if federated_eval:  # round 1's model is near chance (0.1); the clients see what the server sees
        assert rows[-1]["federated_eval"]["test_accuracy"] > 0.5 and rows[-1]["test_accuracy"] > 0.5
        assert rows[-1]["federated_eval"]["test_loss"] < rows[0]["federated_eval"]["test_loss"]
    if name == "fedprox":  # the clients trained with the proximal term Flower's FedProx sent them
        assert all(r["client_metrics"]["proximal_mu"] == 0.5 for r in rows)
    else:
        assert "proximal_mu" not in rows[0]["client_metrics"]


def test_fedprox_clients_take_the_exact_proximal_step_of_their_term(tmp_path):
    """One local SGD step of loss + μ/2‖w − w_g‖² from the global model w_g, as fedcomp takes it (the exact
    proximal step, w ← (w − lr·∇loss + lr·μ·w_g)/(1 + lr·μ)), is w_g − lr/(1 + lr·μ)·∇loss: the plain step with
    the learning rate shrunk by 1 + lr·μ. So FedProx's model after one round is FedAvg's at that learning rate."""
    lr, mu = 0.1, 5.0  # 1 + lr·μ = 1.5: a term never applied leaves a step 1.5 times too long

    def one_step(strategy: dict, rate: float) -> tuple[dict, dict]:
        cfg = small_config(tmp_path, name=strategy["name"], model={"name": "mlp"}, federation={"rounds": 1},
                           client={"local_steps": 1, "lr": rate}, strategy=strategy)  # fmt: skip
        result = fedcomp.run(cfg, run_dir=tmp_path / strategy["name"], progress=False)
        assert result.rows[0]["clients"] == [0, 1, 2]
        return torch.load(result.run_dir / "model.pt", weights_only=True), result.rows[0]

    prox, row = one_step({"name": "fedprox", "proximal_mu": mu}, lr)
    plain, _ = one_step({"name": "fedavg"}, lr / (1 + lr * mu))
    assert row["client_metrics"]["proximal_mu"] == mu
    for key, value in plain.items():
        assert torch.allclose(prox[key], value, rtol=1e-5, atol=1e-7), key
