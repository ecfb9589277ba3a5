"""EDEN and DRIVE against their papers: unbiasedness, the error ε_b/(1 − ε_b), the Lloyd–Max levels, the bytes.

The expectations are the papers' and Max's (1960), not the code's constants: ε_b (the error of the
2^b-level Lloyd–Max quantizer of N(0, 1)) is Max's Table I, and EDEN's normalized error with the unbiased
scale tends to ε_b/(1 − ε_b) (π/2 − 1 at one bit, DRIVE's unbiased estimate), DRIVE's with the scale of least
error to ε_1 = 1 − 2/π. Round trips and damaged payloads for every registered codec are in
test_update_compressors.py and test_hostile_payloads.py; crafted EDEN payloads are here.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict

import numpy as np
import pytest
import torch

from fedcomp.coding import DecodeError, DecodeLimits, specs_of
from fedcomp.compressors.update.base import EncodeContext
from fedcomp.compressors.update.eden import TAIL, chunk_shapes
from fedcomp.compressors.update.lloyd_max import HALF_CENTROIDS, MAX_BITS, lloyd_map, mse
from fedcomp.params import ConfigError
from tests.helpers import update_compressor
from tests.payloads import Frame

MAX_1960 = {1: 0.3634, 2: 0.1175, 3: 0.03455, 4: 0.009500}
"""ε_b of the Lloyd–Max quantizer of N(0, 1), Max (1960), Table I."""


def vector(n: int, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return OrderedDict(v=torch.from_numpy(rng.laplace(size=n).astype(np.float32)))


def nmse(x: torch.Tensor, xhat: torch.Tensor) -> float:
    x, xhat = x.double(), xhat.double()
    return float(((x - xhat) ** 2).sum() / (x * x).sum())


def encodes(update, draws: int, **params) -> torch.Tensor:
    """The update as decoded after ``draws`` encodes, each with its own rotation (round r: its own seed)."""
    comp = update_compressor(params.pop("name", "eden"), seed=7, **params)
    return torch.stack([comp.encode(update, {}, EncodeContext(r, 0, 1)).sent["v"].double() for r in range(draws)])


@pytest.mark.parametrize("bits", [1, 2])
def test_eden_is_unbiased_the_mean_of_many_rotations_converges_to_the_input(bits):
    """E[x̂] = x (EDEN, the unbiased scale S = ‖x‖²/⟨R(x), Q(R(x))⟩): the mean of 300 independently rotated
    encodes is off by no more than its own Monte-Carlo error, ‖x̄ − x‖² ≈ E‖x̂ − x‖²/draws; the biased scale
    of least error, run the same way, is off by far more (the check can fail)."""
    draws, upd = 300, vector(1024, seed=1)
    x = upd["v"].double()
    samples = encodes(upd, draws, bits=bits, chunk_size=1024)
    per_draw = float(((samples - x) ** 2).sum(1).mean() / (x * x).sum())
    mean_error = nmse(x, samples.mean(0))
    assert mean_error <= 1.5 * per_draw / draws, (mean_error, per_draw / draws)
    assert torch.allclose(samples @ x / (x @ x), torch.ones(draws, dtype=torch.float64), atol=1e-5)  # ⟨x̂, x⟩ = ‖x‖²
    biased = encodes(upd, draws, bits=bits, chunk_size=1024, scale="min_mse")
    assert nmse(x, biased.mean(0)) > 10 * per_draw / draws


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_eden_error_is_eps_over_one_minus_eps_and_drive_s_least_error_scale_is_eps(bits):
    """The normalized error of EDEN's unbiased estimate is ‖x‖²‖q‖²/⟨y, q⟩² − 1 → ε_b/(1 − ε_b) (ε_b Max's),
    within 3% over 8 rotations of a 2^14-coordinate Laplacian vector; with the scale of least error it is ε_b
    (DRIVE: 1 − 2/π at one bit, the paper's bound)."""
    eps = MAX_1960[bits]
    upd = vector(1 << 14, seed=2)
    unbiased = float(np.mean([nmse(upd["v"], s) for s in encodes(upd, 8, bits=bits)]))
    assert 0.95 * eps / (1 - eps) <= unbiased <= 1.03 * eps / (1 - eps), (unbiased, eps / (1 - eps))
    least = float(np.mean([nmse(upd["v"], s) for s in encodes(upd, 8, bits=bits, scale="min_mse")]))
    assert 0.95 * eps <= least <= 1.03 * eps, (least, eps)
    if bits == 1:  # DRIVE is EDEN's one-bit case: the same estimates, under its own name
        drive = float(np.mean([nmse(upd["v"], s) for s in encodes(upd, 8, name="drive", scale="min_mse")]))
        assert drive == pytest.approx(least, rel=1e-12) and drive <= 1.03 * (1 - 2 / math.pi)


def test_the_levels_are_the_lloyd_max_quantizers_of_the_standard_normal():
    """Each table satisfies Max's conditions (centroid of its cell, cells at the midpoints) and has his ε_b."""
    for bits in range(1, MAX_BITS + 1):
        half = torch.tensor(HALF_CENTROIDS[bits], dtype=torch.float64)
        assert half.numel() == 1 << (bits - 1) and bool((half.diff() > 0).all())
        assert float((half - lloyd_map(half)).abs().max()) < 1e-9, bits
        if bits in MAX_1960:
            assert mse(half) == pytest.approx(MAX_1960[bits], abs=5e-5)
    assert HALF_CENTROIDS[1][0] == pytest.approx(math.sqrt(2 / math.pi), abs=1e-12)  # E|X|
    assert HALF_CENTROIDS[3] == pytest.approx((0.2451, 0.7560, 1.344, 2.152), abs=1e-3)  # Max's Table I, b = 3


@pytest.mark.parametrize(("name", "bits"), [("eden", 1), ("eden", 3), ("eden", 8), ("drive", 1)])
def test_b_bits_a_coordinate_plus_a_seed_and_a_scale_per_chunk_and_the_bytes_decode_to_what_was_sent(name, bits):
    upd = OrderedDict(w=torch.randn(300, 131), b=torch.randn(57))  # 39,357 coordinates: whole chunks and a tail
    n = 300 * 131 + 57
    comp = update_compressor(name, seed=1, **({"bits": bits} if name == "eden" else {}))
    enc = comp.encode(upd, {}, EncodeContext(3, 2, 5))
    dec = comp.decode(enc.payload, DecodeLimits.for_specs(specs_of(upd)))
    assert all(torch.equal(dec[k], enc.sent[k]) for k in upd)
    shapes = chunk_shapes(n, 1 << 14)
    padded = sum(r * c for r, c in shapes)
    assert shapes[0] == (2, 1 << 14) and 0 <= padded - n < TAIL
    assert len(Frame.parse(enc.payload).body) == 4 + 4 * sum(r for r, _ in shapes) + math.ceil(padded * bits / 8)
    x = torch.cat([v.reshape(-1) for v in upd.values()]).double()
    xhat = torch.cat([v.reshape(-1) for v in dec.values()]).double()
    assert float(x @ xhat / (x @ x)) == pytest.approx(1.0, abs=1e-5)  # ⟨x̂, x⟩ = ‖x‖², whatever the rotation


def test_the_rotation_is_seeded_by_round_and_client_and_zero_stays_zero():
    upd = vector(2048)
    comp = update_compressor("eden", seed=1)
    a, b, c = (comp.encode(upd, {}, EncodeContext(r, k, 2)).payload for r, k in ((1, 0), (1, 0), (2, 0)))
    assert a == b != c and comp.encode(upd, {}, EncodeContext(1, 1, 2)).payload != a
    zero = OrderedDict(v=torch.zeros(100))
    enc = comp.encode(zero, {}, EncodeContext())
    assert torch.equal(comp.decode(enc.payload, DecodeLimits.for_specs(specs_of(zero)))["v"], zero["v"])


def test_max_bytes_takes_the_most_bits_that_fit_and_refuses_a_budget_below_one_bit():
    upd = vector(20_000)
    size = {b: len(update_compressor("eden", bits=b).encode(upd, {}, EncodeContext()).payload) for b in (1, 2, 3, 4)}
    for budget, bits in ((size[4], 4), (size[4] - 1, 3), (size[3] - 1, 2), (size[2] - 1, 1), (size[1], 1)):
        enc = update_compressor("eden", bits=4, max_bytes=budget).encode(upd, {}, EncodeContext())
        assert len(enc.payload) <= budget and Frame.parse(enc.payload).params_dict["bits"] == bits
    with pytest.raises(ValueError, match="max_bytes"):
        update_compressor("eden", bits=4, max_bytes=size[1] - 1).encode(upd, {}, EncodeContext())


@pytest.mark.parametrize(
    ("params", "key"), [({"bits": 0}, "bits"), ({"bits": 9}, "bits"), ({"chunk_size": 1000}, "chunk_size"),
                        ({"chunk_size": 32}, "chunk_size"), ({"scale": "x"}, "scale"), ({"max_bytes": -1}, "max_bytes")],
)  # fmt: skip
def test_bad_parameters_are_config_errors_naming_the_key(params, key):
    with pytest.raises(ConfigError, match=f"uplink.{key}"):
        update_compressor("eden", **params)


def test_crafted_eden_payloads_are_decode_errors():
    upd = vector(1025)  # chunks of 1,024 and 1: 3,075 bits of 3-bit codes, then 5 bits of padding
    comp = update_compressor("eden", bits=3)
    frame = Frame.parse(comp.encode(upd, {}, EncodeContext()).payload)
    limits = DecodeLimits.for_specs(specs_of(upd))
    body = frame.body
    assert len(body) == 4 + 2 * 4 + math.ceil(1025 * 3 / 8)
    forged = {
        "the scale of chunk 1 is negative": body[:8] + struct.pack("<f", -1.0) + body[12:],
        r"body is 396 bytes, 397 expected": body[:-1],
        r"body is 398 bytes, 397 expected": body + b"\x00",
        "nonzero padding bits after 1025 codes": body[:-1] + bytes([body[-1] | 1]),
    }
    for why, data in forged.items():
        with pytest.raises(DecodeError, match=why):
            comp.decode(frame.with_body(data).to_bytes(), limits)
    for params in ({"bits": 9, "chunk_size": 16384}, {"bits": 3}, {"bits": 3, "chunk_size": 1000},
                   {"bits": "3", "chunk_size": 16384}, {"bits": 3, "chunk_size": 1 << 30}, {"bits": 0, "chunk_size": 64}):  # fmt: skip
        with pytest.raises(DecodeError, match="eden"):
            comp.decode(frame.with_params(params).to_bytes(), limits)
    drive = update_compressor("drive")
    with pytest.raises(DecodeError, match="3 bits a coordinate, 1..1 expected"):
        drive.decode(Frame(b"drive", frame.params, frame.tensors, body).to_bytes(), limits)
