"""One client's influence, bounded where the server knows better: real federations with one hostile client.

Each attack ends recorded in the rows, with the model within a stated
distance of the honest run; where the threat model says the default does
not resist (FedAvg without ``update_norm_bound``), the test shows that
documented behaviour and the robust option resisting it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch

import fedcomp
from fedcomp.clients.faults import BOUNDED_SHIFT
from fedcomp.config import ConfigError, config_from_dict
from fedcomp.servers import app as server_app
from fedcomp.strategies.influence import NormBound, apply_bound, update_norm
from fedcomp.strategies.replies import ReplyPolicy, ReplyRejected, Roster
from tests.conftest import small_config
from tests.helpers import update_compressor
from tests.simulated import run_config


def four_clients(tmp_path, name, attacks=(), rounds=2, **federation):
    return small_config(
        tmp_path,
        name=name,
        federation={"num_clients": 4, "rounds": rounds, "min_train_clients": 3, "evaluate_every": 0, **federation},
        client={"local_steps": 10, "batch_size": 32, "lr": 0.05},
        faults={"hostile_client": 0 if attacks else -1, "attacks": list(attacks)},
    )


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run.run_dir / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def absent(tmp_path_factory):
    """The reference: the same federation in which client 0 fails every round."""
    return fedcomp.run(four_clients(tmp_path_factory.mktemp("absent"), "absent", ["raise"]), progress=False)


# ---------------------------------------------------------------------------------------------- the norm bound


def test_fedavg_without_a_bound_takes_a_bounded_shift_as_documented_and_the_clip_resists(tmp_path, absent):
    """+999,000 on every coordinate is a well-formed reply: FedAvg takes it unrecorded (docs/threat_model.md);
    clipped to 3 × the round's median norm, the model stays within 0.1 of the federation without that client."""
    unbounded = fedcomp.run(four_clients(tmp_path, "unbounded", ["bounded_shift"]), progress=False)
    assert unbounded.rows[0]["failures"] == [] and unbounded.rows[0]["clients"] == [0, 1, 2, 3]
    assert unbounded.final_accuracy < 0.2  # the documented behaviour: one client steered the average
    clipped = fedcomp.run(
        four_clients(tmp_path, "clipped", ["bounded_shift"], update_norm_bound="clip"), progress=False
    )
    for row in clipped.rows:
        assert row["clients"] == [0, 1, 2, 3] and row["failures"] == []
        assert row["server_metrics"]["update_norm_clipped"] == 1  # the hostile update, and only it
        assert 0 < row["server_metrics"]["update_norm_limit"] < 100
    assert clipped.final_accuracy >= absent.final_accuracy - 0.1 > 0.5


def test_the_reject_mode_refuses_the_shift_as_a_failure_and_ends_with_the_model_without_that_client(tmp_path, absent):
    rejected = fedcomp.run(
        four_clients(tmp_path, "rejected", ["bounded_shift"], update_norm_bound="reject"), progress=False
    )
    for row in rejected.rows:
        assert row["clients"] == [1, 2, 3] and row["server_metrics"]["update_norm_clipped"] == 0
        (failure,) = row["failures"]
        assert "update norm" in failure["reason"] and "exceeds the bound" in failure["reason"]
        assert failure["uplink_bytes"] > 0  # received, counted
    model, expected = weights(rejected), weights(absent)
    assert all(torch.equal(model[k], expected[k]) for k in expected)


def test_norm_bound_clips_to_the_limit_and_is_validated():
    honest = [{"w": torch.full((4,), x)} for x in (1.0, 2.0, 3.0)]
    hostile = {"w": torch.full((4,), BOUNDED_SHIFT)}
    updates = [*honest, hostile]
    bounded = apply_bound(NormBound("clip", factor=2.0), updates)
    median = (4.0 + 6.0) / 2  # norms 2, 4, 6 and ~2e6: the median of four is the mean of the middle two
    assert bounded.limit == pytest.approx(2 * median) and bounded.clipped == [3]
    assert update_norm(updates[3]) == pytest.approx(2 * median)
    assert torch.equal(updates[0]["w"], torch.ones(4))  # within the bound: untouched
    absolute = apply_bound(NormBound("reject", factor=0, max_norm=3.0), [{"w": torch.full((4,), 1.0)} for _ in (0, 1)])
    assert absolute.rejected == {}
    assert set(apply_bound(NormBound("reject", factor=0, max_norm=1.0), honest).rejected) == {0, 1, 2}
    for bad in ({"mode": "scale"}, {"factor": 0.5}, {"factor": 0, "max_norm": 0}, {"max_norm": math.nan}):
        with pytest.raises(ValueError):
            NormBound(**bad)
    for key, value in (("update_norm_factor", 0.5), ("update_norm_max", -1.0), ("update_norm_bound", "scale")):
        with pytest.raises(ConfigError, match=key):
            config_from_dict({"federation": {key: value}})
    with pytest.raises(ConfigError, match="update_norm_bound"):
        config_from_dict({"federation": {"update_norm_bound": "clip", "update_norm_factor": 0}})
    with pytest.raises(TypeError, match="NormBound"):
        from flwr.serverapp.strategy import FedAvg

        from fedcomp.flower import CompressedStrategy

        CompressedStrategy(FedAvg(), model_fn=lambda: torch.nn.Linear(2, 2), update_norm_bound=3.0)


# ---------------------------------------------------------------------------------------------- warm-up counts


def test_an_inflated_weight_is_refused_where_the_server_knows_the_partition_sizes(tmp_path, absent):
    """10⁷ examples claimed at warm-up and in every reply, update −w: in simulation the server's own partition
    sizes refuse the claim (round 1's row records the warm-up too); the model is the one without that client."""
    attacked = fedcomp.run(four_clients(tmp_path, "replacement", ["replacement"]), progress=False)
    first = [f["reason"] for f in attacked.rows[0]["failures"]]
    assert len(first) == 2 and first[0].startswith("warm-up: num-examples = 10000000, but partition 0 holds")
    for row in attacked.rows:
        assert row["clients"] == [1, 2, 3]
        assert "num-examples = 10000000, but its partition holds" in row["failures"][-1]["reason"]
    model, expected = weights(attacked), weights(absent)
    assert all(torch.equal(model[k], expected[k]) for k in expected)


def test_where_the_server_cannot_know_the_sizes_fedavg_is_replaced_and_fedmedian_resists(tmp_path, monkeypatch):
    """As in a deployment with data on each node: the documented FedAvg behaviour (the model replaced by
    zeros, nothing recorded), and FedMedian keeping the model within 0.1 of its honest run."""
    monkeypatch.setattr(server_app, "partition_sizes", lambda cfg, split: ({}, {}))
    replaced = fedcomp.run(four_clients(tmp_path, "fedavg", ["replacement"]), progress=False)
    assert all(row["failures"] == [] for row in replaced.rows)
    assert all(float(v.abs().max()) < 1e-3 for v in weights(replaced).values() if v.is_floating_point())
    assert replaced.final_accuracy < 0.2
    median = {"strategy": {"name": "fedmedian"}}
    honest = fedcomp.run(four_clients(tmp_path, "honest-median", **{}) | median, progress=False)
    attacked = fedcomp.run(four_clients(tmp_path, "median", ["replacement"]) | median, progress=False)
    assert attacked.final_accuracy >= honest.final_accuracy - 0.1 > 0.5


def test_the_roster_holds_a_node_to_the_size_the_server_knows():
    policy = ReplyPolicy(num_partitions=4, max_examples=10**7)
    roster = Roster(sizes={0: 1000, 1: 900})
    with pytest.raises(ReplyRejected, match="partition 0 holds 1000"):
        roster.learn(7, {"partition-id": 0, "num-examples": 10**7}, policy)
    assert roster.partition_of[7] == 0 and roster.examples_of[7] == 1000  # the server's number, not the claim
    roster.learn(8, {"partition-id": 1, "num-examples": 900}, policy)
    assert roster.examples_for(8, 1) == 900 and roster.examples_for(9, 3) is None
    assert Roster(sizes={2: 5}).examples_for(123, 2) == 5  # a node the warm-up never reached: still held to it


# ---------------------------------------------------------------------------------------------- statistics round


def test_a_statistics_shift_is_refused_and_the_others_moments_applied(tmp_path):
    """ResNet-20 with BWCP, 3 clients, one reporting means +500 in every statistics round (before round 1's
    evaluation, before round 2's pruning): its report is that round's recorded failure, the two others'
    moments are applied, and each evaluation is within 0.1 of the honest run's (main: 0.10 in every round,
    statistics_clients = 3, no failure)."""
    common = (
        "federation.rounds=2",
        "server_compression.prune_at=[2]",
        "server_compression.recalibrate_eval=true",
        "server_compression.recalibrate_samples=128",
    )
    _, honest = run_config("bwcp_resnet20.toml", tmp_path / "honest", *common)
    _, attacked = run_config(
        "bwcp_resnet20.toml", tmp_path / "attacked", *common,
        "faults.hostile_client=0", 'faults.attacks=["statistics_shift"]',
    )  # fmt: skip
    for h, a in zip(honest.rows, attacked.rows, strict=True):
        assert h["server_metrics"]["statistics_clients"] == 3 and h["failures"] == []
        assert a["server_metrics"]["statistics_clients"] == 2 and a["clients"] == [0, 1, 2]
        assert a["failures"] and all(
            f["reason"].startswith("statistics round: moments refused:") for f in a["failures"]
        )
        assert all("standard deviations from the clients' median" in f["reason"] for f in a["failures"])
        assert abs(a["test_accuracy"] - h["test_accuracy"]) <= 0.1
    # The pruning read the two honest clients' statistics: the model it kept is the honest run's size, not ~10 %.
    assert attacked.rows[-1]["downlink_bytes_per_client"] > 0.5 * honest.rows[-1]["downlink_bytes_per_client"]


def test_lying_evaluation_replies_are_refused_and_recorded(tmp_path):
    """Accuracy 1.0 on 10⁷ examples, then 1e300: neither counts (main: 0.99996 and 9.999e299 in the row)."""
    cfg = small_config(
        tmp_path,
        federation={"num_clients": 3, "rounds": 2, "evaluate_on": "both"},
        client={"local_steps": 10},
        faults={"hostile_client": 0, "attacks": ["evaluation_inflated", "evaluation_out_of_range"]},
    )
    run = fedcomp.run(cfg, progress=False)
    why = ["num-examples = 10000000, but partition 0 holds out", "test_accuracy = 1e+300 is not a fraction"]
    for row, expected in zip(run.rows, why, strict=True):
        assert row["clients"] == [0, 1, 2]  # its training is honest: only the evaluation lied
        (failure,) = row["failures"]
        assert failure["reason"].startswith("evaluation not counted:") and expected in failure["reason"]
        assert row["federated_eval"]["clients"] == 2
        assert abs(row["federated_eval"]["test_accuracy"] - row["test_accuracy"]) < 0.15


# ---------------------------------------------------------------------------------------------- clients that heal


def test_a_damaged_state_file_is_set_aside_and_the_client_heals(tmp_path):
    """Client 0's newest state file is truncated before rounds 2 and 3: each time it is kept as .corrupt, the
    client starts afresh (state_reset in the row) and every round aggregates all three clients."""
    common = {"federation": {"num_clients": 3, "rounds": 3}, "client": {"local_steps": 10},
              "uplink": {"name": "topk", "density": 0.1}}  # fmt: skip
    honest = fedcomp.run(small_config(tmp_path, name="honest", **common), progress=False)
    damaged = fedcomp.run(
        small_config(tmp_path, name="damaged", faults={"hostile_client": 0, "attacks": ["damaged_state"]}, **common),
        progress=False,
    )
    for row in damaged.rows:
        assert row["clients"] == [0, 1, 2] and row["failures"] == []
    assert "state_reset" not in damaged.rows[0]["client_metrics"]
    assert [r["client_metrics"]["state_reset"] > 0 for r in damaged.rows[1:]] == [True, True]
    kept = sorted(p.name for p in (damaged.run_dir / "client_state" / "0").iterdir())
    assert "round-1.pt.corrupt" in kept and "round-2.pt.corrupt" in kept
    assert abs(damaged.final_accuracy - honest.final_accuracy) <= 0.05


def test_a_nan_residual_fails_one_round_with_its_reason_and_the_client_heals(tmp_path):
    """SuRP with error feedback; client 0's stored residual turned NaN before round 2: that round it fails
    naming the residual (main: an all-zero SuRP update accepted as a success every round), round 3 it is back."""
    cfg = small_config(
        tmp_path,
        federation={"num_clients": 3, "rounds": 3},
        client={"local_steps": 10},
        uplink={"name": "surp", "density": 0.05},
        faults={"hostile_client": 0, "attacks": ["nan_residual"]},
    )
    run = fedcomp.run(cfg, progress=False)
    assert run.rows[0]["clients"] == [0, 1, 2] and run.rows[0]["failures"] == []
    (failure,) = run.rows[1]["failures"]
    assert "error-feedback residual" in failure["reason"] and "not finite" in failure["reason"]
    assert "reset" in failure["reason"] and run.rows[1]["clients"] == [1, 2]
    assert run.rows[2]["clients"] == [0, 1, 2] and run.rows[2]["failures"] == []
    assert run.final_accuracy > 0.5


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign_pickle", "not_a_mapping", "meta_shape"])
def test_every_kind_of_unusable_state_file_is_set_aside(tmp_path, damage):
    import pickle

    from flwr.app import Context, RecordDict

    from fedcomp.flower.downlink import META_KEY, split_state
    from fedcomp.flower.state import StateDamaged, load_state, save_state, set_aside

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    folder = tmp_path / "0"
    save_state(context, folder, 1, {"ef/w": torch.ones(3), META_KEY: torch.tensor([1, 2])}, 0)
    path = folder / "round-1.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign_pickle":
        path.write_bytes(pickle.dumps(OrderedDict(w=print)))
    elif damage == "not_a_mapping":
        torch.save([torch.ones(2)], path)
    else:
        torch.save({"ef/w": torch.ones(3), META_KEY: torch.zeros(3, 3)}, path)
    with pytest.raises((StateDamaged, ValueError)) as caught:
        split_state(load_state(context, folder, 2))
    set_aside(context, folder, 2, str(caught.value))
    assert load_state(context, folder, 2) == {}  # afresh
    assert (folder / "round-1.pt.corrupt").exists()  # kept for whoever wants to look


@pytest.mark.parametrize("name", ["surp", "qsgd"])
def test_surp_and_qsgd_refuse_non_finite_input_instead_of_sending_zeros(name):
    from fedcomp.compressors.update.base import NonFiniteUpdateError

    codec = update_compressor(name)
    update = {"w": torch.randn(200), "b": torch.randn(10)}
    update["w"][7] = math.nan
    with pytest.raises(NonFiniteUpdateError, match="'w'"):
        codec.encode(update)


# ---------------------------------------------------------------------------------------------- version lies


def test_a_lie_about_the_model_version_is_a_recorded_failure(tmp_path):
    """With the downlink sending the model's change, client 0 says it holds version 0 every round: from round 2
    on its reply is refused (main: accepted, and the dense model sent to it every round, unrecorded)."""
    cfg = small_config(
        tmp_path,
        federation={"num_clients": 3, "rounds": 3},
        client={"local_steps": 5},
        downlink={"name": "topk", "density": 0.1},
        faults={"hostile_client": 0, "attacks": ["stale_version"]},
    )
    run = fedcomp.run(cfg, progress=False)
    assert run.rows[0]["failures"] == []  # round 1's model is version 0: the truth
    for row in run.rows[1:]:
        (failure,) = row["failures"]
        assert "model-version = 0, but this round's broadcast brought it to version" in failure["reason"]
        assert row["clients"] == [1, 2]
    sent = sorted(run.rows[2]["downlink_bytes_sent_per_client"])  # in node order: the liar's is the largest
    assert sent[-1] > 3 * sent[-2]  # it pays for the dense model, the others get their catch-up
