"""Staged SuRP: the successive refinement of SuRP (Isik, No & Weissman 2022) sent one stage at a time.

**Where it comes from.** SuRP (section 5.2, Algorithm 2) refines the
reconstruction one index at a time: a coordinate whose residual exceeds the
threshold τ_t = (1/λ_t)·log(n/β) gets τ_t, τ_t is subtracted from its
residual, and the threshold falls. Lemma 1's conditional law (the error is
again Laplacian, i.e. the magnitudes are exponential and memoryless) is
what makes this successive refinement work. In a federated update at 1%
density the paper's schedule hardly moves τ over the whole update (it
falls by (1 − log(n/β)/n)^L, 13% over L = 0.01·n iterations), so the
iterative form is "sign + about one magnitude" per coordinate at
≈ log₂(n/|candidates|) + 2.5 bits per *iteration*. Sending every residual
above a threshold *at once* changes nothing in what is reconstructed and
lets the indices be coded as a set, which is what this module does.

**The stages.** With magnitudes a_i = |g_i| (one threshold over the whole
update: reverse water-filling across layers, see :mod:`.surp`), stage
thresholds τ_1 > τ_2 > … > τ_S form a geometric schedule

    τ_S = the (k+1)-th largest magnitude,   τ_{s−1} = q·τ_s,

with S the number of stages that keeps τ_1 below max a_i, k the target
support (``density``·n, or the most that fits ``max_bytes``) and q the
``stage_ratio`` (2 by default). At stage s (Remark 2 and Algorithm 2's
"subtract τ"):

1. *refinements*: every coordinate already sent whose residual
   r_i = a_i − â_i is at least τ_s gets â_i ← â_i + τ_s; they are sent as
   one index set over the positions of the support sent so far (in the
   order it was sent), so a refinement costs about h(p_s)/p_s bits where
   p_s is the fraction of the support refined;
2. *new coordinates*: every unsent coordinate with a_i > τ_s gets
   â_i = τ_s; sent as one index set over [0, n), then one sign bit each.

Both index sets are Golomb-coded gaps with M derived from (count, range)
(:func:`fedcomp.coding.encode_indices`), so no parameter travels. The
decoder rebuilds τ_s from the two header values (τ_S and q as float32,
exact in float64) by the same float64 multiplications in the same order,
and each â_i by the same float64 additions in stage order: its output is
bit-identical to the encoder's ``sent``.

**What it guarantees.** The support is exactly {i : a_i > τ_S}, i.e. top-k
(fewer only on ties at the k-th magnitude). Every coordinate's sum stays
at most a_i in float64 (a refinement is made only when fl(â_i + τ_s) ≤ a_i)
and float32 rounding is monotone, so the decoded |ĝ_i| ≤ |g_i| with g_i's
sign: Remark 2 coordinate-wise, bit for bit. With q = 2 the stages are a
greedy binary expansion of a_i/τ_S, so every sent coordinate is within τ_S
(the largest magnitude not sent) of its value.

**Rate.** With k_s coordinates entering at stage s and P_s the support
before it, the body costs about

    Σ_s [ k_s·(log₂(n/k_s) + 1.44 + 1) + P_s·h(p_s) ]  + 64 header bits
    = k·(log₂(n/k) + 2.44 + H(entry stage)) + Σ_s P_s·h(p_s)

(1.44 ≈ log₂ e is the Golomb overhead of geometric gaps at small density,
1 the sign). On Laplacian data at 1% density q = 2 gives about two stages:
99% of the support enters at the last one, so H(entry stage) ≈ 0.1 bit and
the refinements ≈ 0.01 bit per nonzero: ≈ log₂(n/k) + 2.6 bits per
nonzero, against log₂(n/k) + 33.4 for top-k with fp32 values.

**Departures, and why.** The paper sets τ from the model, λ = 1/mean|u|;
here the last threshold is the data's (k+1)-th magnitude and the first
stages follow a geometric schedule from it. On real updates (heavier
tails than Laplacian) the model's (1/λ)·log(n/β) misses the target count
by orders of magnitude, and the top stages need thresholds near the data's
own maximum to refine outliers within a few stages. New coordinates are
coded over [0, n) rather than over the unsent ones (a ∼ log₂(1/(1 − k/n))
= 0.015 bit per nonzero loss at 1%) so that both sides keep the support in
the order it was sent without merging it each stage.

**What a decoder accepts**: S ≤ :data:`MAX_STAGES`; q in
[:data:`MIN_RATIO`, :data:`MAX_RATIO`]; τ_S finite and > 0 and τ_1 at most
float32's largest value (the encoder's τ_1 is below a float32 magnitude);
refinement positions below the support sent so far; new coordinates not
sent before. Time O(payload bits + S + n), memory O(n).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedcomp.coding import (
    BitReader,
    BitWriter,
    DecodeError,
    LimitExceededError,
    decode_indices,
    elias_delta_decode,
    elias_delta_encode,
    encode_indices,
)

MIN_RATIO, MAX_RATIO = 1.25, 16.0
"""The stage ratio q a payload may have (the parameter's range)."""
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_STAGES = math.ceil(280 * math.log(2) / math.log(MIN_RATIO)) + 2
"""Float32 magnitudes span less than 2^280: no encoder needs more stages at the smallest q."""
_HEAD = struct.Struct("<ff")


@dataclass
class StagedPlan:
    """What an encode decided: the support in the order it was sent and each coordinate's reconstruction."""

    tau_last: np.float32
    ratio: np.float32
    stages: int
    coords: np.ndarray  # int64, support in sending order (entry stage, then index)
    entry: np.ndarray  # int64 stage (0-based) at which each entered
    negative: np.ndarray  # bool per support coordinate
    refined: list[np.ndarray]  # per stage: positions (into coords) refined at that stage, ascending
    magnitude: np.ndarray  # float64 â per support coordinate, as the decoder will sum it


def thresholds(tau_last: float, ratio: float, stages: int) -> np.ndarray:
    """τ_1 > … > τ_S as float64: τ_S = ``tau_last``, τ_{s−1} = τ_s·q, one multiplication per stage (both sides)."""
    out = np.empty(stages, dtype=np.float64)
    tau = float(tau_last)
    for s in range(stages - 1, -1, -1):
        out[s] = tau
        tau = tau * float(ratio)
    return out


class Magnitudes:
    """|g| of an update's tensors as one flat float32 vector (one pass, no signed copy), and signs on demand."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.parts = [t.reshape(-1) for t in tensors]
        sizes = [p.numel() for p in self.parts]
        self.ends = np.cumsum(sizes, dtype=np.int64)
        self.n = int(self.ends[-1]) if sizes else 0
        self.abs = torch.empty(self.n, dtype=torch.float32)
        start = 0
        for part in self.parts:
            torch.abs(part, out=self.abs[start : start + part.numel()])
            start += part.numel()

    def negative(self, coords: np.ndarray) -> np.ndarray:
        """Whether g is negative at each of ``coords`` (gathered layer by layer)."""
        out = np.zeros(coords.size, dtype=bool)
        if coords.size == 0:
            return out
        layer = np.searchsorted(self.ends, coords, side="right")
        order = np.argsort(layer, kind="stable")
        counts = np.bincount(layer, minlength=len(self.parts))
        starts = self.ends - np.array([p.numel() for p in self.parts], dtype=np.int64)
        pos = 0
        for index, count in enumerate(counts.tolist()):
            if count:
                sel = order[pos : pos + count]
                local = torch.from_numpy(coords[sel] - starts[index])
                out[sel] = (self.parts[index][local] < 0).numpy()
                pos += count
        return out


def top_magnitudes(mags: Magnitudes, count: int, ordered: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest |g| (indices int64, magnitudes float32); decreasing if ``ordered``."""
    count = min(count, mags.n)
    if count <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    top = torch.topk(mags.abs, count, sorted=ordered)
    return top.indices.numpy(), top.values.numpy()


def plan(mags: Magnitudes, idx: np.ndarray, mag: np.ndarray, k: int, ratio: float, ordered: bool = False) -> StagedPlan:
    """The stages for a support of (at most) the ``k`` largest magnitudes among (``idx``, ``mag``).

    ``idx``/``mag`` hold at least the k + 1 largest magnitudes (decreasing
    when ``ordered``, which lets a byte-budget search take prefixes).
    """
    q = np.float32(ratio)
    empty = StagedPlan(np.float32(0), q, 0, np.zeros(0, np.int64), np.zeros(0, np.int64),
                       np.zeros(0, bool), [], np.zeros(0))  # fmt: skip
    if k <= 0 or mag.size == 0:
        return empty
    if ordered:
        cand_idx, cand = idx[: k + 1], mag[: k + 1]
        tau_last = cand[k] if cand.size > k else np.float32(0)
    else:
        cand_idx, cand = idx, mag
        tau_last = np.float32(cand.min()) if cand.size > k else np.float32(0)
    keep = cand > tau_last
    if not keep.any() and tau_last == 0:
        return empty
    if tau_last == 0:  # fewer than k + 1 nonzeros: all of them, below the smallest
        smallest = np.float32(cand[keep].min())
        tau_last = np.float32(smallest * np.float32(0.5))
        if tau_last == 0:
            tau_last = smallest
        keep = cand > tau_last
    coords, a = cand_idx[keep].astype(np.int64), cand[keep].astype(np.float64)
    if coords.size == 0:
        return empty
    top = float(a.max())
    stages = 1
    tau = float(tau_last)
    while tau * float(q) < top and stages < MAX_STAGES:
        tau *= float(q)
        stages += 1
    tau_s = thresholds(tau_last, q, stages)
    # entry stage: the first (largest) τ_s below a_i
    entry = (stages - np.searchsorted(tau_s[::-1], a, side="left")).astype(np.int64)
    order = np.lexsort((coords, entry))
    coords, a, entry = coords[order], a[order], entry[order]
    acc = tau_s[entry]
    entered = np.searchsorted(entry, np.arange(stages + 1), side="left")  # support size before each stage
    refined = []
    for s in range(stages):
        prefix = int(entered[s])
        if prefix == 0:
            refined.append(np.zeros(0, np.int64))
            continue
        trial = acc[:prefix] + tau_s[s]
        hit = np.flatnonzero(trial <= a[:prefix])
        acc[hit] = trial[hit]
        refined.append(hit.astype(np.int64))
    negative = mags.negative(coords)
    return StagedPlan(tau_last, q, stages, coords, entry, negative, refined, acc)


MIN_BODY = _HEAD.size + 1
"""The smallest body: the header and S = 0 (nothing sent)."""


def encode(mags: Magnitudes, k: int, ratio: float, max_body: int = 0) -> tuple[StagedPlan, bytes]:
    """The stages for the top-k support, or for the largest support whose body fits ``max_body`` bytes (0 = none).

    Under a budget the k + 1 largest magnitudes are sorted once and the
    support sizes are searched by bisection on whole encodes (each a prefix
    of that order): the body returned always fits.
    """
    n = mags.n
    if not max_body:
        idx, mag = top_magnitudes(mags, k + 1)
        p = plan(mags, idx, mag, k, ratio)
        return p, write(p, n)
    if max_body < MIN_BODY:
        raise ValueError(f"a byte budget leaving {max_body} bytes for the body is below the smallest, {MIN_BODY}")
    idx, mag = top_magnitudes(mags, k + 1, ordered=True)

    def attempt(size: int) -> tuple[StagedPlan, bytes]:
        p = plan(mags, idx, mag, size, ratio, ordered=True)
        return p, write(p, n)

    best = attempt(k)
    if len(best[1]) <= max_body:
        return best
    lo, hi = 0, k - 1  # the largest fitting size lies in [lo, hi]; size 0 always fits
    best = attempt(0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        trial = attempt(mid)
        if len(trial[1]) <= max_body:
            lo, best = mid, trial
        else:
            hi = mid - 1
    return best  # lo moves only to a size that fitted, and best is its encode


def write(p: StagedPlan, n: int) -> bytes:
    """Body: τ_S and q (float32), S (Elias-δ), then per stage the refinement set, the new set and their signs."""
    w = BitWriter()
    elias_delta_encode([p.stages + 1], w)
    entered = np.searchsorted(p.entry, np.arange(p.stages + 1), side="left")
    for s in range(p.stages):
        lo, hi = int(entered[s]), int(entered[s + 1])
        encode_indices(p.refined[s], lo, w)
        encode_indices(p.coords[lo:hi], n, w)
        w.write_bits(p.negative[lo:hi].astype(np.uint8))
    return _HEAD.pack(float(p.tau_last), float(p.ratio)) + w.getvalue()


def values(p: StagedPlan) -> np.ndarray:
    """The decoded value of each support coordinate (float32, signed), exactly as :func:`read` makes it."""
    v = p.magnitude.astype(np.float32)
    return np.where(p.negative, -v, v)


def read(body: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse and replay a body: (support coordinates, their float32 values); every field checked.

    Time O(bits + S): each index costs at least one bit and each stage
    O(1) besides its sets; memory O(n) (one mark per coordinate).
    """
    if len(body) < _HEAD.size:
        raise DecodeError(f"surp staged: body of {len(body)} bytes is shorter than its {_HEAD.size}-byte header")
    tau_last, ratio = (float(x) for x in _HEAD.unpack_from(body))
    r = BitReader(body[_HEAD.size :])
    stages = int(elias_delta_decode(r, 1)[0]) - 1
    if stages > MAX_STAGES:
        raise LimitExceededError(f"surp staged: {stages} stages, at most {MAX_STAGES}")
    if stages == 0:
        r.expect_end("surp staged stream")
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if not (math.isfinite(tau_last) and tau_last > 0):
        raise DecodeError(f"surp staged: last threshold {tau_last!r} must be finite and > 0")
    if not MIN_RATIO <= ratio <= MAX_RATIO:
        raise DecodeError(f"surp staged: stage ratio {ratio!r} outside [{MIN_RATIO}, {MAX_RATIO}]")
    tau_s = thresholds(tau_last, ratio, stages)
    if not tau_s[0] <= FLOAT32_MAX:
        raise DecodeError(f"surp staged: first threshold {tau_s[0]!r} exceeds float32's range ({stages} stages)")
    sent = np.zeros(n, dtype=bool)
    coords: list[np.ndarray] = []
    negative: list[np.ndarray] = []
    acc = np.zeros(0, np.float64)
    size = 0
    for s in range(stages):
        hit = decode_indices(r, size)
        if hit.size:
            acc[hit] += tau_s[s]
        new = decode_indices(r, n)
        if new.size:
            if sent[new].any():
                raise DecodeError(f"surp staged: stage {s + 1} sends again a coordinate already sent")
            sent[new] = True
            coords.append(new)
            negative.append(r.read_bits(new.size, "surp staged sign bits").astype(bool))
            acc = _grow(acc, size + new.size)
            acc[size : size + new.size] = tau_s[s]
            size += new.size
    r.expect_end("surp staged stream")
    if not coords:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    with np.errstate(over="ignore"):  # sums beyond float32 become inf: the output check refuses them
        v = acc[:size].astype(np.float32)
    neg = np.concatenate(negative)
    return np.concatenate(coords), np.where(neg, -v, v)


def _grow(acc: np.ndarray, need: int) -> np.ndarray:
    """``acc`` with room for ``need`` entries (capacity doubles: O(support) copies in all)."""
    if need <= acc.size:
        return acc
    out = np.zeros(max(need, 2 * acc.size), np.float64)
    out[: acc.size] = acc
    return out
