"""Staged SuRP: bit-identical decoding, Remark 2 coordinate-wise, budgets, the rate, refused streams."""

from __future__ import annotations

import functools
import math
import struct
from collections import OrderedDict

import numpy as np
import pytest
import torch

from fedcomp.coding import BitWriter, DecodeError, DecodeLimits, elias_delta_encode, encode_indices, pack, specs_of
from fedcomp.compressors.update import surp_staged as staged
from fedcomp.compressors.update.base import EncodeContext
from tests.helpers import update_compressor

make = functools.partial(update_compressor, "surp", seed=1)


def update(seed: int, tail: str = "laplace") -> OrderedDict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    shapes = {"conv.weight": (20, 1, 5, 5), "conv.bias": (20,), "fc.weight": (300, 400), "fc.bias": (300,)}
    out = OrderedDict()
    for k, s in shapes.items():
        x = rng.laplace(size=s)
        if tail == "pareto":  # heavier than Laplacian: many stages and refinements
            x *= rng.pareto(1.5, size=s)
        out[k] = torch.from_numpy(x.astype(np.float32))
    return out


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors.values()])


CASES = [(s, tail, ratio) for s in range(3) for tail in ("laplace", "pareto") for ratio in (2.0, 1.25, 16.0)]


@pytest.mark.parametrize(("seed", "tail", "ratio"), CASES)
def test_decoder_equals_the_encoders_reconstruction_bit_for_bit_and_never_overshoots(seed, tail, ratio):
    upd = update(seed, tail)
    comp = make(density=0.02, stage_ratio=ratio, error_feedback=False)
    enc = comp.encode(upd, {}, EncodeContext())
    dec = comp.decode(enc.payload, DecodeLimits.for_specs(specs_of(upd)))
    for k in upd:
        assert torch.equal(dec[k].view(torch.int32), enc.sent[k].view(torch.int32))  # bit for bit
    g, h = flat(upd), flat(dec)
    nz = h != 0
    assert torch.equal(torch.sign(h[nz]), torch.sign(g[nz]))  # Remark 2: signs kept
    assert bool((h.abs() <= g.abs()).all())  # |ĝ_i| ≤ |g_i| exactly, never overshooting
    if tail == "pareto" and ratio == 2.0:
        assert enc.metrics["stages"] >= 4 and enc.metrics["refinements"] > 0


def test_the_support_is_exactly_the_top_k_and_each_value_within_the_last_threshold():
    upd = update(7, "pareto")
    g = flat(upd)
    n = g.numel()
    k = math.ceil(0.01 * n)
    enc = make(density=0.01, error_feedback=False).encode(upd, {}, EncodeContext())
    h = flat(enc.sent)
    support = set(torch.nonzero(h).squeeze(1).tolist())
    assert support == set(torch.topk(g.abs(), k).indices.tolist())
    tau_last = float(torch.topk(g.abs(), k + 1).values[-1])
    err = (g.abs() - h.abs())[h != 0]
    assert float(err.max()) <= tau_last  # q = 2: a binary expansion down to τ_S
    assert enc.metrics["refinements"] > 0


def test_thresholds_are_one_geometric_schedule_rebuilt_the_same_way():
    tau = staged.thresholds(np.float32(0.3), np.float32(2.0), 5)
    assert np.allclose(tau, [4.8, 2.4, 1.2, 0.6, 0.3])
    assert np.all(np.diff(tau) < 0) and tau[-1] == float(np.float32(0.3))


def test_rate_on_laplacian_data_is_within_three_bits_of_log_n_over_k():
    rng = np.random.default_rng(3)
    upd = OrderedDict(w=torch.from_numpy(rng.laplace(size=(1000, 1000)).astype(np.float32)))
    enc = make(density=0.01, error_feedback=False).encode(upd, {}, EncodeContext())
    nnz = int((enc.sent["w"] != 0).sum())
    body_bits = 8 * len(enc.payload) - 8 * len(pack("surp", {}, specs_of(upd), b"", by_digest=True))
    # Measured: 9.23 bits per nonzero against log2(n/k) + 3 = 9.64 (two stages, 99% entering at the last).
    assert body_bits / nnz <= math.log2(1e6 / nnz) + 3
    assert enc.metrics["stages"] == 2


@pytest.mark.parametrize("tail", ["laplace", "pareto"])
def test_byte_budgets_are_never_exceeded_and_still_decode(tail):
    upd = update(11, tail)
    limits = DecodeLimits.for_specs(specs_of(upd))
    last = 0
    for budget in (50, 64, 100, 333, 1000, 4000, 20_000):
        comp = make(density=0.05, max_bytes=budget, error_feedback=False)
        enc = comp.encode(upd, {}, EncodeContext())
        assert len(enc.payload) <= budget
        dec = comp.decode(enc.payload, limits)
        assert all(torch.equal(dec[k], enc.sent[k]) for k in upd)
        nnz = int((flat(enc.sent) != 0).sum())
        assert nnz >= last
        last = nnz
    assert last == math.ceil(0.05 * flat(upd).numel())


def test_an_all_zero_update_and_tiny_ones_round_trip():
    for upd in (
        OrderedDict(w=torch.zeros(10)),
        OrderedDict(w=torch.tensor([0.0, -1e-45, 2.0])),
        OrderedDict(w=torch.tensor([3.0])),
        OrderedDict(w=torch.tensor([1.0, 1.0, 1.0, 1.0])),  # ties at the k-th magnitude
    ):
        comp = make(density=0.5, error_feedback=False)
        enc = comp.encode(upd, {}, EncodeContext())
        dec = comp.decode(enc.payload, DecodeLimits.for_specs(specs_of(upd)))
        assert torch.equal(dec["w"], enc.sent["w"]) and bool((dec["w"].abs() <= upd["w"].abs()).all())


def body(tau_last: float, ratio: float, stages: list[tuple[list[int], int, list[int], int, list[int]]]) -> bytes:
    """A staged body from its fields: per stage (refined positions, support size, new indices, n, signs)."""
    w = BitWriter()
    elias_delta_encode([len(stages) + 1], w)
    for refined, size, new, n, signs in stages:
        encode_indices(np.array(refined, np.int64), size, w)
        encode_indices(np.array(new, np.int64), n, w)
        w.write_bits(np.array(signs, np.uint8))
    return struct.pack("<ff", tau_last, ratio) + w.getvalue()


def test_the_decoder_refuses_what_no_encoder_writes():
    upd = OrderedDict(w=torch.zeros(6, 5))
    specs, n = specs_of(upd), 30
    comp, limits = make(), DecodeLimits.for_specs(specs)
    cases = {
        "already sent": body(1.0, 2.0, [([], 0, [3], n, [0]), ([], 1, [3], n, [0])]),
        "ratio": body(1.0, 1.0, [([], 0, [3], n, [0])]),
        "last threshold": body(0.0, 2.0, [([], 0, [3], n, [0])]),
        "float32's range": body(3e38, 16.0, [([], 0, [3], n, [0]), ([], 1, [], n, [])]),
        "unknown params": None,
    }
    for fragment, data in cases.items():
        payload = pack("surp", {"x": 1} if data is None else {}, specs, data or body(1.0, 2.0, []), by_digest=True)
        with pytest.raises(DecodeError, match=fragment):
            comp.decode(payload, limits)
    ok = body(1.0, 2.0, [([], 0, [3, 7], n, [0, 1]), ([1], 2, [4], n, [1])])
    dec = comp.decode(pack("surp", {}, specs, ok, by_digest=True), limits)["w"].reshape(-1)
    assert dec[3] == 2.0 and dec[7] == -3.0 and dec[4] == -1.0 and int((dec != 0).sum()) == 3
