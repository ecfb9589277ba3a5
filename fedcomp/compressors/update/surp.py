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
  multiplications in the same order (exponentiation by squaring for s).
- *Complexity*: O(n) selection of the top coordinates (argpartition, grown
  on demand), a heap of decreased residuals and a position-sorted candidate
  list: O(n + L log n) for L iterations, never O(n·L).

Algorithm 1 (± pairs on signed values) is not implemented.
"""

from __future__ import annotations

import bisect
import functools
import heapq
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
from fedcomp.compressors.update.base import EncodeContext, Encoded, State, Update, UpdateCompressor
from fedcomp.config import require
from fedcomp.seeding import derive_seed

SURP_ORDER = 12  # seeding purpose


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


def pow_by_squaring(base: float, exponent: int) -> float:
    """base**exponent with float64 multiplications only (bit-identical everywhere)."""
    result, b, e = 1.0, base, exponent
    while e:
        if e & 1:
            result *= b
        b *= b
        e >>= 1
    return result


# ----------------------------------------------------------------------------- parameters


@dataclass
class SurpParams:
    density: float = 0.001
    """Stop once this fraction of all coordinates is nonzero."""
    max_bytes: int = 0
    """Also stop before the body exceeds this many bytes (0 = no budget)."""
    beta: float = 0.0
    """β of the threshold (1/λ)·log(n/β); 0 means log n (zero-rate optimal)."""
    error_feedback: bool | None = None

    def validate(self, path: str) -> None:
        require(0 < self.density <= 1, f"{path}.density", f"a number in (0, 1], got {self.density}")
        require(self.max_bytes >= 0, f"{path}.max_bytes", "an integer >= 0")
        require(self.beta >= 0, f"{path}.beta", "a number >= 0 (0 = log n)")


@dataclass
class SurpStream:
    """What an encode decided, before it is written as bits."""

    seed: int
    logf: float
    lam0: float
    norms: np.ndarray  # float32 per layer
    symbols: list[int]  # skip + 1, or 0 for a refresh
    steps: list[int]  # s of each refresh, in order
    signs: list[bool]  # True = negative, per distinct coordinate in first-chosen order


# ----------------------------------------------------------------------------- the compressor


@UPDATE_COMPRESSORS.register("surp", "SuRP successive-refinement pruning, Golomb-coded indices (Isik et al. 2022)")
class SurpCompressor(UpdateCompressor):
    name = "surp"
    Params = SurpParams
    error_feedback_default = True

    def encode(self, update: Update, state: State | None = None, ctx: EncodeContext | None = None) -> Encoded:
        ctx = ctx or EncodeContext()
        tensors = OrderedDict((k, v.detach().to("cpu", torch.float32)) for k, v in update.items())
        flats = [t.reshape(-1).numpy().astype(np.float64) for t in tensors.values()]
        seed = derive_seed(self.seed, SURP_ORDER, ctx.server_round, ctx.client_id) & 0xFFFFFFFF
        stream, coords, taus, stats = run_encoder(flats, self.params, seed)
        body = write_stream(stream)
        if self.params.max_bytes and len(body) > self.params.max_bytes:
            stream, coords, taus = _fit_budget(stream, coords, taus, self.params.max_bytes)
            body = write_stream(stream)
            stats["iterations"] = float(sum(1 for s in stream.symbols if s))
            stats["refreshes"] = float(len(stream.steps))
        specs = [TensorSpec(name, tuple(t.shape), torch.float32) for name, t in tensors.items()]
        sent = reconstruct(specs, stream.norms, coords, taus, np.array(stream.signs, dtype=bool))
        n = sum(f.size for f in flats)
        stats["density"] = len(stream.signs) / max(n, 1)
        stats["bits_per_iteration"] = 8 * len(body) / max(stats["iterations"], 1.0)
        return Encoded(pack(self.name, {}, specs, body, by_digest=True), sent, stats, dict(state or {}))

    def decode_body(self, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes) -> dict[str, torch.Tensor]:
        n = sum(s.numel for s in specs)
        stream = read_stream(body, len(specs), n)
        coords, taus = replay(stream, n)
        return reconstruct(list(specs), stream.norms, coords, taus, np.array(stream.signs, dtype=bool))


# ----------------------------------------------------------------------------- encoder


def run_encoder(
    flats: list[np.ndarray], params: SurpParams, seed: int
) -> tuple[SurpStream, np.ndarray, np.ndarray, dict[str, float]]:
    """Algorithm 2 with the cursor/refresh design above; returns the stream and (coords, τ)."""
    norms = np.array([np.abs(f).sum() for f in flats], dtype=np.float32)
    u_parts, neg_parts = [], []
    for f, norm in zip(flats, norms, strict=True):
        u_parts.append(np.abs(f) / np.float64(norm) if norm > 0 else np.zeros_like(f))
        neg_parts.append(f < 0)
    u = np.concatenate(u_parts) if u_parts else np.zeros(0)
    negative = np.concatenate(neg_parts) if neg_parts else np.zeros(0, dtype=bool)
    n = u.size
    empty = SurpStream(seed, 0.0, 0.0, norms, [], [], [])
    total = float(u.sum())
    if n < 2 or total <= 0:
        return empty, np.zeros(0, np.int64), np.zeros(0), {"iterations": 0.0, "refreshes": 0.0}
    beta = params.beta if params.beta > 0 else math.log(n)
    beta = min(beta, n / 2.0)
    logf = math.log(n / beta)
    lam = n / total  # ParamEst: 1 / mean(u)
    factor = n / (n - logf)
    target = max(1, min(n, int(math.ceil(params.density * n))))
    max_iter = 50 * target + 1000

    # Coordinates by decreasing u, revealed in chunks (argpartition: O(n) per chunk).
    order = _TopOrder(u, seed)
    residual: dict[int, float] = {}  # coordinates touched so far → residual
    heap: list[tuple[float, int]] = []  # (−residual, coord) of touched coordinates outside the candidate set
    cand_pos: list[int] = []  # positions in π of the candidate set, sorted
    in_cand: set[int] = set()
    pos_of, coord_at = order.pos_of, order.coord_at

    symbols: list[int] = []
    steps: list[int] = []
    signs: list[bool] = []
    coords: list[int] = []
    taus: list[float] = []
    cursor = 0
    iterations = 0
    while len(signs) < target and iterations < max_iter:
        tau = logf / lam
        # Admit every coordinate whose residual now exceeds τ.
        fresh = order.above(tau)
        if fresh.size:
            _admit(fresh.tolist(), cand_pos, in_cand, pos_of)
        while heap and -heap[0][0] > tau:
            _, c = heapq.heappop(heap)
            _admit([c], cand_pos, in_cand, pos_of)
        if not cand_pos:  # refresh: advance λ until about β residuals exceed τ again
            vref = _kth_largest_residual(order, heap, max(1, int(round(beta))))
            if vref <= 0:
                break
            s = _refresh_steps(lam, factor, logf, vref)
            lam *= pow_by_squaring(factor, s)
            symbols.append(0)
            steps.append(s)
            continue
        i = bisect.bisect_left(cand_pos, cursor)
        if i == len(cand_pos):
            i = 0
        pos = cand_pos[i]
        skip = pos - cursor if pos >= cursor else pos + n - cursor
        coord = coord_at[pos]
        symbols.append(skip + 1)
        coords.append(coord)
        taus.append(tau)
        if coord not in residual:
            signs.append(bool(negative[coord]))
            residual[coord] = float(u[coord])
        residual[coord] -= tau
        # Leave the candidate set; the next iteration re-admits it if still above τ.
        del cand_pos[i]
        in_cand.discard(coord)
        heapq.heappush(heap, (-residual[coord], coord))
        cursor = pos + 1 if pos + 1 < n else 0
        lam *= factor
        iterations += 1
    stream = SurpStream(seed, logf, n / total, norms, symbols, steps, signs)
    stats = {"iterations": float(iterations), "refreshes": float(len(steps))}
    return stream, np.array(coords, dtype=np.int64), np.array(taus, dtype=np.float64), stats


class _TopOrder:
    """Coordinates in decreasing order of their original u, revealed lazily.

    Only as many coordinates as the thresholds reach are ever sorted: the
    next largest are found by argpartition (O(n)) in chunks that double.
    """

    def __init__(self, u: np.ndarray, seed: int) -> None:
        self.u = u
        self.seed = seed
        self.pos_of: dict[int, int] = {}  # coordinate → position in π, for every revealed coordinate
        self.coord_at: dict[int, int] = {}
        self.sorted = np.zeros(0, dtype=np.int64)
        self.ptr = 0
        self.chunk = max(1024, u.size // 1000)

    def _grow(self) -> bool:
        n, have = self.u.size, self.sorted.size
        if have >= n:
            return False
        want = min(n - have, max(have, self.chunk))
        rest = np.ones(n, dtype=bool)
        rest[self.sorted] = False
        pool = np.flatnonzero(rest)
        if want < pool.size:
            pool = pool[np.argpartition(-self.u[pool], want - 1)[:want]]
        pool = pool[np.argsort(-self.u[pool], kind="stable")]
        self.sorted = np.concatenate([self.sorted, pool])  # the revealed prefix never changes
        positions = shared_order(pool, n, self.seed, inverse=True).tolist()  # one vectorized call per chunk
        coords = pool.tolist()
        self.pos_of.update(zip(coords, positions, strict=True))
        self.coord_at.update(zip(positions, coords, strict=True))
        return True

    def peek(self) -> float:
        """The largest u not yet revealed (0 when none is left)."""
        if self.ptr >= self.sorted.size and not self._grow():
            return 0.0
        return float(self.u[self.sorted[self.ptr]])

    def peek_many(self, m: int) -> np.ndarray:
        """The next ``m`` unrevealed u values, largest first (fewer if none left)."""
        while self.sorted.size - self.ptr < m and self._grow():
            pass
        return self.u[self.sorted[self.ptr : self.ptr + m]]

    def above(self, tau: float) -> np.ndarray:
        """Not-yet-revealed coordinates with u > τ (each returned once)."""
        start, block = self.ptr, 64
        while True:
            if self.ptr >= self.sorted.size and not self._grow():
                break
            vals = self.u[self.sorted[self.ptr : self.ptr + block]]
            k = int(np.searchsorted(-vals, -tau, side="left"))  # the vals > τ lead
            self.ptr += k
            if k < vals.size:
                break
            block *= 2
        return self.sorted[start : self.ptr]


def _admit(coords: list[int], cand_pos: list[int], in_cand: set[int], pos_of: dict[int, int]) -> None:
    """Put coordinates into the candidate set, kept sorted by position in π."""
    for c in coords:
        if c not in in_cand:
            in_cand.add(c)
            bisect.insort(cand_pos, pos_of[c])


def _kth_largest_residual(order: _TopOrder, heap: list[tuple[float, int]], m: int) -> float:
    """The m-th largest residual over untouched and touched coordinates (0 if fewer exist)."""
    values = list(order.peek_many(m))
    # Best-first walk of the heap's tree: its m largest in O(m log m).
    frontier = [(heap[0][0], 0)] if heap else []
    while frontier and len(values) < 2 * m:
        neg, i = heapq.heappop(frontier)
        values.append(-neg)
        for child in (2 * i + 1, 2 * i + 2):
            if child < len(heap):
                heapq.heappush(frontier, (heap[child][0], child))
        if len(values) >= m and -neg < sorted(values, reverse=True)[m - 1]:
            break
    if not values:
        return 0.0
    values.sort(reverse=True)
    return float(values[min(m, len(values)) - 1])


def _refresh_steps(lam: float, factor: float, logf: float, vmax: float) -> int:
    """Smallest s ≥ 1 with logf / (λ·factor^s) < vmax."""

    def ok(s: int) -> bool:
        return logf / (lam * pow_by_squaring(factor, s)) < vmax

    s = max(1, int(math.ceil(math.log((logf / lam) / vmax) / math.log(factor))))
    while not ok(s):
        s += 1
    while s > 1 and ok(s - 1):
        s -= 1
    return s


def _fit_budget(
    stream: SurpStream, coords: np.ndarray, taus: np.ndarray, max_bytes: int
) -> tuple[SurpStream, np.ndarray, np.ndarray]:
    """The longest prefix of the iterations whose body fits ``max_bytes`` (successive refinement)."""

    def prefix(m: int) -> tuple[SurpStream, int]:
        syms = stream.symbols[:m]
        n_iter = sum(1 for s in syms if s)
        n_ref = len(syms) - n_iter
        distinct = len(set(coords[:n_iter].tolist()))
        return SurpStream(
            stream.seed, stream.logf, stream.lam0, stream.norms, syms, stream.steps[:n_ref], stream.signs[:distinct]
        ), n_iter

    lo, hi = 0, len(stream.symbols)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(write_stream(prefix(mid)[0])) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    best, n_iter = prefix(lo)
    return best, coords[:n_iter], taus[:n_iter]


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


def read_stream(body: bytes, n_layers: int, n: int) -> SurpStream:
    head = _HEAD.size + 4 * n_layers
    if len(body) < head:
        raise DecodeError(f"surp: body of {len(body)} bytes is shorter than its {head}-byte header")
    seed, logf, lam0 = _HEAD.unpack_from(body)
    norms = np.frombuffer(body[_HEAD.size : head], dtype="<f4").astype(np.float32)
    if not (math.isfinite(logf) and math.isfinite(lam0)) or not 0 <= logf < n or lam0 < 0:
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
    iterations = symbols[symbols > 0]
    if iterations.size and lam0 <= 0:
        raise DecodeError("surp: iterations without a threshold (λ₀ = 0)")
    pos = (np.cumsum(iterations) - 1) % n if iterations.size else np.zeros(0, np.int64)
    coords = shared_order(pos, n, seed) if pos.size else pos
    distinct = np.unique(coords).size
    signs = r.read_bits(distinct, "surp sign bits").astype(bool).tolist()
    r.expect_end("surp stream")
    return SurpStream(seed, logf, lam0, norms, symbols.tolist(), steps, signs)


def replay(stream: SurpStream, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's λ schedule: (coordinate, τ) of every iteration, bit-identical to the encoder."""
    if not stream.symbols:
        return np.zeros(0, np.int64), np.zeros(0)
    if n < 2:
        raise DecodeError("surp: iterations on fewer than 2 coordinates")
    factor = n / (n - stream.logf)
    lam = stream.lam0
    taus: list[float] = []
    steps = iter(stream.steps)
    for sym in stream.symbols:
        if sym == 0:
            lam *= pow_by_squaring(factor, next(steps))
        else:
            taus.append(stream.logf / lam)
            lam *= factor
    iterations = np.array([s for s in stream.symbols if s], dtype=np.int64)
    pos = (np.cumsum(iterations) - 1) % n
    return shared_order(pos, n, stream.seed), np.array(taus, dtype=np.float64)


def reconstruct(
    specs: list[TensorSpec], norms: np.ndarray, coords: np.ndarray, taus: np.ndarray, signs: np.ndarray
) -> dict[str, torch.Tensor]:
    """Σ τ per coordinate (in iteration order), signs restored, denormalized per layer."""
    n = sum(s.numel for s in specs)
    recon = np.zeros(n, dtype=np.float64)
    np.add.at(recon, coords, taus)
    if coords.size:
        _, first = np.unique(coords, return_index=True)
        firsts = coords[np.sort(first)]  # distinct coordinates in first-chosen order
        if firsts.size != signs.size:
            raise DecodeError(f"surp: {signs.size} sign bits for {firsts.size} coordinates")
        recon[firsts[signs]] *= -1.0
    out, offset = OrderedDict(), 0
    for spec, norm in zip(specs, norms, strict=True):
        part = recon[offset : offset + spec.numel] * np.float64(norm)
        out[spec.name] = torch.from_numpy(part.astype(np.float32)).view(spec.shape)
        offset += spec.numel
    return out
