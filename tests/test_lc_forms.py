"""LC C steps on real arrays: each is the minimizer it claims (brute force on tiny cases)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedcomp.compressors.model.lc_forms import (
    AdaptiveQuantization,
    Binarization,
    LowRank,
    PruneL0,
    Ternarization,
    additive_c_step,
    kmeans_1d_optimal,
    quantize_plus_sparse_exact,
)


def sse(w, approx):
    return float(((np.asarray(w) - approx) ** 2).sum())


def test_optimal_1d_kmeans_matches_every_assignment():
    rng = np.random.default_rng(0)
    for trial in range(20):
        w = rng.normal(size=8) * rng.uniform(0.5, 3)
        k = 3
        best = min(
            sum(((w[np.array(lab) == c] - w[np.array(lab) == c].mean()) ** 2).sum() for c in set(lab))
            for lab in itertools.product(range(k), repeat=w.size)
        )
        form = AdaptiveQuantization(k=k, exact=True)
        theta = form.c_step(w)
        assert sse(w, form.decompress(theta, w.shape)) == pytest.approx(best, rel=1e-9, abs=1e-12), trial


def test_lloyd_warm_start_never_beats_and_stays_close_to_the_optimum():
    w = np.random.default_rng(1).laplace(size=5000)
    exact = AdaptiveQuantization(k=4, exact=True)
    lloyd = AdaptiveQuantization(k=4)
    opt = sse(w, exact.decompress(exact.c_step(w), w.shape))
    warm = lloyd.c_step(w * 1.01, (np.array([-3.0, -1.0, 1.0, 3.0]), None))  # a poor previous codebook
    got = sse(w * 1.01, lloyd.decompress(warm, w.shape))
    opt_scaled = sse(w * 1.01, exact.decompress(exact.c_step(w * 1.01), w.shape))
    assert opt_scaled <= got + 1e-9 and got <= 1.05 * opt_scaled
    assert kmeans_1d_optimal(w, 4).shape == (4,) and opt > 0


def test_binarization_and_ternarization_scales_are_optimal():
    rng = np.random.default_rng(2)
    w = rng.normal(size=40)
    grid = np.linspace(0.0, 3.0, 30001)
    b = Binarization()
    got = sse(w, b.decompress(b.c_step(w), w.shape))
    best = min(sse(w, a * np.where(w >= 0, 1, -1)) for a in grid[::10])
    assert got <= best + 1e-9
    t = Ternarization()
    got = sse(w, t.decompress(t.c_step(w), w.shape))
    # For each a the best ternary code is the nearest codeword; search a on a fine grid.
    best = min(sse(w, np.where(np.abs(w) > a / 2, np.sign(w) * a, 0.0)) for a in grid[::3])
    assert got <= best + 1e-9


def test_constraint_l0_pruning_keeps_the_best_support():
    rng = np.random.default_rng(3)
    w = rng.normal(size=9)
    p = PruneL0(kappa=3)
    got = sse(w, p.decompress(p.c_step(w), w.shape))
    best = min(sse(np.delete(w, list(s)), 0) for s in itertools.combinations(range(9), 3))
    assert got == pytest.approx(best)


def test_low_rank_is_eckart_young_and_full_rank_is_exact():
    rng = np.random.default_rng(4)
    conv = rng.normal(size=(8, 4, 3, 3))
    s = np.linalg.svd(conv.reshape(8, 36), compute_uv=False)
    for r in (1, 3, 8):
        form = LowRank(rank=r)
        approx = form.decompress(form.c_step(conv), conv.shape)
        assert sse(conv, approx) == pytest.approx(float((s[r:] ** 2).sum()), abs=1e-9)
    assert np.allclose(LowRank(8).decompress(LowRank(8).c_step(conv), conv.shape), conv)


def test_theorem_4_1_matches_exhaustive_search():
    rng = np.random.default_rng(5)
    codebook = np.array([-1.0, 0.0, 1.0])
    for _ in range(5):
        w = rng.normal(size=6) * 1.5
        kappa = 2
        best = np.inf
        for q in itertools.product(codebook, repeat=6):
            r = (w - np.array(q)) ** 2
            best = min(best, r.sum() - np.sort(r)[-kappa:].sum())  # corrections zero the κ largest
        q_idx, idx, values = quantize_plus_sparse_exact(w, codebook, kappa)
        approx = codebook[q_idx]
        approx[idx] += values
        assert sse(w, approx) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize(
    "forms",
    [
        [AdaptiveQuantization(k=2), PruneL0(kappa=40)],  # Q+P
        [LowRank(rank=2), PruneL0(kappa=40)],  # L+P
        [Binarization(), LowRank(rank=1)],  # Q+L
    ],
    ids=["Q+P", "L+P", "Q+L"],
)
def test_additive_combinations_never_increase_the_error(forms):
    rng = np.random.default_rng(6)
    w = rng.normal(size=(20, 30)) + np.outer(rng.normal(size=20), rng.normal(size=30))
    thetas, errors = additive_c_step(forms, w, sweeps=15)
    assert all(b <= a * (1 + 1e-12) + 1e-12 for a, b in zip(errors, errors[1:], strict=False)), errors
    approx = sum(f.decompress(t, w.shape) for f, t in zip(forms, thetas, strict=True))
    assert sse(w, approx) == pytest.approx(errors[-1])
    # The combination is at least as good as either form alone.
    for f in forms:
        assert errors[-1] <= sse(w, f.decompress(f.c_step(w), w.shape)) + 1e-9
    # Warm-started from its own result, one more sweep does not make it worse.
    _, again = additive_c_step(forms, w, thetas, sweeps=1)
    assert again[-1] <= errors[-1] + 1e-9


@pytest.mark.parametrize(
    ("form", "expected_bits"),
    [
        (AdaptiveQuantization(k=4), 4 * 32 + 2 * 600),  # codebook fp32 + ⌈log₂ k⌉ bits per weight
        (AdaptiveQuantization(k=1), 32),
        (Binarization(), 32 + 600),
        (Ternarization(), 32 + 2 * 600),
        (PruneL0(kappa=30), None),
        (LowRank(rank=3), None),
    ],
    ids=["Q4", "Q1", "B", "T", "P", "L"],
)
def test_theta_travels_as_bytes_and_decodes_to_the_same_weights(form, expected_bits):
    from fedcomp.coding import DecodeError
    from fedcomp.compressors.model.lc_forms import decode_theta, encode_theta

    w = np.random.default_rng(7).laplace(size=(20, 30))
    theta = form.c_step(w)
    data = encode_theta(form, theta, w.shape)
    back = form.decompress(decode_theta(form, data, w.shape), w.shape)
    ref = form.decompress(theta, w.shape)
    if expected_bits is not None:
        assert len(data) == (expected_bits + 7) // 8
        assert np.allclose(back, ref, rtol=1e-6, atol=1e-6)  # fp32 codebook / scale
    else:
        assert np.allclose(back, ref, rtol=2e-3, atol=2e-3)  # fp16 values and factors
    if isinstance(form, PruneL0):
        assert len(data) < (30 * (32 + 16)) // 8  # coded gaps beat 32-bit indices
    if isinstance(form, LowRank):
        assert len(data) == (3 + 3 * (20 + 30) * 16 + 7) // 8  # γ(r+1) = 3 bits, then 20×3 + 3×30 fp16
    rng = np.random.default_rng(8)
    for _ in range(100):  # damaged θ: a clear error or a decode, never anything else
        bad = bytearray(data)
        bad[rng.integers(len(bad))] ^= 1 << int(rng.integers(8))
        try:
            decode_theta(form, bytes(bad), w.shape)
        except DecodeError:
            pass
    with pytest.raises(DecodeError):
        decode_theta(form, data[: len(data) // 2], w.shape)


def rank_of(theta, shape) -> int:
    return int(np.linalg.matrix_rank(theta[0] @ theta[1], tol=1e-9))


def test_rank_selection_picks_the_rank_that_minimizes_its_cost():
    """min_{r >= 1} α·C(r) + μ/2·‖W − W_r‖², C(r) = min(r(m+n), mn), against every rank with torch's SVD."""
    import torch

    from fedcomp.compressors.model.lc_forms import RankSelection, factor_storage

    rng = np.random.default_rng(3)
    for trial in range(12):
        m, n = (int(x) for x in rng.integers(2, 7, size=2))
        w = rng.normal(size=(m, n)) @ np.diag(rng.uniform(0.01, 3, size=n))
        alpha, mu = float(rng.choice([1e-4, 1e-2, 0.1, 1.0])), float(rng.uniform(0.5, 4))
        u, s, vt = torch.linalg.svd(torch.from_numpy(w), full_matrices=False)
        costs = {}
        for r in range(1, min(m, n) + 1):
            w_r = (u[:, :r] * s[:r]) @ vt[:r]
            costs[r] = alpha * min(r * (m + n), m * n) + 0.5 * mu * float(((torch.from_numpy(w) - w_r) ** 2).sum())
        form = RankSelection(alpha=alpha, mu=mu)
        theta = form.c_step(w)
        best = min(costs, key=costs.get)
        assert rank_of(theta, w.shape) == best, (trial, costs)
        approx = form.decompress(theta, w.shape)
        assert 0.5 * mu * sse(w, approx) + alpha * factor_storage(best, m, n) == pytest.approx(
            costs[best], rel=1e-9, abs=1e-12
        )
        stored = theta[0].size + theta[1].size if theta[1].shape != (n, n) else theta[0].size
        assert stored == factor_storage(best, m, n)  # never more numbers than the matrix itself
    # The extremes: storage for free keeps the full rank; storage dearer than any error keeps rank 1, not 0
    # (a zeroed layer breaks the network).
    w = rng.normal(size=(4, 5))
    assert rank_of(RankSelection(alpha=0.0, mu=1.0).c_step(w), w.shape) == 4
    assert rank_of(RankSelection(alpha=1e6, mu=1.0).c_step(w), w.shape) == 1


def test_low_rank_factors_larger_than_the_matrix_are_stored_as_the_matrix():
    from fedcomp.compressors.model.lc_forms import LowRank, decode_theta, encode_theta

    rng = np.random.default_rng(8)
    square = rng.normal(size=(6, 6))  # full-rank factors: 72 numbers for a 36-number matrix
    form = LowRank(rank=6)
    theta = form.c_step(square)
    assert theta[0].shape == (6, 6) and np.allclose(form.decompress(theta, square.shape), square)
    dense_bytes, factor_bytes = (len(encode_theta(LowRank(r), LowRank(r).c_step(square), square.shape)) for r in (6, 2))
    assert dense_bytes < 36 * 2 + 8 and factor_bytes < dense_bytes  # fp16 numbers plus the rank field
    back = decode_theta(form, encode_theta(form, theta, square.shape), square.shape)
    assert np.allclose(form.decompress(back, square.shape), square, atol=1e-2)  # fp16


def test_exact_k_means_refuses_a_table_it_cannot_hold_and_lloyd_seeds_itself_without_one():
    from fedcomp.compressors.model.lc import FormParams, GroupParams, LCCompressor, LCParams
    from fedcomp.compressors.model.lc_forms import AdaptiveQuantization, kmeans_1d_optimal
    from fedcomp.compressors.model.structure import Architecture
    from fedcomp.config import ConfigError

    w = np.random.default_rng(9).normal(size=400_000)
    with pytest.raises(ValueError, match="needs 209.7 GB"):  # 8 · 65,536 · 400,001 bytes, refused before allocating
        kmeans_1d_optimal(w, 65_536)
    codebook, idx = AdaptiveQuantization(k=65_536).c_step(w)  # Lloyd, seeded from quantiles instead
    assert codebook.size == 65_536 and np.all(np.diff(codebook) >= 0) and sse(w, codebook[idx]) < 1e-3 * sse(w, 0 * w)
    exact = GroupParams(forms=[FormParams(form="quantize", k=65_536, exact=True)])
    with pytest.raises(ConfigError, match=r"exact = false for k = 65536 on .* GB"):
        LCCompressor(LCParams(groups=[exact]), Architecture("lenet5_caffe", (1, 28, 28), 10))


def test_a_net_wide_kappa_keeps_the_largest_entries_of_the_whole_group():
    """One κ for the net (Part V's "1-bit codebook + x% corrections"): the κ largest |w| wherever they are,
    the exact minimizer over all tensors together; per tensor it would keep small entries of a small layer."""
    from fedcomp.compressors.model.lc_forms import net_prune_c_step

    rng = np.random.default_rng(4)
    w = {"small": rng.normal(size=(6, 5)) * 0.1, "large": rng.normal(size=(4, 10)) * 3.0}
    kappa = 21
    shares = net_prune_c_step(w, kappa)
    assert sum(idx.size for idx, _ in shares.values()) == kappa
    flat = np.concatenate([np.abs(v).ravel() for v in w.values()])
    threshold = np.sort(flat)[-kappa]
    for name, (idx, values) in shares.items():
        kept = np.abs(w[name].ravel())
        assert np.array_equal(values, w[name].ravel()[idx])
        assert kept[idx].min(initial=np.inf) >= threshold and np.delete(kept, idx).max(initial=0) <= threshold
    net_error = sum(sse(w[n], PruneL0(kappa).decompress(shares[n], w[n].shape)) for n in w)
    per_tensor = {n: PruneL0(kappa * w[n].size // 70).c_step(w[n]) for n in w}  # same total split by size: 9 + 12
    assert sum(per_tensor[n][0].size for n in w) == kappa
    split_error = sum(sse(w[n], PruneL0(kappa).decompress(per_tensor[n], w[n].shape)) for n in w)
    assert net_error < split_error


def test_quantize_plus_net_wide_corrections_never_increase_the_group_error():
    from fedcomp.compressors.model.lc_forms import joint_additive_c_step

    rng = np.random.default_rng(5)
    targets = {"a": rng.normal(size=(8, 6)), "b": rng.standard_t(2, size=(5, 4, 3))}  # heavy tails in b
    forms = {n: [AdaptiveQuantization(k=2), PruneL0(10)] for n in targets}
    thetas, errors = joint_additive_c_step(forms, targets, {}, 1, kappa=10, sweeps=10)
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:], strict=False))
    assert sum(thetas[n][1][0].size for n in targets) == 10
    alone = {n: additive_c_step([AdaptiveQuantization(k=2)], targets[n])[1][-1] for n in targets}
    assert errors[-1] < sum(alone.values())  # the corrections help
