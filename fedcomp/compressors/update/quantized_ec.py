"""Uniform scalar quantization at a chosen step, entropy-coded (TFF's entropy compression; Mitchell et al. 2022).

Every coordinate of the update (all tensors, one step for all) is sent as
an integer multiple of one step Δ:

    q_i = ⌊x_i/Δ + u_i⌋,   x̂_i = Δ·q_i,

u_i = ½ for ``rounding = "nearest"`` (the default: the least error at a
given step, biased, so error feedback is on by default), or u_i ~ U[0, 1)
drawn per coordinate from a generator seeded by (seed, round, client) for
``"stochastic"`` (E[x̂] = x, as TFF's ``entropy_compression`` rounds; see
also Mitchell, Ballé, Charles & Konečný, "Optimizing the
Communication-Accuracy Trade-off in Federated Learning with Rate-Distortion
Theory", arXiv 2201.02664). Stochastic rounding's variance, Δ·|x| per
coordinate at large steps, puts its error above ‖x‖² below about a bit a
coordinate on Laplacian data, where nearest rounding stays below it. The
integers are entropy-coded, so the rate follows the data: a step that
leaves most q_i at zero costs far less than a bit a coordinate.

**Choosing Δ** (one of, in this order): ``step`` = Δ given; ``distortion``
= D, the largest Δ (bisection on log Δ) whose ‖x̂ − x‖²/‖x‖² ≤ D; else
``bits``, the rate target in bits a coordinate (whole payload), Δ by
bisection on the coder's size, estimated from the symbols' empirical
entropy (the rANS coder spends within a fraction of a percent of it) and
measured exactly for Elias-γ. ``max_bytes`` caps the payload: Δ grows
until the encoded payload fits (a ValueError if not even an all-zero
payload does).

**Coding** (``coder``). ``"rans"`` (the default): the magnitudes
s_i = min(|q_i|, 1023) with a two-pass static range-ANS coder
(:mod:`fedcomp.coding.rans`: the counts of this update, quantized to 2^15,
sent first), then one sign bit per nonzero, then for every s_i = 1023 the
excess |q_i| − 1023 as Elias-γ(excess + 1). On an i.i.d. source the cost
is the empirical entropy H(q) of the symbols plus the table and about 64
bits. ``"elias_gamma"``: TFF's code, Elias-γ of the zig-zag integer
(2q for q ≥ 0, −2q − 1 for q < 0) + 1 per coordinate: no table, but at
least one bit a coordinate and 2⌊log₂ z⌋ + 1 bits where a value z needs
log₂ z, so it sits well above H(q) (docs/uplink.md has the measured gaps).

**Departures.** Mitchell et al. quantize each client's update with a step
from a rate–distortion objective shared by the federation and code with
an adaptive arithmetic coder; here the step is chosen per update for the
target given, and the coder is two-pass rANS (the same rate on a
stationary source, with the model in the payload instead of adapted).

Wire format: params ``{"coder": c}``; body: Δ (fp32), then the bit stream:
for rANS the table, the rANS stream, the signs and the escapes; for
Elias-γ the n codes.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedcomp.coding import (
    BitReader,
    BitWriter,
    DecodeError,
    LimitExceededError,
    TensorSpec,
    elias_gamma_decode,
    elias_gamma_encode,
    pack,
    rans,
    specs_of,
)
from fedcomp.coding.bits import bit_lengths
from fedcomp.compressors.update.base import (
    AGGREGATE,
    UPDATE_COMPRESSORS,
    EncodeContext,
    Encoded,
    State,
    Update,
    UpdateCompressor,
    check_finite_input,
    float32_update,
)
from fedcomp.params import require
from fedcomp.seeding import UPLINK_QUANTIZATION, numpy_rng

ESCAPE = 1023
"""Magnitudes from here on are sent as this symbol plus an Elias-γ excess (the rANS alphabet is 0..ESCAPE)."""
MAX_Q = 1 << 52
"""Largest |q| an encode may produce (exact in float64)."""
CODERS = ("rans", "elias_gamma")
ROUNDINGS = ("stochastic", "nearest")
_STEP = struct.Struct("<f")


@dataclass
class QuantizedECParams:
    bits: float = 2.0
    """Rate target in bits a coordinate, whole payload (used unless ``step`` or ``distortion`` is set)."""
    distortion: float = 0.0
    """Target ‖x̂ − x‖²/‖x‖² in (0, 1): the largest step that meets it (0 = use ``bits``)."""
    step: float = 0.0
    """Δ itself (0 = chosen from ``distortion`` or ``bits``)."""
    max_bytes: int = 0
    """Largest payload in bytes, container included (0 = none): the step grows until it fits."""
    rounding: str = "nearest"
    """"nearest": ⌊x/Δ + ½⌋, the least error; "stochastic": ⌊x/Δ + u⌋, unbiased (TFF) but far noisier at low rates."""
    coder: str = "rans"
    """"rans": two-pass range-ANS on the magnitudes plus sign bits; "elias_gamma": TFF's zig-zag Elias-γ."""
    error_feedback: bool | str | None = None
    """Keep what was not sent and add it next round (default: on with nearest rounding, off with stochastic)."""
    lossless: str = "none"
    """A lossless stage after the codec: "none" or "zstd" (the body as one zstd frame, when that is shorter)."""

    def validate(self, path: str) -> None:
        require(0 < self.bits <= 32, f"{path}.bits", f"a rate in (0, 32] bits a coordinate, got {self.bits}")
        require(0 <= self.distortion < 1, f"{path}.distortion", f"a number in [0, 1) (0 = off), got {self.distortion}")
        require(self.step >= 0, f"{path}.step", f"a number >= 0 (0 = chosen), got {self.step}")
        require(
            not (self.step > 0 and self.distortion > 0), f"{path}.step", "not together with distortion: give one target"
        )
        require(self.max_bytes >= 0, f"{path}.max_bytes", "an integer >= 0 (0 = no budget)")
        require(self.rounding in ROUNDINGS, f"{path}.rounding", f"one of {list(ROUNDINGS)}, got {self.rounding!r}")
        require(self.coder in CODERS, f"{path}.coder", f"one of {list(CODERS)}, got {self.coder!r}")


@UPDATE_COMPRESSORS.register(
    "quantized_ec", "uniform quantization at a rate- or distortion-chosen step, rANS-coded (TFF; Mitchell 2022)"
)
class QuantizedECCompressor(UpdateCompressor):
    name = "quantized_ec"
    Params = QuantizedECParams

    @property
    def error_feedback(self) -> bool:
        """On by default where the rounding is biased (nearest), off where it is unbiased (stochastic); off under
        ``"aggregate"`` (no residual: :attr:`aggregate_feedback`)."""
        value = self.params.error_feedback
        if value == AGGREGATE:
            return False
        return self.params.rounding == "nearest" if value is None else bool(value)

    def encode(self, update: Update, state: State | None = None, ctx: EncodeContext | None = None) -> Encoded:
        ctx = ctx or EncodeContext()
        p: QuantizedECParams = self.params
        tensors = float32_update(update)
        check_finite_input(self.name, tensors)
        specs = specs_of(tensors)
        x = (torch.cat([t.reshape(-1) for t in tensors.values()]) if tensors else torch.zeros(0)).double().numpy()
        n = x.size
        if p.rounding == "stochastic":
            u = numpy_rng(self.seed, UPLINK_QUANTIZATION, ctx.server_round, ctx.client_id).random(n)
        else:
            u = np.full(n, 0.5)
        sigma = math.sqrt(float(np.dot(x, x)) / n) if n else 0.0

        def quantize(step: float) -> np.ndarray:
            return np.floor(x / step + u).astype(np.int64)

        if sigma == 0:
            step = 1.0
        elif p.step > 0:
            step = p.step
        elif p.distortion > 0:
            energy = float(np.dot(x, x))
            step = _bisect_step(
                sigma, lambda s: float(((quantize(s) * s - x) ** 2).sum()) / energy <= p.distortion, True
            )
        else:
            target = p.bits * n
            if p.max_bytes:
                target = min(target, 8 * p.max_bytes)
            step = _bisect_step(sigma, lambda s: estimated_bits(quantize(s), p.coder) <= target, False)
            if estimated_bits(quantize(step), p.coder) > target:  # Elias-γ: never under a bit a coordinate
                raise ValueError(f"quantized_ec: {target / n:.3g} bits a coordinate is below what {p.coder} reaches")
        step = _as_fp32(step)
        if sigma > 0 and float(np.abs(x).max()) / step + 1 > MAX_Q:
            raise ValueError(f"quantized_ec: step {step:g} is too small for values up to {float(np.abs(x).max()):g}")
        while True:
            q = quantize(step)
            body = _STEP.pack(step) + write_symbols(q, p.coder)
            payload = pack(self.name, {"coder": p.coder}, specs, body, by_digest=True)
            if not p.max_bytes or len(payload) <= p.max_bytes:
                break
            if not q.any():
                raise ValueError(f"max_bytes = {p.max_bytes} is below the {len(payload)}-byte payload of all zeros")
            step = _as_fp32(step * 1.01)
        sent = _expand(specs, q, step)
        return Encoded(payload, sent, {"density": float(np.count_nonzero(q)) / max(n, 1)}, dict(state or {}))

    def decode_body(self, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes) -> dict[str, torch.Tensor]:
        coder = params.get("coder")
        if set(params) != {"coder"} or coder not in CODERS:
            raise DecodeError(f"{self.name}: params must name a coder in {list(CODERS)}, got {str(params)[:80]}")
        if len(body) < _STEP.size:
            raise DecodeError(f"{self.name}: body of {len(body)} bytes is shorter than its step")
        (step,) = _STEP.unpack_from(body)
        if not (math.isfinite(step) and step > 0):
            raise DecodeError(f"{self.name}: the step {step!r} is not finite and > 0")
        n = sum(s.numel for s in specs)
        r = BitReader(body[_STEP.size :])
        q = read_symbols(r, n, coder)
        r.expect_end(f"{self.name} codes")
        return _expand(specs, q, step)


def _as_fp32(x: float) -> float:
    return _STEP.unpack(_STEP.pack(x))[0]


def _bisect_step(sigma: float, ok: Any, largest: bool, iterations: int = 40) -> float:
    """A step Δ = σ·2^t, t in [−40, 12], at the edge where ``ok`` changes, by bisection on t.

    ``largest``: the largest Δ for which ``ok`` holds (a distortion target: the error grows with Δ); else the
    smallest (a rate target: the rate falls as Δ grows). The end of the range if ``ok`` holds nowhere between.
    """
    lo, hi = -40.0, 12.0
    if largest and ok(sigma * 2.0**hi):
        return sigma * 2.0**hi
    if not largest and ok(sigma * 2.0**lo):
        return sigma * 2.0**lo
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if ok(sigma * 2.0**mid) == largest:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-4:
            break
    return sigma * 2.0 ** (lo if largest else hi)


def _zigzag(q: np.ndarray) -> np.ndarray:
    return np.where(q >= 0, 2 * q, -2 * q - 1).astype(np.uint64)


def estimated_bits(q: np.ndarray, coder: str) -> float:
    """The body's size in bits for these symbols: exact for Elias-γ, the empirical entropy plus side costs for rANS."""
    if coder == "elias_gamma":
        return float((2 * bit_lengths(_zigzag(q) + np.uint64(1)) - 1).sum())
    mags = np.abs(q)
    symbols = np.minimum(mags, ESCAPE)
    counts = np.bincount(symbols, minlength=1)
    p = counts[counts > 0] / q.size
    entropy = float(-(p * np.log2(p)).sum()) * q.size
    excess = mags[mags >= ESCAPE] - ESCAPE
    escapes = float((2 * bit_lengths(excess.astype(np.uint64) + np.uint64(1)) - 1).sum()) if excess.size else 0.0
    return entropy + float(np.count_nonzero(q)) + escapes + 12 * counts.size + 96


def write_symbols(q: np.ndarray, coder: str) -> bytes:
    w = BitWriter()
    if coder == "elias_gamma":
        if q.size:
            elias_gamma_encode(_zigzag(q) + np.uint64(1), w)
        return w.getvalue()
    mags = np.abs(q)
    symbols = np.minimum(mags, ESCAPE)
    if q.size:
        freq = rans.quantize_counts(np.bincount(symbols, minlength=1))
        rans.write_table(freq, w)
        rans.encode(symbols, freq, w)
    w.write_bits(q[q != 0] < 0)
    excess = mags[mags >= ESCAPE] - ESCAPE
    if excess.size:
        elias_gamma_encode(excess.astype(np.uint64) + np.uint64(1), w)
    return w.getvalue()


def read_symbols(r: BitReader, n: int, coder: str) -> np.ndarray:
    """The n integers q (int64); magnitudes beyond 2^62 are refused before any arithmetic on them."""
    if coder == "elias_gamma":
        z = elias_gamma_decode(r, n) - np.uint64(1) if n else np.zeros(0, np.uint64)
        if z.size and int(z.max()) >= 1 << 63:
            raise LimitExceededError("quantized_ec: a zig-zag integer beyond 2^63")
        z = z.astype(np.int64)
        return np.where(z % 2 == 0, z // 2, -(z + 1) // 2)
    if not n:
        return np.zeros(0, np.int64)
    freq = rans.read_table(r, ESCAPE + 1)
    mags = rans.decode(r, n, freq)
    nonzero = np.flatnonzero(mags)
    negative = r.read_bits(nonzero.size, "quantized_ec signs").astype(bool)
    escaped = np.flatnonzero(mags == ESCAPE)
    if escaped.size:
        excess = elias_gamma_decode(r, escaped.size) - np.uint64(1)
        if int(excess.max()) > (1 << 62):
            raise LimitExceededError("quantized_ec: an escaped magnitude beyond 2^62")
        mags[escaped] += excess.astype(np.int64)
    mags[nonzero[negative]] *= -1
    return mags


def _expand(specs: Sequence[TensorSpec], q: np.ndarray, step: float) -> dict[str, torch.Tensor]:
    """x̂ = Δ·q as float32 (float64 product first: the same rounding on both sides)."""
    with np.errstate(over="ignore"):  # a forged q·Δ beyond fp32 becomes inf, which the decode's check refuses
        flat = torch.from_numpy((q.astype(np.float64) * step).astype(np.float32))
    out, pos = OrderedDict(), 0
    for spec in specs:
        out[spec.name] = flat[pos : pos + spec.numel].reshape(spec.shape)
        pos += spec.numel
    return out
