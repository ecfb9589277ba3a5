"""The server judges every reply: real Flower messages carrying real payloads, through CompressedStrategy.

Each hostile reply must become a recorded failure with its reason (never an
exception, never a changed model); the usable ones are averaged with their
example weights and the server step; a round below the quorum keeps the model.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedAvgM

from fedcomp.compressors.model.structure import Architecture
from fedcomp.compressors.update.identity import IdentityCompressor
from fedcomp.flower.strategy import CompressedStrategy, RoundStats
from fedcomp.messages import METRICS_KEY, PAYLOAD_KEY, payload_record
from fedcomp.strategies.replies import ReplyRejected

ARCH = Architecture("mlp", (1, 4, 4), 3)
NODES = [101, 202, 303]


pytestmark = pytest.mark.usefixtures("task_identity")  # tests/conftest.py: messages need a run and task id


def zero_state() -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((k, torch.zeros_like(v)) for k, v in ARCH.build(()).state_dict().items())


def strategy(inner=None, **kwargs) -> CompressedStrategy:
    """A strategy that has run warm-up: node i holds partition i with 10·(i+1) examples."""
    s = CompressedStrategy(inner or FedAvg(), arch=ARCH, num_partitions=3, max_abs_value=1e6, **kwargs)
    for i, node in enumerate(NODES):
        s.roster.learn(node, MetricRecord({"partition-id": i, "num-examples": 10 * (i + 1)}), s.policy)
    s.global_state = s.aggregate_base = zero_state()  # what configure_train sets
    s.current = RoundStats(round=1, sampled_nodes=list(NODES))
    return s


def update_filled(value: float) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((k, torch.full_like(v, value)) for k, v in zero_state().items() if v.is_floating_point())


def reply(node: int, update=None, payload: bytes | None = None, **metrics) -> Message:
    partition = NODES.index(node)
    sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.TRAIN)
    if payload is None:
        payload = IdentityCompressor().encode(update if update is not None else update_filled(1.0)).payload
    m = {"partition-id": partition, "num-examples": 10 * (partition + 1), "train_loss": 1.0}
    m.update(metrics)
    content = RecordDict({PAYLOAD_KEY: payload_record(payload), METRICS_KEY: MetricRecord(m)})
    return Message(content, reply_to=sent)


def aggregate(s: CompressedStrategy, replies: list[Message]):
    arrays, _ = s.aggregate_train(1, replies)
    return OrderedDict(arrays.to_torch_state_dict()), s.take_round_stats()


def test_fedavg_weights_updates_by_examples_and_takes_the_server_step():
    s = strategy(FedAvgM(server_learning_rate=0.5))
    s.inner.current_arrays = ArrayRecord(s.global_state)  # what configure_train would have kept
    # Partitions hold 10, 20, 30 examples; their updates are 1, 2, 3 → weighted mean 14/6; step 0.5.
    state, stats = aggregate(s, [reply(n, update_filled(float(i + 1))) for i, n in enumerate(NODES)])
    expected = 0.5 * (10 * 1 + 20 * 2 + 30 * 3) / 60
    for name, value in state.items():
        assert torch.allclose(value, torch.full_like(value, expected)), name
    assert stats.clients == [0, 1, 2] and stats.failures == [] and stats.skipped is None


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy's, inside FedAvgM's step
def test_an_aggregate_that_is_not_finite_keeps_the_model_and_says_why():
    """Every reply finite and within max_abs_value, but the inner strategy's server step overflows float32 (a real
    Flower strategy with a step far too large): the round keeps the model, so no model compressor (LC's C step,
    UDFC's closed forms, ...) and no client ever sees a non-finite global model."""
    s = strategy(FedAvgM(server_learning_rate=1e38))
    s.inner.current_arrays = ArrayRecord(s.global_state)
    state, stats = aggregate(s, [reply(n, update_filled(10.0)) for n in NODES])
    assert all(torch.equal(state[k], v) for k, v in zero_state().items())
    assert stats.clients == [] and "not finite" in stats.skipped and "FedAvgM" in stats.skipped
    # The three updates were received all the same: their bytes count.
    one = len(IdentityCompressor().encode(update_filled(10.0)).payload)
    assert stats.unused_uplink_bytes == 3 * one == stats.uplink_bytes_total


def _nan_update():
    u = update_filled(1.0)
    next(iter(u.values())).view(-1)[3] = float("nan")
    return u


def _inf_update():
    u = update_filled(1.0)
    next(iter(u.values())).view(-1)[0] = float("inf")
    return u


HOSTILE = {
    "nan update": (dict(update=_nan_update()), "not finite"),
    "+inf coordinate": (dict(update=_inf_update()), "not finite"),
    "beyond max_abs_value": (dict(update=update_filled(1e7)), "1e+06"),
    "10^9 examples": (dict(**{"num-examples": 10**9}), "num-examples"),
    "negative examples": (dict(**{"num-examples": -1500}), "num-examples"),
    "NaN examples": (dict(**{"num-examples": float("nan")}), "num-examples"),
    "examples not the partition's": (dict(**{"num-examples": 11}), "reported 10 at warm-up"),
    "another client's partition": (dict(**{"partition-id": 1}), "partition-id = 1"),
    "infinite partition id": (dict(**{"partition-id": float("inf")}), "partition-id"),
    "payload-bytes a list": (dict(**{"payload-bytes": [1, 2]}), "payload-bytes must be an integer"),
    "diverged loss": (dict(train_loss=float("nan")), "diverged"),
    "not a payload": (dict(payload=b"\x00" * 105), "undecodable payload"),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_a_hostile_reply_is_a_recorded_failure_and_changes_nothing(attack):
    kwargs, reason = HOSTILE[attack]
    honest = [reply(n, update_filled(2.0)) for n in NODES[1:]]
    s = strategy()
    state, stats = aggregate(s, [reply(NODES[0], **kwargs), *honest])
    ref_state, _ = aggregate(strategy(), honest)  # the same round without that client
    assert stats.clients == [1, 2]
    assert [f.node_id for f in stats.failures] == [NODES[0]]
    assert reason in stats.failures[0].reason, stats.failures[0].reason
    assert all(torch.equal(state[k], ref_state[k]) for k in state)
    assert all(torch.isfinite(v).all() for v in state.values())


def test_client_errors_and_missing_metrics_are_failures_with_reasons():
    s = strategy()
    sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=NODES[0], message_type=MessageType.TRAIN)
    error = Message(
        Error(code=0, reason="Exception ClientAppException occurred. Message: out of memory"), reply_to=sent
    )
    sent2 = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=NODES[1], message_type=MessageType.TRAIN)
    no_metrics = Message(RecordDict({PAYLOAD_KEY: payload_record(b"x")}), reply_to=sent2)
    _, stats = aggregate(s, [error, no_metrics, reply(NODES[2])])
    reasons = {f.node_id: f.reason for f in stats.failures}
    assert reasons[NODES[0]] == "client error: out of memory"
    assert reasons[NODES[1]] == "reply lacks metrics"
    assert stats.clients == [2]


def test_a_round_below_the_quorum_keeps_the_model_and_says_why():
    s = strategy(min_replies=3)
    state, stats = aggregate(s, [reply(NODES[0], **{"num-examples": 10**9}), reply(NODES[1]), reply(NODES[2])])
    assert all(torch.equal(state[k], v) for k, v in zero_state().items())
    assert stats.clients == [] and "2 usable of 3 replies, quorum is 3" in stats.skipped
    one = len(IdentityCompressor().encode(update_filled(1.0)).payload)
    assert stats.unused_uplink_bytes == 2 * one  # the two usable updates were received all the same
    assert stats.uplink_bytes_total == 2 * one + sum(f.uplink_bytes for f in stats.failures)
    # A sampled node that never replied counts as a failure too.
    s = strategy(min_replies=2)
    _, stats = aggregate(s, [reply(NODES[0]), reply(NODES[1])])
    assert stats.skipped is None and [f.reason for f in stats.failures] == ["no reply before the round timeout"]


def test_warm_up_claims_are_checked_too():
    s = CompressedStrategy(FedAvg(), arch=ARCH, num_partitions=3)
    s.roster.learn(1, MetricRecord({"partition-id": 0, "num-examples": 5}), s.policy)
    for metrics, why in (
        ({"partition-id": 0, "num-examples": 5}, "held by node 1"),
        ({"partition-id": 3, "num-examples": 5}, "outside [0, 2]"),
        ({"partition-id": 1, "num-examples": 0}, "num-examples"),
    ):
        with pytest.raises(ReplyRejected, match=re.escape(why)):
            s.roster.learn(2, MetricRecord(metrics), s.policy)
    assert s.roster.partition_of == {1: 0}


def test_the_quorum_defaults_to_min_train_clients():
    from fedcomp.config import config_from_dict

    cfg = config_from_dict({"federation": {"num_clients": 5, "min_train_clients": 3}})
    assert cfg.federation.quorum == 3
    cfg = config_from_dict({"federation": {"num_clients": 5, "min_train_clients": 3, "min_replies": 4}})
    assert cfg.federation.quorum == 4


def test_a_second_reply_or_one_from_a_node_not_sampled_is_ignored():
    s = strategy()
    s.current.sampled_nodes = NODES[:2]
    stranger = reply(NODES[2], update_filled(9.0))
    state, stats = aggregate(s, [reply(NODES[0]), reply(NODES[0], update_filled(5.0)), reply(NODES[1]), stranger])
    assert stats.clients == [0, 1]
    reasons = sorted(f.reason for f in stats.failures)
    assert reasons == ["a reply from a node not sampled: ignored", "a second reply in this round: ignored"]
    assert all(torch.allclose(v, torch.ones_like(v)) for v in state.values())  # the mean of two updates of 1


def evaluation_reply(node: int, **metrics) -> Message:
    sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.EVALUATE)
    return Message(RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=sent)


def test_evaluation_replies_are_judged_for_range_and_held_out_size():
    from fedcomp.strategies.replies import ReplyPolicy, Roster, judge_evaluation

    roster = Roster(partition_of={11: 0, 12: 1}, test_sizes={0: 50})
    policy = ReplyPolicy(num_partitions=4, max_examples=10**7)
    good = {"num-examples": 50, "test_accuracy": 0.8, "test_loss": 0.6}
    assert judge_evaluation(evaluation_reply(11, **good), roster, policy) is not None
    assert judge_evaluation(evaluation_reply(12, **{**good, "num-examples": 10**6}), roster, policy)  # size unknown
    cases = {
        "is not a fraction": {**good, "test_accuracy": 1e300},
        "accuracy = -0.5": {**good, "accuracy": -0.5},
        "holds out 50": {**good, "num-examples": 10**7},
        "test_loss = -1": {**good, "test_loss": -1.0},
        "nan": {**good, "test_loss": float("nan")},
        "num-examples is missing": {"test_accuracy": 0.5},
    }
    for why, metrics in cases.items():
        with pytest.raises(ReplyRejected, match=re.escape(why)):
            judge_evaluation(evaluation_reply(11, **metrics), roster, policy)


def test_a_refused_evaluation_reply_is_the_rounds_recorded_failure():
    s = strategy()
    s.current = RoundStats(round=1)
    s.roster.partition_of[NODES[0]] = 0
    s.roster.test_sizes[0] = 40
    out = s.aggregate_evaluate(
        1,
        [
            evaluation_reply(NODES[0], **{"num-examples": 10**7, "test_accuracy": 1.0}),
            evaluation_reply(NODES[1], **{"num-examples": 40, "test_accuracy": 0.5}),
        ],
    )
    assert out is not None and s.current.evaluate_metrics["clients"] == 1
    (failure,) = s.current.failures
    assert failure.node_id == NODES[0] and failure.reason.startswith("evaluation not counted: num-examples")
