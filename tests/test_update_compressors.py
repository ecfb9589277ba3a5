"""Uplink compressors on real tensors: bytes and back, and each method's invariants."""

from __future__ import annotations

import functools
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch

from fedcomp.coding import ChecksumError, DecodeError, DecodeLimits, TruncatedPayloadError, specs_of
from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.compressors.update.base import EncodeContext
from fedcomp.compressors.update.dgc import WARMUP_SPARSITY, warmup_density
from fedcomp.compressors.update.feedback import RESIDUAL_PREFIX, encode_with_feedback
from fedcomp.compressors.update.surp import SurpParams, replay, run_encoder, shared_order, write_stream
from fedcomp.config import ConfigError
from fedcomp.models import build_model
from tests.helpers import update_compressor


def laplace_update(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    shapes = {"conv.weight": (20, 1, 5, 5), "conv.bias": (20,), "fc.weight": (500, 800), "fc.bias": (500,)}
    return OrderedDict((k, torch.from_numpy(rng.laplace(size=s).astype(np.float32))) for k, s in shapes.items())


make = functools.partial(update_compressor, seed=3)


ALL = sorted(UPDATE_COMPRESSORS)
# Every registered compressor with its defaults, plus the SuRP options that change the wire format.
ITERATIVE = {"mode": "iterative"}
VARIANTS = [(name, {}) for name in ALL] + [
    ("surp", {**ITERATIVE}),
    ("surp", {**ITERATIVE, "algorithm": 1}),
    ("surp", {**ITERATIVE, "normalization": "layer"}),
    ("surp", {"stage_ratio": 1.25}),
    ("topk", {"allocation": "global", "values": "int8"}),
    ("randomk", {"allocation": "global", "values": "sign"}),
    ("dgc", {"allocation": "global"}),
]
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in p.items()) for name, p in VARIANTS]


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=VARIANT_IDS)
def test_round_trip_through_bytes_matches_what_the_encoder_says_it_sent(name, params):
    upd = laplace_update()
    comp = make(name, **params)
    enc = comp.encode(upd, {}, EncodeContext(1, 0, 4))
    assert isinstance(enc.payload, bytes)
    dec = comp.decode(enc.payload, DecodeLimits.for_specs(specs_of(upd)))
    assert list(dec) == list(upd)
    for k in upd:
        assert dec[k].shape == upd[k].shape and torch.equal(dec[k], enc.sent[k])


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=VARIANT_IDS)
def test_damage_in_transit_is_refused_by_the_crc_before_any_codec_sees_it(name, params):
    """A bit flipped or a payload cut on the way, the CRC left as sent: the checksum (or the magic or the length
    check) refuses it, and the codec's own parser never runs. A forger recomputes the CRC: the fuzz behind valid
    CRCs, which does reach every parser, is test_hostile_payloads.py's test_damaged_bodies_behind_a_valid_crc_*."""
    upd = laplace_update(1)
    comp = make(name, **params)
    payload = comp.encode(upd, {}, EncodeContext()).payload
    limits = DecodeLimits.for_specs(specs_of(upd))

    def reached(*args, **kwargs):
        raise AssertionError("a payload damaged in transit reached the codec's parser")

    comp.decode_body = reached
    rng = np.random.default_rng(0)
    refused: dict[str, int] = {}
    for _ in range(50):
        data = bytearray(payload)
        at = int(rng.integers(len(data)))
        data[at] ^= 1 << int(rng.integers(8))
        with pytest.raises(DecodeError) as flipped:
            comp.decode(bytes(data), limits)
        assert isinstance(flipped.value, ChecksumError) or (at < 4 and "bad magic" in str(flipped.value)), flipped.value
        with pytest.raises((ChecksumError, TruncatedPayloadError)) as cut:
            comp.decode(payload[: rng.integers(len(payload))], limits)
        for exc in (flipped.value, cut.value):
            refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
    print(f"{name} {params}: 100 payloads damaged in transit, refused by {refused}")


@pytest.mark.parametrize("name", ["topk", "randomk", "rtopk"])
def test_sparsifiers_send_k_coordinates(name):
    upd = laplace_update()
    enc = make(name, density=0.01).encode(upd, {}, EncodeContext())
    for k, v in upd.items():
        assert int((enc.sent[k] != 0).sum()) == max(1, math.ceil(0.01 * v.numel()))


def test_topk_sends_exactly_the_largest_values_and_fp16_halves_the_value_bytes():
    upd = laplace_update()
    enc = make("topk", density=0.01).encode(upd, {}, EncodeContext())
    flat, sent = upd["fc.weight"].reshape(-1), enc.sent["fc.weight"].reshape(-1)
    k = math.ceil(0.01 * flat.numel())
    assert set(torch.nonzero(sent).squeeze(1).tolist()) == set(torch.topk(flat.abs(), k).indices.tolist())
    assert torch.equal(sent[sent != 0], flat[sent != 0])
    half = make("topk", density=0.01, values="fp16").encode(upd, {}, EncodeContext())
    n_values = sum(int((v != 0).sum()) for v in enc.sent.values())
    assert len(enc.payload) - len(half.payload) == 2 * n_values


def test_rtopk_choice_is_uniform_over_the_top_r():
    """Chi-square test, fixed seeds: each of the top r is sent equally often."""
    flat = torch.arange(1, 1001, dtype=torch.float32)  # top r = the last r values
    comp = make("rtopk", density=0.01, r_factor=4.0, error_feedback=False)
    k, r = 10, 40
    counts = np.zeros(1000)
    trials = 2000
    for t in range(trials):
        enc = comp.encode({"w": flat}, {}, EncodeContext(server_round=t + 1))
        counts[torch.nonzero(enc.sent["w"]).squeeze(1).numpy()] += 1
    assert counts[: 1000 - r].sum() == 0
    top = counts[1000 - r :]
    expected = trials * k / r
    chi2 = float(((top - expected) ** 2 / expected).sum())
    assert chi2 < 62.4  # the 99% quantile of chi-square with 39 degrees of freedom


def test_randomk_rescaling_is_unbiased():
    flat = torch.linspace(-1, 1, 200)
    comp = make("randomk", density=0.1, rescale=True, error_feedback=False)
    mean = torch.zeros(200)
    for t in range(400):
        mean += comp.encode({"w": flat}, {}, EncodeContext(server_round=t + 1)).sent["w"] / 400
    assert float((mean - flat).abs().mean()) < 0.15


def test_error_feedback_keeps_what_was_not_sent():
    upd = laplace_update()
    comp = make("topk", density=0.01)
    first = encode_with_feedback(comp, upd, {}, EncodeContext(1))
    for k in upd:
        assert torch.allclose(first.state[RESIDUAL_PREFIX + k] + first.sent[k], upd[k])
    zero = OrderedDict((k, torch.zeros_like(v)) for k, v in upd.items())
    second = encode_with_feedback(comp, zero, first.state, EncodeContext(2))
    # With a zero update, round 2 sends the largest of what round 1 left behind.
    resid = first.state[RESIDUAL_PREFIX + "fc.weight"].reshape(-1)
    sent2 = second.sent["fc.weight"].reshape(-1)
    assert torch.equal(sent2[sent2 != 0], resid[sent2 != 0]) and float(sent2.abs().max()) == float(resid.abs().max())
    off = make("topk", density=0.01, error_feedback=False)
    assert not any(k.startswith(RESIDUAL_PREFIX) for k in encode_with_feedback(off, upd, {}, EncodeContext()).state)


# ----------------------------------------------------------------------------- DGC


def test_dgc_warmup_schedule():
    assert [round(1 - warmup_density(0.001, r, 1), 6) for r in range(1, 7)] == [*WARMUP_SPARSITY, 0.999]
    assert [warmup_density(0.001, r, 2) for r in (1, 2, 3)] == [0.25, 0.25, 1 - 0.9375]
    assert warmup_density(0.001, 1, 0) == 0.001
    enc = make("dgc", density=0.001, warmup_rounds=1).encode(laplace_update(), {}, EncodeContext(1))
    assert enc.metrics["target_density"] == 0.25


def test_dgc_momentum_correction_and_factor_masking():
    g = OrderedDict(w=torch.tensor([[1.0, 0.5, -0.125, 0.25]]))
    comp = make("dgc", density=0.25, momentum=0.5, dense_1d=False)
    e1 = comp.encode(g, {}, EncodeContext(1))
    assert e1.sent["w"].tolist() == [[1.0, 0.0, 0.0, 0.0]]  # top-1 of v = g
    assert e1.state["u/w"].tolist() == [[0.0, 0.5, -0.125, 0.25]]  # masked where sent
    assert e1.state["v/w"].tolist() == [[0.0, 0.5, -0.125, 0.25]]
    e2 = comp.encode(g, e1.state, EncodeContext(2))
    # u = 0.5·u + g; v = v + u: the velocity of coordinate 1 is 0.5 + (0.25 + 0.5) = 1.25
    assert e2.sent["w"].tolist() == [[0.0, 1.25, 0.0, 0.0]]
    unmasked = make("dgc", density=0.25, momentum=0.5, dense_1d=False, momentum_masking=False)
    assert unmasked.encode(g, {}, EncodeContext(1)).state["u/w"].tolist() == [[1.0, 0.5, -0.125, 0.25]]


def test_dgc_warmup_follows_the_papers_densities():
    """Lin et al. 2018, section 3: sparsity 75%, 93.75%, 98.4375%, 99.6%, then 99.9% (the paper's numbers)."""
    paper = [0.75, 0.9375, 0.984375, 0.996, 0.999]
    sparsity = [1 - warmup_density(0.001, r, 4) for r in range(1, 25)]
    for stage, expected in enumerate(paper):
        assert sparsity[4 * stage : 4 * stage + 4] == pytest.approx([expected] * 4, abs=1e-12)
    assert sparsity[16:] == pytest.approx([0.999] * 8)  # at the paper's target, warm-up is the first 16 rounds
    assert sum(s < 0.999 - 1e-12 for s in sparsity) == 16


def test_dgc_sends_dense_tensors_with_ordinary_momentum():
    """A constant gradient of 1 on a bias (sent dense) is sent as 1, 1.9, 2.71 with momentum 0.9: no masking."""
    comp = make("dgc", density=0.01, momentum=0.9)
    g = OrderedDict(w=torch.zeros(4, 25), b=torch.ones(3))
    state, sent = {}, []
    for r in range(1, 4):
        enc = comp.encode(g, state, EncodeContext(r))
        state = enc.state
        sent.append(enc.sent["b"].tolist())
    assert sent == [pytest.approx([x] * 3) for x in (1.0, 1.9, 2.71)]
    assert "v/b" not in state  # no accumulator for an uncompressed tensor


def test_dgc_sampled_threshold_still_gives_exact_top_k_and_dense_biases():
    upd = laplace_update(2)
    enc = make("dgc", density=0.01, momentum_correction=False).encode(upd, {}, EncodeContext())
    flat, sent = upd["fc.weight"].reshape(-1), enc.sent["fc.weight"].reshape(-1)
    k = math.ceil(0.01 * flat.numel())
    assert set(torch.nonzero(sent).squeeze(1).tolist()) == set(torch.topk(flat.abs(), k).indices.tolist())
    assert torch.equal(enc.sent["fc.bias"], upd["fc.bias"])  # 1-D tensors sent dense


def test_dgc_clipping_scales_by_inverse_sqrt_of_clients():
    g = OrderedDict(w=torch.full((1, 100), 1.0))  # norm 10
    enc = make("dgc", density=1.0, clip_norm=4.0, momentum_correction=False).encode(g, {}, EncodeContext(1, 0, 4))
    assert math.isclose(float(enc.sent["w"].norm()), 4.0 / 2.0, rel_tol=1e-5)


def test_bad_params_are_config_errors():
    for name, params, key in [
        ("topk", {"density": 0}, "uplink.density"),
        ("rtopk", {"r_factor": 0.5}, "uplink.r_factor"),
        ("dgc", {"momentum": 1.0}, "uplink.momentum"),
        ("surp", {"density": 2}, "uplink.density"),
        ("topk", {"values": "int4"}, "uplink.values"),
        ("topk", {"allocation": "layerwise"}, "uplink.allocation"),
        ("surp", {"nonsense": 1}, "uplink.nonsense"),
        ("surp", {"algorithm": 3}, "uplink.algorithm"),
        ("surp", {"normalization": "net"}, "uplink.normalization"),
        ("surp", {"mode": "greedy"}, "uplink.mode"),
        ("surp", {"algorithm": 1}, "uplink.algorithm"),  # Algorithm 1 is iterative only
        ("surp", {"normalization": "layer"}, "uplink.normalization"),  # so are per-layer norms
        ("surp", {"stage_ratio": 1.0}, "uplink.stage_ratio"),
        ("topk", {"max_bytes": -1}, "uplink.max_bytes"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            UPDATE_COMPRESSORS.get(name).parse_params(params, "uplink")


# ----------------------------------------------------------------------------- byte budgets

SPARSIFIERS = ["topk", "randomk", "rtopk", "dgc", "surp", "stc"]
BUDGET_VARIANTS = [(name, {}) for name in SPARSIFIERS] + [
    ("surp", {**ITERATIVE}),
    ("topk", {"values": "fp16"}),
    ("topk", {"values": "int8", "allocation": "global"}),
    ("rtopk", {"allocation": "global"}),
    ("dgc", {"allocation": "global"}),
]


@pytest.mark.parametrize(("name", "params"), BUDGET_VARIANTS, ids=lambda x: x if isinstance(x, str) else str(x))
def test_a_byte_budget_bounds_the_whole_payload_and_the_decoder_still_rebuilds_sent(name, params):
    rng = np.random.default_rng(21)
    for trial in range(3):
        upd = laplace_update(30 + trial)
        if trial == 2:  # a heavier tail than Laplacian
            upd = OrderedDict(
                (k, v * torch.from_numpy(rng.pareto(2.0, v.shape).astype(np.float32))) for k, v in upd.items()
            )
        limits = DecodeLimits.for_specs(specs_of(upd))
        sizes = []
        for budget in (130, 200, 400, 1000, 3000, 12_000):
            comp = make(name, density=0.02, max_bytes=budget, error_feedback=False, **params)
            enc = comp.encode(upd, {}, EncodeContext(1, 0, 4))
            assert len(enc.payload) <= budget, (budget, len(enc.payload))
            dec = comp.decode(enc.payload, limits)
            assert all(torch.equal(dec[k], enc.sent[k]) for k in upd)
            sizes.append(len(enc.payload))
        assert sizes[-1] > sizes[0] and sizes[3] >= 0.8 * 1000  # the budget is used, not just respected


@pytest.mark.parametrize("name", SPARSIFIERS)
def test_a_budget_below_the_container_is_a_clear_error(name):
    with pytest.raises(ValueError, match="max_bytes"):
        make(name, density=0.01, max_bytes=20).encode(laplace_update(), {}, EncodeContext())


def test_an_unbinding_budget_changes_nothing():
    upd = laplace_update(5)
    for name in SPARSIFIERS:
        free = make(name, density=0.01).encode(upd, {}, EncodeContext())
        capped = make(name, density=0.01, max_bytes=len(free.payload)).encode(upd, {}, EncodeContext())
        assert capped.payload == free.payload


# ----------------------------------------------------------------------------- SuRP


def _flats(seed=0, n=40_000):
    return [np.random.default_rng(seed).laplace(size=n)]


def test_surp_decoder_rebuilds_the_thresholds_bit_identically_on_long_runs():
    flats = _flats(1, 60_000)
    stream, coords, taus, stats = run_encoder(flats, SurpParams(density=0.05), seed=9)
    assert stats["iterations"] >= 3000
    coords2, taus2 = replay(stream, 60_000)
    assert np.array_equal(coords, coords2) and np.array_equal(taus, taus2)  # exact, not approximate


@pytest.mark.parametrize("mode", ["staged", "iterative"])
def test_surp_reconstruction_has_the_original_sign_and_no_larger_magnitude(mode):
    upd = laplace_update(4)
    enc = make("surp", density=0.01, mode=mode, error_feedback=False).encode(upd, {}, EncodeContext())
    for k, v in upd.items():
        s = enc.sent[k]
        nz = s != 0
        assert torch.equal(torch.sign(s[nz]), torch.sign(v[nz]))  # Remark 2
        assert bool((s.abs() <= v.abs() * (1 + 1e-6)).all())


def test_surp_distortion_falls_monotonically_with_iterations():
    flats = _flats(2, 20_000)
    stream, coords, taus, _ = run_encoder(flats, SurpParams(density=0.05), seed=1)
    u = np.abs(flats[0]) / np.abs(flats[0]).sum()
    recon = np.zeros_like(u)
    dist = [np.abs(u - recon).sum()]
    for c, t in zip(coords, taus, strict=True):
        recon[c] += t
        dist.append(np.abs(u - recon).sum())
    assert np.all(np.diff(dist) < 0)


def test_surp_refresh_always_makes_progress_on_laplacian_data():
    """The literal Algorithm 2 stalls here (candidate pool empties after ~β iterations)."""
    stream, coords, _, stats = run_encoder(_flats(3, 40_000), SurpParams(density=0.02), seed=2)
    assert stats["refreshes"] > 0 and len(stream.steps) and all(s >= 1 for s in stream.steps)
    assert len(stream.signs) == math.ceil(0.02 * 40_000)  # reached its target


def test_surp_index_cost_is_near_log_n_over_candidates():
    n = 200_000
    stream, _, _, stats = run_encoder(_flats(5, n), SurpParams(density=0.005), seed=3)
    bits = 8 * len(write_stream(stream))
    per_iter = bits / stats["iterations"]
    beta = math.log(n)
    # Pool ≈ β candidates: a skip costs about log2(n/β) + 1.5 bits; add one sign bit per new
    # coordinate and the refreshes (escape + Elias-γ(s) every ~β iterations). Measured: 18.9 bits
    # against log2(n/β) + 1.5 = 15.5 here; a literal log2(n) index would cost 17.6 + 1 sign bit.
    assert per_iter < math.log2(n / beta) + 1.5 + 1 + 3
    assert stats["refreshes"] < stats["iterations"] / 5


def test_surp_on_laplacian_data_follows_the_distortion_rate_function():
    """At low rate, (R, D) points lie close to D(R) = (1/λ)e^(−R) (nats per coordinate)."""
    n = 100_000
    flats = _flats(6, n)
    u = np.abs(flats[0]) / np.abs(flats[0]).sum()
    lam = 1 / u.mean()
    gaps = []
    for density in (0.002, 0.01, 0.03):
        stream, coords, taus, _ = run_encoder(flats, SurpParams(density=density), seed=4)
        rate = 8 * len(write_stream(stream)) * math.log(2) / n  # nats per coordinate
        recon = np.zeros(n)
        np.add.at(recon, coords, taus)
        d = np.abs(u - recon).mean()
        d_r = math.exp(-rate) / lam
        gaps.append(d / d_r)
    # Measured D / D(R): 1.012, 1.065, 1.221 (rate counts every payload bit, signs included).
    assert 1.0 <= gaps[0] < 1.03 and gaps[1] < 1.1 and gaps[2] < 1.3, gaps


def test_surp_byte_budget_truncates_to_a_decodable_prefix():
    upd = laplace_update(7)
    comp = make("surp", density=0.01, max_bytes=300, error_feedback=False, **ITERATIVE)
    enc = comp.encode(upd, {}, EncodeContext())
    dec = comp.decode(enc.payload, DecodeLimits.for_specs(specs_of(upd)))
    assert 290 <= len(enc.payload) <= 300  # the whole payload, container included
    assert all(torch.equal(dec[k], enc.sent[k]) for k in upd)


def test_shared_order_is_a_bijection_with_an_inverse():
    for n in (2, 3, 1000, 65_537):
        pos = np.arange(n)
        coords = shared_order(pos, n, seed=11)
        assert np.array_equal(np.sort(coords), pos)
        assert np.array_equal(shared_order(coords, n, seed=11, inverse=True), pos)
    assert not np.array_equal(shared_order(np.arange(1000), 1000, 1), shared_order(np.arange(1000), 1000, 2))


def test_surp_compresses_a_lenet_update_to_the_support_entropy_plus_a_few_bits():
    model = build_model("lenet5_caffe", (1, 28, 28), 10)
    rng = np.random.default_rng(0)
    upd = OrderedDict(
        (k, torch.from_numpy(rng.laplace(size=v.shape).astype(np.float32))) for k, v in model.state_dict().items()
    )
    enc = make("surp", density=0.001).encode(upd, {}, EncodeContext())
    nnz = sum(int((v != 0).sum()) for v in enc.sent.values())
    assert nnz == math.ceil(0.001 * 431_080)
    # Measured 718 B (13.3 bits per nonzero, the 36-byte container included): log2(n/k) = 9.96, plus
    # Golomb's 1.44, a sign bit and the header. The iterative form spends 21.6 bits on the same support.
    assert len(enc.payload) * 8 / nnz < math.log2(431_080 / nnz) + 3 + 1.0
    iterative = make("surp", density=0.001, **ITERATIVE).encode(upd, {}, EncodeContext())
    assert len(iterative.payload) > 1.4 * len(enc.payload)


# ----------------------------------------------------------------------------- SuRP Algorithm 1, normalization


def test_surp_algorithm_1_sends_a_positive_and_a_negative_coordinate_per_iteration():
    flats = [np.random.default_rng(12).laplace(size=30_000)]
    stream, coords, taus, stats = run_encoder(flats, SurpParams(density=0.02, algorithm=1), seed=5)
    u = flats[0] / np.abs(flats[0]).sum()
    assert stream.sides == 2 and len(stream.signs) == 0  # the slot gives the sign: no sign bits
    assert coords.size == 2 * stats["iterations"] and stats["iterations"] > 300
    assert np.all(u[coords[0::2]] > 0) and np.all(u[coords[1::2]] < 0)
    assert np.array_equal(taus[0::2], taus[1::2])  # one threshold per ± pair
    # The threshold is (1/λ)·log(n/(2β)); λ grows by n/(n − 2·log(n/(2β))) per iteration.
    n, beta = 30_000, math.log(30_000)
    assert stream.logf == pytest.approx(math.log(n / (2 * beta)))
    assert taus[0] == pytest.approx(stream.logf / stream.lam0)
    coords2, taus2 = replay(stream, n)
    assert np.array_equal(coords, coords2) and np.array_equal(taus, taus2)  # bit-identical
    recon = np.zeros(n)
    np.add.at(recon, coords, np.where(np.arange(coords.size) % 2 == 1, -taus, taus))
    nz = recon != 0
    assert np.all(np.sign(recon[nz]) == np.sign(u[nz])) and np.all(np.abs(recon) <= np.abs(u))  # Remark 2


def test_surp_algorithm_1_stops_when_one_sign_has_nothing_left():
    upd = OrderedDict(w=torch.from_numpy(np.abs(np.random.default_rng(1).laplace(size=5000)).astype(np.float32)))
    comp = make("surp", density=0.05, algorithm=1, error_feedback=False, **ITERATIVE)
    enc = comp.encode(upd, {}, EncodeContext())
    dec = comp.decode(enc.payload, DecodeLimits.for_specs(specs_of(upd)))
    assert torch.count_nonzero(dec["w"]) == 0 and torch.equal(dec["w"], enc.sent["w"])


def test_surp_global_normalization_spends_fewer_iterations_on_small_layers():
    """Per-layer ℓ₁ norms make a 20-coordinate bias layer dominate; one global norm does not."""
    upd = laplace_update(13)
    flats = [v.reshape(-1).numpy() for v in upd.values()]
    _, coords_layer, _, layer = run_encoder(flats, SurpParams(density=0.01, normalization="layer"), seed=1)
    _, coords_global, _, glob = run_encoder(flats, SurpParams(density=0.01, normalization="global"), seed=1)
    assert np.unique(coords_layer).size == np.unique(coords_global).size  # same target reached
    assert layer["iterations"] > 1.5 * np.unique(coords_layer).size
    assert glob["iterations"] < 1.2 * np.unique(coords_global).size
    comp = make("surp", density=0.01, normalization="global", **ITERATIVE)
    enc = comp.encode(upd, {}, EncodeContext())
    layer_payload = make("surp", density=0.01, normalization="layer", **ITERATIVE).encode(upd, {}, EncodeContext())
    assert len(enc.payload) < len(layer_payload.payload)


# ----------------------------------------------------------------------------- SuRP decoding, bounded


def _feistel_reference(positions, n, seed, inverse=False):
    """The shared order as first written (whole-array numpy): the compiled one must give the same bijection."""
    from fedcomp.compressors.update.surp import _round_keys

    m1, m2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
    half = max(1, (max(1, (n - 1).bit_length()) + 1) // 2)
    mask, h = np.uint64((1 << half) - 1), np.uint64(half)

    def f(x, key):
        z = (x + key) * m1
        z ^= z >> np.uint64(31)
        z *= m2
        z ^= z >> np.uint64(29)
        return z & mask

    keys = list(_round_keys(seed))
    x = np.asarray(positions, dtype=np.uint64).copy()
    todo = np.ones(x.shape, dtype=bool)
    while todo.any():
        left, right = x[todo] >> h, x[todo] & mask
        for k in reversed(keys) if inverse else keys:
            left, right = (right ^ f(left, k), left) if inverse else (right, left ^ f(right, k))
        x[todo] = (left << h) | right
        todo = x >= np.uint64(n)
    return x.astype(np.int64)


def test_shared_order_is_the_same_bijection_as_the_whole_array_reference():
    rng = np.random.default_rng(8)
    for n in (2, 3, 1000, 65_537, 431_080):
        pos = rng.integers(0, n, size=5000)
        for inverse in (False, True):
            assert np.array_equal(shared_order(pos, n, 21, inverse), _feistel_reference(pos, n, 21, inverse))


def test_pow_by_squaring_terminates_for_any_exponent():
    from fedcomp.compressors.update.surp_kernel import pow_by_squaring

    assert math.isnan(pow_by_squaring(1.5, -1)) and math.isnan(pow_by_squaring(1.5, -(1 << 63)))
    assert pow_by_squaring(1.0 + 1e-9, (1 << 63) - 1) == math.inf
    assert [pow_by_squaring(3.0, e) for e in range(6)] == [3.0**e for e in range(6)]


SURP_VARIANTS = [
    {**ITERATIVE, "normalization": "layer"},
    {**ITERATIVE, "algorithm": 1, "normalization": "layer"},
    {**ITERATIVE},
    {**ITERATIVE, "algorithm": 1},
]


@pytest.mark.parametrize("params", SURP_VARIANTS, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()) or "default")
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_surp_decoder_replays_in_chunks_bit_identically(monkeypatch, params, chunk):
    from fedcomp.compressors.update import surp

    monkeypatch.setattr(surp, "DECODE_CHUNK", chunk)  # chunk boundaries everywhere: the state must carry over
    upd = laplace_update(9)
    comp = make("surp", density=0.01, **params)
    enc = comp.encode(upd, {}, EncodeContext())
    dec = comp.decode(enc.payload, DecodeLimits.for_specs(specs_of(upd)))
    assert all(torch.equal(dec[k], enc.sent[k]) for k in upd)


@pytest.mark.parametrize("algorithm", [1, 2])
def test_surp_decoder_accepts_the_longest_stream_its_encoder_writes(algorithm):
    """density 1 on a tiny update: the encoder runs to its iteration cap; the decoder's bounds admit it."""
    upd = OrderedDict(w=torch.from_numpy(np.random.default_rng(4).laplace(size=(12, 10)).astype(np.float32)))
    comp = make("surp", density=1.0, algorithm=algorithm, error_feedback=False, **ITERATIVE)
    enc = comp.encode(upd, {}, EncodeContext())
    assert enc.metrics["iterations"] > 100
    dec = comp.decode(enc.payload, DecodeLimits.for_specs(specs_of(upd)))
    assert torch.equal(dec["w"], enc.sent["w"])


def _surp_payload(specs, symbols, steps, signs, lam0=None, params=None):
    """A SuRP payload written by the project's own stream writer, any field as given (λ₀ default: τ₀ = 1)."""
    from fedcomp.coding import pack
    from fedcomp.compressors.update.surp import SurpStream

    n = sum(s.numel for s in specs)
    logf = math.log(n / math.log(n))
    stream = SurpStream(3, logf, lam0 or logf, np.ones(len(specs), np.float32), symbols, steps, signs)
    return pack("surp", params or {"mode": "iterative"}, specs, write_stream(stream), by_digest=True)


def test_surp_decoder_refuses_what_no_encoder_writes():
    from fedcomp.compressors.update.surp import max_picks, max_refresh_steps

    upd = OrderedDict(w=torch.zeros(6, 5))
    specs = specs_of(upd)
    n = 30
    comp, limits = make("surp"), DecodeLimits.for_specs(specs)
    too_many = max_picks(n, 1) + 1
    cases = {
        "picks": _surp_payload(specs, [1] * too_many, [], [0] * n),
        "refreshes": _surp_payload(specs, [0, 0, 0, 1], [1, 1, 1], [0]),
        "refresh of": _surp_payload(specs, [0, 1], [max_refresh_steps(n, math.log(n / math.log(n)), 1) + 1], [0]),
        "threshold": _surp_payload(specs, [1], [], [0], lam0=5e-324),  # τ = log(n/β)/λ₀ = inf
        "unknown params": _surp_payload(specs, [1], [], [0], params={"mode": "iterative", "x": 1}),
        "mode must be": _surp_payload(specs, [1], [], [0], params={"mode": 1}),
        "algorithm must be": _surp_payload(specs, [1], [], [0], params={"mode": "iterative", "algorithm": True}),
    }
    for fragment, payload in cases.items():
        with pytest.raises(DecodeError, match=fragment):
            comp.decode(payload, limits)
    ok = _surp_payload(specs, [0, 1] * 5, [1] * 5, [0] * 5)  # a refresh before every iteration is legal
    assert torch.count_nonzero(comp.decode(ok, limits)["w"]) == 5


# ----------------------------------------------------------------------------- allocation and value codes


def _layered_update() -> OrderedDict[str, torch.Tensor]:
    """A big tensor of small entries and two small tensors of large ones (a network's biases, its output layer)."""
    g = torch.Generator().manual_seed(3)
    return OrderedDict(
        w=torch.randn(10_000, generator=g) * 0.01, bias=torch.randn(10, generator=g), out=torch.randn(50, generator=g)
    )


def test_global_allocation_takes_the_largest_magnitudes_of_the_whole_update():
    upd = _layered_update()
    k = 60
    enc = make("topk", density=k / 10_060, allocation="global").encode(upd, {}, EncodeContext())
    flat = torch.cat([v.reshape(-1) for v in upd.values()])
    threshold = flat.abs().topk(k).values[-1]
    sent = torch.cat([v.reshape(-1) for v in enc.sent.values()])
    assert torch.equal(sent != 0, flat.abs() >= threshold)  # exactly the global top-k
    assert int((enc.sent["bias"] != 0).sum()) >= 9 and int((enc.sent["out"] != 0).sum()) >= 45  # not starved
    per_tensor = make("topk", density=k / 10_060).encode(upd, {}, EncodeContext())
    assert int((per_tensor.sent["bias"] != 0).sum()) == 1  # ⌈density·10⌉: the per-tensor share of a bias
    assert make("topk").decode(enc.payload, DecodeLimits.for_specs(specs_of(upd))).keys() == upd.keys()


def test_the_sign_code_sends_each_value_as_plus_or_minus_their_mean_magnitude_in_one_bit():
    """STC (Sattler et al. 2019, Alg. 1): the top-k of the whole update, each as ±μ, μ = mean |top-k|."""
    upd = _layered_update()
    enc = make("stc", density=0.01).encode(upd, {}, EncodeContext())
    flat = torch.cat([v.reshape(-1) for v in upd.values()])
    k = math.ceil(0.01 * flat.numel())
    top = flat.abs().topk(k)
    mu = float(top.values.mean())
    sent = torch.cat([v.reshape(-1) for v in enc.sent.values()])
    assert int((sent != 0).sum()) == k
    assert torch.allclose(sent[top.indices], mu * torch.sign(flat[top.indices]), rtol=1e-6)
    fp32 = make("topk", density=0.01, allocation="global").encode(upd, {}, EncodeContext())
    names = len("topk") - len("stc")  # the codec's name in the container header
    assert len(fp32.payload) - len(enc.payload) == 4 * k - 4 - math.ceil(k / 8) + names  # 32 bits → 1 bit, one μ
    decoded = make("stc").decode(enc.payload, DecodeLimits.for_specs(specs_of(upd)))
    assert all(torch.equal(decoded[n], enc.sent[n]) for n in upd)


def test_the_int8_code_keeps_values_within_half_a_step_of_one_scale():
    upd = _layered_update()
    enc = make("topk", density=0.01, allocation="global", values="int8").encode(upd, {}, EncodeContext())
    flat = torch.cat([v.reshape(-1) for v in upd.values()])
    sent = torch.cat([v.reshape(-1) for v in enc.sent.values()])
    chosen = sent != 0
    step = float(flat.abs().max()) / 127
    assert float((sent[chosen] - flat[chosen]).abs().max()) <= step / 2 + 1e-7
    decoded = make("topk").decode(enc.payload, DecodeLimits.for_specs(specs_of(upd)))
    assert all(torch.equal(decoded[n], enc.sent[n]) for n in upd)
