"""Real Flower simulations (Ray backend) on the embedded digits: small and few."""

from __future__ import annotations

import json
import re

import pytest
import torch

import fedcomp
from fedcomp.clients.training import evaluate
from fedcomp.config import load_config
from fedcomp.data import load_dataset
from fedcomp.servers.app import initial_model
from fedcomp.servers.recorder import read_rounds
from tests.payloads import identity_payload_length


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    from tests.conftest import small_config

    cfg = small_config(tmp_path_factory.mktemp("sim"))
    return fedcomp.run(cfg, progress=False)


def test_three_clients_two_rounds_learn_the_digits(baseline_run):
    rows = baseline_run.rows
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["failed_clients"] == 0 and sorted(r["clients"]) == [0, 1, 2] for r in rows)
    assert rows[-1]["test_accuracy"] > 0.5  # chance is 0.1
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_recorded_bytes_are_the_lengths_of_the_payloads_sent(baseline_run):
    # The lengths from the payload format's layout (tests/payloads.py), not from the encoder the run used: the
    # server broadcasts the whole state dense, each client sends its float tensors dense.
    state = torch.load(baseline_run.run_dir / "model.pt", weights_only=True)
    downlink = identity_payload_length(state.values())
    uplink = identity_payload_length(v for v in state.values() if v.is_floating_point())
    for r in baseline_run.rows:
        assert r["sampled_clients"] == 3
        assert r["downlink_bytes_per_client"] == downlink
        assert r["downlink_bytes"] == 3 * downlink
        assert r["uplink_bytes_per_client"] == [uplink] * 3
        assert r["uplink_bytes"] == 3 * uplink


def test_run_directory_holds_config_rows_model_and_summary(baseline_run):
    d = baseline_run.run_dir
    assert read_rounds(d) == baseline_run.rows
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["rounds_completed"] == 2
    assert summary["uplink_bytes"] == baseline_run.uplink_bytes
    assert summary["flwr_version"] and summary["engine_overhead_s"] > 0
    state = torch.load(d / "model.pt")
    cfg = load_config(d / "config.toml")
    split = load_dataset("mnist5k", seed=cfg.seed)
    model = initial_model(cfg, split.input_shape, split.num_classes)
    model.load_state_dict(state)  # loadable as is
    # ... and the trained one: evaluated again it scores what the last row recorded for the global model.
    _, accuracy = evaluate(model, split.test, torch.device("cpu"))
    assert accuracy == pytest.approx(baseline_run.rows[-1]["test_accuracy"], abs=1e-9)
    assert not torch.equal(
        state["classifier.1.weight"], initial_model(cfg, (1, 28, 28), 10).state_dict()["classifier.1.weight"]
    )


def test_failing_clients_are_recorded_and_rounds_go_on(make_config, capfd, fresh_engine):
    cfg = make_config(
        federation={"num_clients": 4, "rounds": 2, "min_train_clients": 4, "min_replies": 1},
        faults={"client_raise_rate": 0.3, "corrupt_payload_rate": 0.3},
        seed=0,  # with this seed: round 1 has a raise and a corrupt payload, round 2 a raise
        simulation={"backend": "ray"},  # a real engine start, which the progress bar must not bill to round 1
    )
    result = fedcomp.run(cfg, progress=True)
    rows = result.rows
    # The progress bar says what the warm-up is doing, then how many clients are ready, and its rate
    # counts rounds only: the warm-up (seconds) is not billed to round 1.
    err = capfd.readouterr().err
    assert "test: starting the engine and 4 clients" in err and "clients ready=4/4" in err, err[-2000:]
    minutes, seconds = re.findall(r"2/2 \[(\d+):(\d+)<", err)[-1]  # the bar's elapsed time at the end
    warmup = json.loads((result.run_dir / "summary.json").read_text())["warmup_s"]
    assert (
        60 * int(minutes) + int(seconds) <= sum(r["wall_s"] for r in rows) + 2 < warmup + sum(r["wall_s"] for r in rows)
    )
    assert len(rows) == 2
    reasons = [f["reason"] for r in rows for f in r["failures"]]
    assert any("injected fault" in x for x in reasons), reasons
    assert any("undecodable payload" in x for x in reasons), reasons
    for r in rows:
        assert r["failed_clients"] + len(r["clients"]) == r["sampled_clients"] == 4
        # Bytes of undecodable payloads were really received: they count.
        assert r["uplink_bytes"] == sum(r["uplink_bytes_per_client"]) + sum(f["uplink_bytes"] for f in r["failures"])
    assert any(r["clients"] for r in rows) and rows[-1]["test_accuracy"] is not None
