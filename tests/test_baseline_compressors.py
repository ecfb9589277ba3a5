"""The peers' baselines against their papers' own properties: QSGD, TernGrad, (EF-)signSGD, PowerSGD.

Expectations come from the papers (unbiasedness, Lemma 3.1's variance bound, the ℓ₁ scale, exactness at
full rank, the power method converging under warm start), not from the code's constants; every payload
goes through its bytes and back (round trips and damaged payloads for every registered codec are in
test_update_compressors.py, hostile ones in test_hostile_payloads.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch

from fedcomp.coding import DecodeError, DecodeLimits, specs_of
from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.compressors.update.base import EncodeContext
from fedcomp.compressors.update.feedback import RESIDUAL_PREFIX, encode_with_feedback
from fedcomp.compressors.update.powersgd import Q_PREFIX
from tests.helpers import update_compressor
from tests.payloads import Frame

make = update_compressor


def through_bytes(codec, update, state=None, ctx=None):
    """Encode, decode the payload; the decoded update must be what the encoder says it sent."""
    enc = codec.encode(update, state or {}, ctx or EncodeContext(1, 0, 4))
    dec = codec.decode(enc.payload, DecodeLimits.for_specs(specs_of(update)))
    assert all(torch.equal(dec[k], enc.sent[k]) for k in update)
    return enc, dec


def vector(n: int, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return OrderedDict(v=torch.from_numpy(rng.laplace(size=n).astype(np.float32)))


def monte_carlo(name: str, update, draws: int, **params) -> torch.Tensor:
    """Decoded updates over ``draws`` independent seeds, stacked."""
    return torch.stack([through_bytes(make(name, seed=s, **params), update)[1]["v"] for s in range(draws)])


# ----------------------------------------------------------------------------- QSGD


@pytest.mark.parametrize("levels", [1, 4])
def test_qsgd_is_unbiased_and_within_lemma_3_1s_variance_bound(levels):
    n, draws = 64, 600
    upd = vector(n)
    v = upd["v"].double()
    samples = monte_carlo("qsgd", upd, draws, levels=levels, bucket_size=0).double()
    sd = samples.std(0)
    assert torch.all((samples.mean(0) - v).abs() <= 5 * sd / math.sqrt(draws) + 1e-6)  # E[Q_s(v)] = v
    mse = float(((samples - v) ** 2).sum(1).mean())
    bound = min(n / levels**2, math.sqrt(n) / levels) * float(v.pow(2).sum())
    assert mse <= bound  # Lemma 3.1: E‖Q_s(v) − v‖² ≤ min(n/s², √n/s)·‖v‖²
    # Every value is ‖v‖·l/s with an integer level l in 0..s (v is one bucket here).
    levels_seen = samples.abs() / v.norm() * levels
    assert torch.allclose(levels_seen, levels_seen.round(), atol=1e-4) and float(levels_seen.max()) <= levels + 1e-4


def test_qsgd_buckets_have_their_own_norms_and_more_levels_cost_more_bytes():
    upd = OrderedDict(a=torch.tensor([3.0, -4.0, 0.0, 0.0]), b=torch.tensor([0.0, 1e-3]))
    _, dec = through_bytes(make("qsgd", levels=1, bucket_size=2), upd)
    # Bucket {3, −4} has norm 5, so a nonzero there is ±5; bucket {0, 0} sends nothing; b's bucket ±1e-3.
    assert set(dec["a"][:2].abs().tolist()) <= {0.0, 5.0} and dec["a"][2:].abs().sum() == 0
    assert all(x == 0 or x == pytest.approx(1e-3) for x in dec["b"].abs().tolist())
    big = vector(20_000, 3)
    sizes = [len(make("qsgd", levels=s).encode(big, {}, EncodeContext()).payload) for s in (1, 4, 64)]
    assert sizes[0] < sizes[1] < sizes[2] < 20_000 * 4  # all below fp32


# ----------------------------------------------------------------------------- TernGrad


def test_terngrad_is_unbiased_ternary_with_the_max_as_its_scale():
    n, draws = 48, 600
    upd = vector(n, 1)
    g = upd["v"].double()
    samples = monte_carlo("terngrad", upd, draws).double()
    s = float(g.abs().max())
    assert set(torch.unique(samples.abs().round(decimals=5)).tolist()) <= {0.0, round(s, 5)}
    assert torch.all(samples * torch.sign(g) >= 0)  # a nonzero keeps g's sign
    sd = samples.std(0)
    assert torch.all((samples.mean(0) - g).abs() <= 5 * sd / math.sqrt(draws) + 1e-6)  # E[g̃] = g


def test_terngrad_clipping_lowers_the_scale_to_c_sigma():
    upd = vector(5_000, 2)
    g = upd["v"]
    _, dec = through_bytes(make("terngrad", clip_sigma=2.5), upd)
    assert float(dec["v"].abs().max()) == pytest.approx(2.5 * float(g.std()), rel=1e-5)
    assert 2.5 * float(g.std()) < float(g.abs().max())  # so the clip did lower it


def test_terngrad_sends_under_two_bits_a_coordinate_and_far_less_when_b_is_sparse():
    sparse = OrderedDict(v=torch.zeros(10_000))
    sparse["v"][[5, 500]] = torch.tensor([100.0, -1e-6])  # s = 100: almost every b is 0
    half = OrderedDict(v=torch.where(torch.arange(10_000) % 2 == 0, 1.0, 0.0))  # every other b is 1
    full = OrderedDict(v=torch.ones(10_000))  # |g|/s = 1: every coordinate is ±s
    size = {k: len(make("terngrad").encode(u, {}, EncodeContext()).payload) for k, u in
            {"sparse": sparse, "half": half, "full": full}.items()}  # fmt: skip
    assert size["sparse"] < 100
    assert size["full"] < 10_000 / 8 + 100  # a full index set costs its count: one sign bit each
    assert size["half"] < 2 * 10_000 / 8  # the paper's 2 bits a coordinate is the ceiling


# ----------------------------------------------------------------------------- signSGD


def test_scaled_sign_is_the_l1_mean_times_the_sign_at_one_bit_a_coordinate():
    upd = OrderedDict(w=torch.tensor([[2.0, -1.0], [0.0, -5.0]]), b=torch.tensor([0.5]))
    enc, dec = through_bytes(make("signsgd"), upd)
    assert torch.equal(dec["w"], torch.tensor([[2.0, -2.0], [2.0, -2.0]]))  # ‖w‖₁/4 = 2; a zero goes out as +
    assert torch.equal(dec["b"], torch.tensor([0.5]))
    big = vector(80_000)
    header = len(make("signsgd").encode(OrderedDict(v=torch.zeros(0)), {}, EncodeContext()).payload)
    assert len(make("signsgd").encode(big, {}, EncodeContext()).payload) == header + 80_000 // 8  # + 4 B each


def test_ef_signsgd_carries_the_error_to_the_next_round_and_signsgd_does_not():
    first, second = vector(1_000, 4), vector(1_000, 5)
    ef, plain = make("ef_signsgd"), make("signsgd")
    assert ef.error_feedback and not plain.error_feedback
    out = encode_with_feedback(ef, first, {}, EncodeContext(1, 0, 1))
    residual = out.state[RESIDUAL_PREFIX + "v"]
    assert torch.allclose(residual, first["v"] - out.sent["v"])  # e = p − C(p)
    nxt = encode_with_feedback(ef, second, out.state, EncodeContext(2, 0, 1))
    corrected = second["v"] + residual
    assert torch.allclose(nxt.sent["v"], corrected.abs().mean() * torch.where(corrected < 0, -1.0, 1.0))
    assert encode_with_feedback(plain, first, {}, EncodeContext(1, 0, 1)).state == {}


# ----------------------------------------------------------------------------- PowerSGD


def matrix_update(n: int, m: int, rank: int, seed: int = 0, noise: float = 0.0) -> OrderedDict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(n, rank, generator=gen) @ torch.randn(rank, m, generator=gen)
    return OrderedDict(w=low + noise * torch.randn(n, m, generator=gen), b=torch.randn(n, generator=gen))


def test_powersgd_is_exact_at_full_rank_and_sends_vectors_dense():
    upd = OrderedDict(conv=torch.randn(6, 3, 2, 2, generator=torch.Generator().manual_seed(0)), b=torch.randn(6))
    enc, dec = through_bytes(make("powersgd", rank=6), upd)  # conv is 6 × 12: rank 6 is full
    assert torch.allclose(dec["conv"], upd["conv"], atol=1e-5) and torch.equal(dec["b"], upd["b"])
    body = len(enc.payload) - len(make("powersgd", rank=6).encode(OrderedDict(), {}, EncodeContext()).payload)
    assert body >= 4 * (6 * 6 + 12 * 6 + 6)  # P̂ (6×6), Q (12×6), the bias dense


def test_powersgd_warm_start_runs_the_power_method_to_the_best_rank_r_error():
    strong, weak = matrix_update(60, 40, rank=2), matrix_update(60, 40, rank=6, seed=1)
    upd = OrderedDict(w=strong["w"] + 0.2 * weak["w"], b=strong["b"])  # a clear gap after σ₂
    m = upd["w"]
    s = torch.linalg.svdvals(m.double())
    best = float(s[2:].pow(2).sum() / s.pow(2).sum())  # Eckart–Young: the rank-2 optimum
    codec = make("powersgd", rank=2, error_feedback=False)
    state, errors = {}, []
    for r in range(1, 9):  # the same matrix each round: warm start iterates the power method on it
        enc, dec = through_bytes(codec, upd, state, EncodeContext(r, 0, 1))
        state = enc.state
        errors.append(float((m - dec["w"]).pow(2).sum() / m.pow(2).sum()))
        assert tuple(state[Q_PREFIX + "w"].shape) == (40, 2)
    assert errors[-1] <= errors[0] and errors[-1] == pytest.approx(best, rel=0.02)
    cold = make("powersgd", rank=2, error_feedback=False, warm_start=False)
    cold_errors = [
        float((m - through_bytes(cold, upd, {}, EncodeContext(r, 0, 1))[1]["w"]).pow(2).sum() / m.pow(2).sum())
        for r in range(1, 4)
    ]
    assert len(set(cold_errors)) == 1 and cold_errors[0] > errors[-1]  # without it every round is one step


def test_powersgd_error_feedback_keeps_what_the_factors_missed():
    upd = matrix_update(30, 20, rank=5, seed=1)
    codec = make("powersgd", rank=1)
    assert codec.error_feedback
    out = encode_with_feedback(codec, upd, {}, EncodeContext(1, 0, 1))
    assert torch.allclose(out.state[RESIDUAL_PREFIX + "w"], upd["w"] - out.sent["w"])
    assert torch.count_nonzero(out.state[RESIDUAL_PREFIX + "b"]) == 0  # the dense bias left nothing behind


@pytest.mark.parametrize(
    "name, params",
    [
        ("qsgd", {"levels": 0}),
        ("qsgd", {"bucket_size": -1}),
        ("powersgd", {"rank": 0}),
        ("terngrad", {"clip_sigma": -1}),
    ],
)
def test_bad_parameters_are_config_errors_naming_the_key(name, params):
    from fedcomp.config import ConfigError

    key = next(iter(params))
    with pytest.raises(ConfigError, match=f"uplink.{key}"):
        UPDATE_COMPRESSORS.get(name).parse_params(params, "uplink")


@pytest.mark.parametrize(
    "name, forged, why",
    [
        ("powersgd", '{"rank": 3}', "rank 3 needs"),  # the body was sized for rank 2
        ("powersgd", '{"rank": 0}', "rank in 1"),
        ("qsgd", '{"levels": 1, "bucket_size": 512}', "level"),  # levels up to 16 were sent
        ("qsgd", '{"levels": 16}', "params must be"),
        ("signsgd", '{"x": 1}', "unexpected params"),
    ],
)
def test_forged_parameters_are_refused_with_a_valid_crc(name, forged, why):
    upd = matrix_update(8, 6, rank=2)
    payload = make(name).encode(upd, {}, EncodeContext()).payload
    with pytest.raises(DecodeError, match=why):
        make(name).decode(Frame.parse(payload).with_params(forged).to_bytes(), DecodeLimits.for_specs(specs_of(upd)))


@pytest.mark.parametrize("name", ["signsgd", "terngrad", "qsgd"])
def test_a_negative_scale_or_norm_is_refused_naming_its_tensor(name):
    upd = OrderedDict(a=torch.ones(3), b=torch.linspace(-1, 1, 7))
    frame = Frame.parse(make(name).encode(upd, {}, EncodeContext()).payload)
    body = bytearray(frame.body)
    body[4:8] = np.float32(-1.0).tobytes()  # the second tensor's scale (its bucket's norm, for QSGD)
    with pytest.raises(DecodeError, match="tensor 'b'.* negative|negative.*tensor 'b'"):
        make(name).decode(frame.with_body(bytes(body)).to_bytes(), DecodeLimits.for_specs(specs_of(upd)))
