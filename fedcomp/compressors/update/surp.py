"""SuRP: successive refinement for pruning (Isik, No & Weissman 2022), Algorithm 2.

**What the encoder does** (appendix D, Algorithm 2 "SuRP-modified"):

1. Normalize per layer: u⁽ˡ⁾ = |w⁽ˡ⁾| / ‖w⁽ˡ⁾‖₁; signs are kept aside.
2. λ ← ParamEst(u) = 1 / mean(u).
3. Iterate: the candidates are the coordinates with u_i > τ = (1/λ)·log(n/β)
   (β = log n by default); pick one, send its index, subtract τ from it;
   λ ← λ·n/(n − log(n/β)) (so τ shrinks geometrically).
4. The decoder adds τ to the coordinate it is told, runs the same λ
   schedule, denormalizes with the layer norms and restores the signs (one
   sign bit per coordinate, the first time it is chosen).

Stop when ``density``·n coordinates are nonzero, or at ``max_bytes``.

**Normalization** (``normalization``): "layer" is the paper's. On models
with many small layers (BatchNorm, biases) it gives a small layer's
coordinates normalized magnitudes thousands of times those of a big conv
layer, so most iterations refine them again and again: on a ResNet-18-sized
Laplacian update at 1% density, L ≈ 10.7 iterations per nonzero (about 140
bits per nonzero). "global" divides by one ℓ₁ norm over the whole update
(one float in the header instead of one per layer): L ≈ nnz there, but a
layer whose updates are small in absolute terms gets few coordinates. The
paper's LeNet-5 experiment is unaffected (few, similar layers).

**Departures, and why.**

- *Refresh that always makes progress.* The paper re-estimates λ as
  1/mean(residual) when no candidate is left. On data with an exponential
  tail (Laplacian updates) that barely moves τ and the loop stalls: each
  choice removes one candidate and the slowly falling τ admits almost none,
  so the pool of about β empties after about β iterations. Here a refresh
  advances the λ schedule by the smallest s ≥ 1 steps that puts τ below the
  β-th largest residual (restoring the pool of about β candidates the
  model expects, so skips stay near log₂(n/β) bits), and sends s (Elias-γ)
  after a reserved symbol: τ only ever falls, and every refresh yields
  candidates.
- *Index coding with a shared order and a cursor* (appendix F). Choosing
  "a random index from m_inds" equals taking the first candidate in a
  random order. Both sides derive the same pseudo-random order π of the n
  coordinates from a seed in the payload (a 4-round Feistel bijection with
  cycle walking: O(1) per coordinate, independent of numpy versions, and
  invertible, so neither side materializes π). The encoder scans π with a
  cursor and picks the first candidate at or after it; the symbol sent is
  the number of positions skipped + 1 (0 is the refresh). Since π is
  independent of the values, skips are geometric with p = |candidates|/n,
  so Golomb coding costs about log₂(n/|candidates|) + 1.5 bits; M is
  fitted to the skips of this payload and sent (Elias-γ). A coordinate
  chosen once in a pass is reached again only on the next pass, which is
  sampling the candidates without replacement within a pass rather than
  independently each time; the geometric law of the skips is unchanged.
- *Thresholds are bit-identical on both sides*: log(n/β) and λ₀ travel as
  float64, and every later λ is reached by the same float64
  multiplications in the same order (exponentiation by squaring for s),
  in the same compiled code on both sides (no fastmath).
- *Complexity*: one ``torch.topk`` reveals the largest magnitudes (more
  on demand), the shared order is computed only for them, and the
  sequential loop (heaps of candidates and of refined coordinates) runs
  compiled (:mod:`surp_kernel`): O(n + L log n) for L iterations, never
  O(n·L).

**Algorithm 1** (``algorithm = 1``): the signed normalized weights
u⁽ˡ⁾ = w⁽ˡ⁾/‖w⁽ˡ⁾‖₁, threshold (1/λ)·log(n/(2β)), one positive coordinate
(u > τ, τ subtracted) and one negative one (u < −τ, τ added) per iteration,
λ ← n/(n − 2·log(n/(2β)))·λ. It needs no sign bits (the slot says the
sign). Each sign is a *side* with its own cursor over the same shared order
and its own candidates; the refresh lowers τ until about β residuals
exceed it on both sides. A residual never changes sign (Remark 2), so the
two sides never exchange coordinates. When one sign has nothing left the
loop stops (an all-positive update cannot be sent by Algorithm 1).
"""

from __future__ import annotations

import functools
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
    elias_delta_decode,
    elias_delta_encode,
    elias_gamma_decode,
    elias_gamma_encode,
    golomb_decode,
    golomb_encode,
    golomb_parameter_for,
    pack,
)
from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.compressors.update import surp_kernel as kernel
from fedcomp.compressors.update.base import EncodeContext, Encoded, State, Update, UpdateCompressor
from fedcomp.config import require
from fedcomp.seeding import derive_seed

SURP_ORDER = 12  # seeding purpose
pow_by_squaring = kernel.pow_by_squaring


# ----------------------------------------------------------------------------- shared order


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _round_fn(x: np.ndarray, key: np.uint64, mask: np.uint64) -> np.ndarray:
    z = (x + key) * _M1
    z ^= z >> np.uint64(31)
    z *= _M2
    z ^= z >> np.uint64(29)
    return z & mask


@functools.lru_cache(maxsize=64)
def _round_keys(seed: int) -> list[np.uint64]:
    return [np.uint64(derive_seed(seed, SURP_ORDER, r)) for r in range(4)]


def _feistel(x: np.ndarray, half: int, keys: list[np.uint64], inverse: bool) -> np.ndarray:
    mask = np.uint64((1 << half) - 1)
    h = np.uint64(half)
    left, right = x >> h, x & mask
    if not inverse:
        for k in keys:
            left, right = right, left ^ _round_fn(right, k, mask)
    else:
        for k in reversed(keys):
            left, right = right ^ _round_fn(left, k, mask), left
    return (left << h) | right


def shared_order(positions: np.ndarray, n: int, seed: int, inverse: bool = False) -> np.ndarray:
    """π(position) → coordinate (or π⁻¹ with ``inverse``): a seeded bijection of [0, n)."""
    x = np.asarray(positions, dtype=np.uint64).copy()
    half = max(1, (max(1, (n - 1).bit_length()) + 1) // 2)
    keys = _round_keys(seed)
    todo = np.ones(x.shape, dtype=bool)
    for _ in range(10_000):  # cycle walking: each walk step lands in [0, n) with p ≥ 1/4
        if not todo.any():
            return x.astype(np.int64)
        x[todo] = _feistel(x[todo], half, keys, inverse)
        todo = x >= np.uint64(n)
    raise RuntimeError("cycle walking did not terminate")  # pragma: no cover - probability ~ (3/4)^10000


# ----------------------------------------------------------------------------- parameters


@dataclass
class SurpParams:
    density: float = 0.001
    """Stop once this fraction of all coordinates is nonzero."""
    max_bytes: int = 0
    """Also stop before the body exceeds this many bytes (0 = no budget)."""
    beta: float = 0.0
    """β of the threshold (1/λ)·log(n/β); 0 means log n (zero-rate optimal)."""
    algorithm: int = 2
    """2: SuRP-modified on magnitudes, sign bits (the paper's experiments); 1: ± pairs on signed values."""
    normalization: str = "layer"
    """"layer": u⁽ˡ⁾ = w⁽ˡ⁾/‖w⁽ˡ⁾‖₁ (the paper); "global": one ℓ₁ norm over the whole update."""
    error_feedback: bool | None = None

    def validate(self, path: str) -> None:
        require(0 < self.density <= 1, f"{path}.density", f"a number in (0, 1], got {self.density}")
        require(self.max_bytes >= 0, f"{path}.max_bytes", "an integer >= 0")
        require(self.beta >= 0, f"{path}.beta", "a number >= 0 (0 = log n)")
        require(self.algorithm in (1, 2), f"{path}.algorithm", f"1 or 2 (the paper's algorithms), got {self.algorithm}")
        require(
            self.normalization in ("layer", "global"),
            f"{path}.normalization",
            f'"layer" or "global", got {self.normalization!r}',
        )


@dataclass
class SurpStream:
    """What an encode decided, before it is written as bits."""

    seed: int
    logf: float
    lam0: float
    norms: np.ndarray  # float32 per layer
    symbols: list[int]  # skip + 1 per pick, or 0 for a refresh
    steps: list[int]  # s of each refresh, in order
    signs: list[bool]  # algorithm 2: True = negative, per distinct coordinate in first-chosen order
    sides: int = 1  # picks per iteration: 1 (algorithm 2) or 2 (algorithm 1: positive, negative)


# ----------------------------------------------------------------------------- the compressor


@UPDATE_COMPRESSORS.register("surp", "SuRP successive-refinement pruning, Golomb-coded indices (Isik et al. 2022)")
class SurpCompressor(UpdateCompressor):
    name = "surp"
    Params = SurpParams
    error_feedback_default = True

    def encode(self, update: Update, state: State | None = None, ctx: EncodeContext | None = None) -> Encoded:
        ctx = ctx or EncodeContext()
        tensors = OrderedDict((k, v.detach().to("cpu", torch.float32)) for k, v in update.items())
        flats = [t.reshape(-1).numpy() for t in tensors.values()]
        seed = derive_seed(self.seed, SURP_ORDER, ctx.server_round, ctx.client_id) & 0xFFFFFFFF
        stream, coords, taus, stats = run_encoder(flats, self.params, seed)
        n = sum(f.size for f in flats)
        body = write_stream(stream)
        if self.params.max_bytes and len(body) > self.params.max_bytes:
            stream, coords, taus = _fit_budget(stream, coords, taus, self.params.max_bytes)
            body = write_stream(stream)
            stats["iterations"] = float(len(coords) // stream.sides)
            stats["refreshes"] = float(len(stream.steps))
        specs = [TensorSpec(name, tuple(t.shape), torch.float32) for name, t in tensors.items()]
        sent = reconstruct(specs, stream.norms, coords, signed_steps(stream, coords, taus, n))
        stats["density"] = kernel.first_chosen(coords, n).size / max(n, 1)
        stats["bits_per_iteration"] = 8 * len(body) / max(stats["iterations"], 1.0)
        params: dict[str, Any] = {"algorithm": 1} if stream.sides == 2 else {}
        if self.params.normalization == "global":
            params["norm"] = "global"
        return Encoded(pack(self.name, params, specs, body, by_digest=True), sent, stats, dict(state or {}))

    def decode_body(self, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes) -> dict[str, torch.Tensor]:
        sides = 2 if params.get("algorithm", 2) == 1 else 1
        n_norms = 1 if params.get("norm") == "global" else len(specs)
        n = sum(s.numel for s in specs)
        stream, coords = read_stream(body, n_norms, n, sides)
        coords, taus = replay(stream, n, coords)
        return reconstruct(list(specs), stream.norms, coords, signed_steps(stream, coords, taus, n))


# ----------------------------------------------------------------------------- encoder


def normalize(flats: list[np.ndarray], per_layer: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """ℓ₁ normalization per layer (or over everything): (u as float64, the norms as float32)."""
    if not per_layer:
        flats = [np.concatenate(flats) if flats else np.zeros(0, np.float32)]
    norms = np.array([np.abs(f, dtype=np.float64).sum() for f in flats], dtype=np.float32)
    parts = [
        f.astype(np.float64) / np.float64(norm) if norm > 0 else np.zeros(f.size)
        for f, norm in zip(flats, norms, strict=True)
    ]
    return (np.concatenate(parts) if parts else np.zeros(0)), norms


def run_encoder(
    flats: list[np.ndarray], params: SurpParams, seed: int
) -> tuple[SurpStream, np.ndarray, np.ndarray, dict[str, float]]:
    """Algorithm 2 (or 1) with the cursor/refresh design above; returns the stream and each pick's (coord, τ)."""
    u, norms = normalize(flats, per_layer=params.normalization == "layer")
    n = u.size
    sides = 2 if params.algorithm == 1 else 1
    mag = np.abs(u)
    total = float(mag.sum())
    empty = SurpStream(seed, 0.0, 0.0, norms, [], [], [], sides)
    if n < 2 or total <= 0:
        return empty, np.zeros(0, np.int64), np.zeros(0), {"iterations": 0.0, "refreshes": 0.0}
    beta = params.beta if params.beta > 0 else math.log(n)
    beta = min(beta, n / (2.0 * sides))
    logf = math.log(n / (sides * beta))  # log(n/β), or log(n/(2β)) for algorithm 1
    lam0 = n / total  # ParamEst: 1 / mean |u|
    factor = n / (n - sides * logf)
    target = max(1, min(n, int(math.ceil(params.density * n))))
    max_iter = 50 * target + 1000
    m_ref = max(1, int(round(beta)))
    side_values = [mag] if sides == 1 else [np.where(u > 0, mag, 0.0), np.where(u < 0, mag, 0.0)]
    side_total = np.array([np.count_nonzero(v) for v in side_values], dtype=np.int64)

    reveal = 4 * target + 4 * m_ref + 1024  # refinement revisits coordinates, so few reruns
    cap = sides * (16 * target + 64)  # per-layer normalization refines small layers often: L can be ≫ target
    while True:
        rev, rev_pos, rev_len = _reveal(side_values, side_total, reveal, n, seed)
        out_sym = np.empty(cap, np.int64)
        out_steps = np.empty(cap, np.int64)
        out_coord = np.empty(cap, np.int64)
        out_tau = np.empty(cap, np.float64)
        status, n_sym, n_steps, n_pick, iterations = kernel.encode_loop(
            mag, rev, rev_pos, rev_len, side_total, logf, lam0, factor, m_ref, target, max_iter,
            out_sym, out_steps, out_coord, out_tau,
        )  # fmt: skip
        if status == kernel.NEED_MORE_REVEALED:
            reveal *= 4
        elif status == kernel.NEED_MORE_CAPACITY:
            cap *= 4
        else:
            break
    coords = out_coord[:n_pick].copy()
    signs: list[bool] = []
    if sides == 1 and coords.size:
        signs = (u[kernel.first_chosen(coords, n)] < 0).tolist()
    stream = SurpStream(seed, logf, lam0, norms, out_sym[:n_sym].tolist(), out_steps[:n_steps].tolist(), signs, sides)
    stats = {"iterations": float(iterations), "refreshes": float(n_steps)}
    return stream, coords, out_tau[:n_pick].copy(), stats


def _reveal(
    side_values: list[np.ndarray], side_total: np.ndarray, count: int, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each side's ``count`` largest coordinates, decreasing, with their positions in the shared order."""
    lengths = np.minimum(side_total, count)
    width = max(1, int(lengths.max()))
    rev = np.full((len(side_values), width), -1, dtype=np.int64)
    rev_pos = np.full((len(side_values), width), -1, dtype=np.int64)
    for s, values in enumerate(side_values):
        k = int(lengths[s])
        if k:
            top = torch.topk(torch.from_numpy(values), k, sorted=True).indices.numpy()
            rev[s, :k] = top
            rev_pos[s, :k] = shared_order(top, n, seed, inverse=True)
    return rev, rev_pos, lengths.astype(np.int64)


def _fit_budget(
    stream: SurpStream, coords: np.ndarray, taus: np.ndarray, max_bytes: int
) -> tuple[SurpStream, np.ndarray, np.ndarray]:
    """The longest prefix of whole iterations whose body fits ``max_bytes`` (successive refinement)."""
    symbols = np.array(stream.symbols, dtype=np.int64)
    picks_before = np.concatenate([[0], np.cumsum(symbols > 0)])
    refreshes_before = np.concatenate([[0], np.cumsum(symbols == 0)])

    def prefix(m: int) -> tuple[SurpStream, int]:
        n_pick = int(picks_before[m])
        signs = (
            stream.signs[: np.unique(coords[:n_pick]).size] if stream.sides == 1 else []
        )  # signs follow first choices
        steps = stream.steps[: int(refreshes_before[m])]
        return SurpStream(
            stream.seed, stream.logf, stream.lam0, stream.norms, stream.symbols[:m], steps, signs, stream.sides
        ), n_pick

    # Cut only between iterations: after a refresh or after a whole group of picks.
    ends = (symbols == 0) | (picks_before[1:] % stream.sides == 0)
    cuts = [0, *(np.flatnonzero(ends) + 1).tolist()]
    lo, hi = 0, len(cuts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(write_stream(prefix(cuts[mid])[0])) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    best, n_pick = prefix(cuts[lo])
    return best, coords[:n_pick], taus[:n_pick]


# ----------------------------------------------------------------------------- bits


_HEAD = struct.Struct("<Idd")


def write_stream(s: SurpStream) -> bytes:
    """Body: seed (u32), log(n/β) and λ₀ (float64), layer norms (fp32), then the bits."""
    w = BitWriter()
    symbols = np.array(s.symbols, dtype=np.int64)
    elias_delta_encode([len(symbols) + 1], w)
    m = golomb_parameter_for(symbols) if symbols.size else 1
    elias_delta_encode([m], w)
    golomb_encode(symbols, m, w)
    if s.steps:
        elias_gamma_encode(s.steps, w)
    w.write_bits(np.array(s.signs, dtype=np.uint8))
    return _HEAD.pack(s.seed, s.logf, s.lam0) + s.norms.astype("<f4").tobytes() + w.getvalue()


def read_stream(body: bytes, n_layers: int, n: int, sides: int = 1) -> tuple[SurpStream, np.ndarray]:
    """Parse a body into its stream and the coordinate of every pick (validated against ``n``)."""
    head = _HEAD.size + 4 * n_layers
    if len(body) < head:
        raise DecodeError(f"surp: body of {len(body)} bytes is shorter than its {head}-byte header")
    seed, logf, lam0 = _HEAD.unpack_from(body)
    norms = np.frombuffer(body[_HEAD.size : head], dtype="<f4").astype(np.float32)
    if not (math.isfinite(logf) and math.isfinite(lam0)) or not 0 <= logf < n / sides or lam0 < 0:
        raise DecodeError(f"surp: bad threshold parameters log(n/β)={logf!r}, λ₀={lam0!r}")
    if not np.all(np.isfinite(norms)) or np.any(norms < 0):
        raise DecodeError("surp: layer norms must be finite and >= 0")
    r = BitReader(body[head:])
    count = int(elias_delta_decode(r, 1)[0]) - 1
    if count > r.remaining:
        raise LimitExceededError(f"surp: {count} symbols declared in {r.remaining} bits")
    m = int(elias_delta_decode(r, 1)[0])
    symbols = golomb_decode(r, count, m)
    if symbols.size and int(symbols.max()) > n:
        raise DecodeError(f"surp: a skip of {int(symbols.max()) - 1} positions exceeds n = {n}")
    n_ref = int((symbols == 0).sum())
    steps = elias_gamma_decode(r, n_ref).astype(np.int64).tolist() if n_ref else []
    stream = SurpStream(seed, logf, lam0, norms, symbols.tolist(), steps, [], sides)
    coords = pick_coords(stream, n)
    if sides == 1:
        distinct = kernel.first_chosen(coords, n).size
        stream.signs = r.read_bits(distinct, "surp sign bits").astype(bool).tolist()
    r.expect_end("surp stream")
    return stream, coords


def pick_coords(stream: SurpStream, n: int) -> np.ndarray:
    """The coordinate of every pick: each side's cursor advances by its symbols over the shared order."""
    symbols = np.array(stream.symbols, dtype=np.int64)
    picks = symbols[symbols > 0]
    if picks.size == 0:
        return np.zeros(0, np.int64)
    if n < 2:
        raise DecodeError("surp: iterations on fewer than 2 coordinates")
    pos = np.empty(picks.size, np.int64)
    for side in range(stream.sides):
        pos[side :: stream.sides] = (np.cumsum(picks[side :: stream.sides]) - 1) % n
    return shared_order(pos, n, stream.seed)


def replay(stream: SurpStream, n: int, coords: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's λ schedule: (coordinate, τ) of every pick, bit-identical to the encoder."""
    coords = pick_coords(stream, n) if coords is None else coords
    if coords.size and stream.lam0 <= 0:
        raise DecodeError("surp: iterations without a threshold (λ₀ = 0)")
    if not stream.symbols:
        return coords, np.zeros(0)
    factor = n / (n - stream.sides * stream.logf)
    symbols = np.array(stream.symbols, dtype=np.int64)
    steps = np.array(stream.steps, dtype=np.int64)
    taus, status = kernel.replay_taus(symbols, steps, stream.sides, stream.logf, stream.lam0, factor)
    if status:
        raise DecodeError("surp: a refresh or the end of the stream splits a ± pair of algorithm 1")
    return coords, taus


def signed_steps(stream: SurpStream, coords: np.ndarray, taus: np.ndarray, n: int) -> np.ndarray:
    """Each pick's step with its sign: from the slot (algorithm 1) or the sign bits (algorithm 2)."""
    if stream.sides == 2:
        sign = np.where(np.arange(taus.size) % 2 == 1, -1.0, 1.0)
        return taus * sign
    if coords.size == 0:
        return taus
    firsts = kernel.first_chosen(coords, n)
    if firsts.size != len(stream.signs):
        raise DecodeError(f"surp: {len(stream.signs)} sign bits for {firsts.size} coordinates")
    negative = np.zeros(n, dtype=bool)
    negative[firsts] = stream.signs
    return np.where(negative[coords], -taus, taus)


def reconstruct(
    specs: list[TensorSpec], norms: np.ndarray, coords: np.ndarray, steps: np.ndarray
) -> dict[str, torch.Tensor]:
    """Σ signed τ per coordinate (in pick order), denormalized per layer (or by the one global norm)."""
    n = sum(s.numel for s in specs)
    recon = np.zeros(n, dtype=np.float64)
    np.add.at(recon, coords, steps)
    if len(norms) == 1 and len(specs) > 1:
        norms = np.repeat(norms, len(specs))
    out, offset = OrderedDict(), 0
    for spec, norm in zip(specs, norms, strict=True):
        part = recon[offset : offset + spec.numel] * np.float64(norm)
        out[spec.name] = torch.from_numpy(part.astype(np.float32)).view(spec.shape)
        offset += spec.numel
    return out
