"""The statistics round (BWCP's recalibration): moments measured by clients, combined and applied by the server."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedcomp.coding import DecodeError, pack, specs_of
from fedcomp.compressors.model import statistics as S
from fedcomp.compressors.model.base import dense_bytes
from fedcomp.compressors.model.bwcp import BWCP, BWCPCompressor, BWCPParams
from fedcomp.compressors.model.structure import Architecture
from fedcomp.data import load_dataset
from fedcomp.flower import statistics_reply
from fedcomp.flower.recalibration import (
    MESSAGE_TYPE,
    apply_reports,
    judge_statistics,
    statistics_messages,
)
from fedcomp.messages import METRICS_KEY, PAYLOAD_KEY, payload_record
from fedcomp.strategies.replies import ReplyPolicy, ReplyRejected

RESNET = Architecture("resnet20", (1, 28, 28), 10)


def _bwcp_model(seed: int = 0) -> tuple[torch.nn.Module, BWCPCompressor]:
    torch.manual_seed(seed)
    bwcp = BWCPCompressor(BWCPParams(), RESNET)
    model = RESNET.build(bwcp.bwcp_edits)
    model.load_state_dict(bwcp.to_bwcp(RESNET.build().state_dict()))
    with torch.no_grad():  # a γ unlike the identity init, so Σ_N is not trivially I/g
        for m in model.modules():
            if isinstance(m, BWCP):
                m.weight.uniform_(0.5, 1.5)
    return model.eval(), bwcp


def test_one_batch_gives_the_training_statistics_and_whitening():
    """From one batch's moments, set_statistics reproduces what training computes on that batch (eq. 3-5)."""
    model, _ = _bwcp_model()
    x = torch.randn(24, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    moments, examples = S.measure(model, [x])
    assert examples == 24
    S.apply(model, moments)
    stem = model.bn1
    with torch.no_grad():
        z = model.conv1(x)
        stem.calibrating = True  # the batch's whitening, no moving average
        w = stem.whitening(F.batch_norm(z, None, None, None, None, True, 0.0, stem.eps))
        stem.calibrating = False
    assert torch.allclose(stem.running_mean, z.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(stem.running_var, z.var((0, 2, 3), unbiased=False), rtol=1e-5)
    assert torch.allclose(stem.running_whitening, w, atol=1e-5)
    assert not torch.allclose(w, torch.eye(16).expand_as(w), atol=1e-2)  # a real whitening, not the identity


def test_moments_are_linear_so_clients_combine_to_the_union():
    """Two clients' reports, weighted by examples, are the moments of both batches measured together."""
    model, _ = _bwcp_model()
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(16, 1, 28, 28, generator=gen), torch.randn(8, 1, 28, 28, generator=gen) + 0.5
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (ma, na), (mb, nb) = S.measure(model, [a]), S.measure(model, [b])
    together, n = S.measure(model, [a, b])
    combined = S.combine([(na, ma), (nb, mb)])
    assert n == na + nb == 24 and list(combined) == list(together)
    for key in together:
        assert torch.allclose(combined[key].float(), together[key], atol=1e-5), key
    # Measuring leaves the model as it was (eval mode, buffers untouched).
    assert not model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.usefixtures("task_identity")
def test_the_whole_round_trip_from_server_message_to_client_reply_to_statistics():
    """statistics_messages → the client's statistics_reply → judge_statistics → apply_reports, real bytes."""
    model, _ = _bwcp_model()
    state = OrderedDict(model.state_dict())
    structure = BWCPCompressor(BWCPParams(), RESNET).bwcp_edits
    data = load_dataset("mnist5k", "", False, 200, 0).train.subset(torch.arange(100).numpy())
    messages, payload_bytes = statistics_messages([7, 8], state, structure, ConfigRecord({}), 64, 1e6)
    assert len(messages) == 2 and messages[0].metadata.message_type == MESSAGE_TYPE
    assert payload_bytes > 4 * sum(v.numel() for v in state.values() if v.is_floating_point())
    specs = S.statistics_specs(model)

    # As a user's own ClientApp calls it: a model function and batches of inputs.
    def net() -> torch.nn.Module:
        return RESNET.build()

    replies = [statistics_reply(m, net, (x for x, _ in data.batches(32))) for m in messages]
    reports = [judge_statistics(r, specs, 1e6, ReplyPolicy(num_partitions=None, max_examples=1000)) for r in replies]
    assert [n for n, _ in reports] == [64, 64]  # capped at statistics-samples
    server_copy = RESNET.build(structure)
    server_copy.load_state_dict(state)
    new = apply_reports(server_copy, reports, 1e6)
    assert new is not None and list(new) == list(state)
    assert not torch.allclose(new["bn1.running_mean"], state["bn1.running_mean"])  # measured, not kept
    rebuilt = RESNET.build(structure)
    rebuilt.load_state_dict(new)
    with torch.no_grad():
        assert math.isfinite(float(rebuilt.eval()(next(data.batches(8))[0]).sum()))


def _statistics_reply(payload: bytes | None, **metrics) -> Message:
    sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=3, message_type=MESSAGE_TYPE)
    records = {METRICS_KEY: MetricRecord(metrics)} if metrics else {}
    if payload is not None:
        records[PAYLOAD_KEY] = payload_record(payload)
    return Message(RecordDict(records), reply_to=sent)


@pytest.mark.usefixtures("task_identity")
def test_hostile_statistics_replies_are_refused_with_a_reason():
    model, _ = _bwcp_model()
    specs = S.statistics_specs(model)
    good, _ = S.measure(model, [torch.randn(8, 1, 28, 28)])
    policy = ReplyPolicy(num_partitions=None, max_examples=1000)
    assert judge_statistics(_statistics_reply(S.encode(good), **{"num-examples": 8}), specs, 1e6, policy)[0] == 8

    def tampered(key: str, value: float) -> bytes:
        bad = OrderedDict((k, v.clone()) for k, v in good.items())
        bad[key].view(-1)[0] = value
        return S.encode(bad)

    cases = {
        "not finite": (tampered("bn1.mean", math.nan), {"num-examples": 8}),
        "exceed the bound": (tampered("bn1.cov", 1e9), {"num-examples": 8}),
        "expected 38": (S.encode(OrderedDict(list(good.items())[:-1])), {"num-examples": 8}),
        # A well-formed container (valid CRC) whose covariance claims another group size.
        "bn1.cov": (
            S.encode(OrderedDict((k, torch.zeros(2, 8, 8) if k == "bn1.cov" else v) for k, v in good.items())),
            {"num-examples": 8},
        ),  # fmt: skip
        "undecodable": (b"\x00" * 40, {"num-examples": 8}),
        "num-examples": (S.encode(good), {"num-examples": 10**6}),
        "lacks metrics": (S.encode(good), {}),
    }
    for why, (payload, metrics) in cases.items():
        with pytest.raises(ReplyRejected) as refused:
            judge_statistics(_statistics_reply(payload, **metrics), specs, 1e6, policy)
        assert why in refused.value.reason, refused.value.reason
    model_payload = pack("identity", {}, specs_of(good), dense_bytes(good.values()))
    with pytest.raises(DecodeError, match="made by 'identity'"):  # a model payload is not a report
        S.decode(model_payload, specs, 1e6)


def test_bwcp_asks_for_statistics_only_before_its_pruning():
    bwcp = BWCPCompressor(BWCPParams(prune_at=[3]), RESNET)
    edits = bwcp.bwcp_edits
    assert bwcp.statistics_wanted(3, edits, last=False) == 512
    assert bwcp.statistics_wanted(2, edits, last=False) == 0
    assert bwcp.statistics_wanted(3, (), last=False) == 0  # the configured model: nothing to recalibrate yet
    final_only = BWCPCompressor(BWCPParams(recalibrate_samples=100), RESNET)
    assert final_only.statistics_wanted(5, edits, last=True) == 100
    assert final_only.statistics_wanted(5, edits, last=False) == 0
    off = BWCPCompressor(BWCPParams(prune_at=[3], recalibrate=False), RESNET)
    assert off.statistics_wanted(3, edits, last=False) == 0
    bwcp.prunes_done = 1
    assert bwcp.statistics_wanted(3, edits, last=True) == 0


def test_bwcp_asks_for_statistics_before_evaluation_only_when_told_and_only_while_it_has_bwcp_modules():
    default = BWCPCompressor(BWCPParams(prune_at=[3]), RESNET)
    edits = default.bwcp_edits
    assert default.statistics_wanted(1, edits, last=False, evaluating=True) == 0  # recalibrate_eval is off by default
    asked = BWCPCompressor(BWCPParams(prune_at=[3], recalibrate=False, recalibrate_eval=True), RESNET)
    assert asked.statistics_wanted(1, edits, last=False, evaluating=True) == 512
    assert asked.statistics_wanted(1, edits, last=False) == 0  # not before a broadcast that prunes nothing
    assert asked.statistics_wanted(3, edits, last=False) == 0  # its pruning's own round is off (recalibrate)
    assert asked.statistics_wanted(1, (), last=False, evaluating=True) == 0  # the configured model: no BWCP yet
    asked.prunes_done = 1  # after the last pruning the model is plain BatchNorm again
    assert asked.statistics_wanted(4, edits, last=False, evaluating=True) == 0


def test_a_report_the_parser_cannot_read_is_a_decode_error_not_a_crash(monkeypatch):
    """Whatever the report reader raises on input it was not written for reaches the server as a DecodeError,
    which judging turns into that client's recorded failure (as every codec's decoder)."""
    moments = OrderedDict({"bn.mean": torch.zeros(4), "bn.cov": torch.ones(4)})
    payload = S.encode(moments)
    specs = specs_of(moments)
    assert torch.equal(S.decode(payload, specs, 1e6)["bn.cov"], moments["bn.cov"])

    def broken(parsed):
        raise IndexError("index 7 is out of bounds")

    monkeypatch.setattr(S, "read_whole", broken)
    with pytest.raises(DecodeError, match="statistics report: malformed \\(IndexError"):
        S.decode(payload, specs, 1e6)
