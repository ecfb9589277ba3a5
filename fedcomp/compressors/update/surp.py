"""SuRP: successive refinement for pruning (Isik, No & Weissman 2022), Algorithm 2.

Two modes (``mode``). **"staged"** (the default) sends the successive
refinement a stage at a time: every residual above a stage's threshold at
once, as Golomb-coded index sets (:mod:`.surp_staged`: the derivation, the
rate and the format). **"iterative"** is the paper's loop as written, one
index per iteration, described here. At equal bytes the staged form wins:
on an 11.2M-coordinate Laplacian update at 1% density it spends 9.2 bits
per nonzero (log₂(n/k) + 2.6) where the iterative one spends 23.5, for the
same support size and about the same distortion; see docs/uplink.md for
the measured comparison.

**What the iterative encoder does** (appendix D, Algorithm 2 "SuRP-modified"):

1. Normalize: u = |w| / ‖w‖₁ (one ℓ₁ norm over the whole update by
   default; per layer with ``normalization = "layer"``); signs kept aside.
2. λ ← ParamEst(u) = 1 / mean(u).
3. Iterate: the candidates are the coordinates with u_i > τ = (1/λ)·log(n/β)
   (β = log n by default); pick one, send its index, subtract τ from it;
   λ ← λ·n/(n − log(n/β)) (so τ shrinks geometrically).
4. The decoder adds τ to the coordinate it is told, runs the same λ
   schedule, denormalizes with the norms and restores the signs (one sign
   bit per coordinate, the first time it is chosen).

Stop when ``density``·n coordinates are nonzero, or before the whole payload
exceeds ``max_bytes`` (the longest prefix of whole iterations that fits:
successive refinement makes every prefix a coarser reconstruction).

**Allocation across layers** (``normalization``). One λ over the whole
update's magnitudes ("global", the default) is reverse water-filling across
layers: a coordinate is worth sending if its magnitude is large, whichever
layer holds it, which is what minimizes the update's distortion. The
paper's per-layer ℓ₁ normalization ("layer") divides each layer by its own
norm and then applies *one* λ to all of them, so a layer's threshold,
measured in units of its own mean magnitude, is log(n/β)·n_l/n — it grows
with the layer's size (77× for LeNet-5's fc1, 0.97× for fc2, 0.004× for
conv1's bias), so large layers starve and small ones are refined again and
again (measurements: docs/uplink.md). "layer" is kept to reproduce the paper.

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
  fitted to the skips of this payload and sent (Elias-δ). An adaptive M
  was measured and not adopted (``benchmarks/surp_skip_coding.py``, real
  LeNet-5 updates): a backward-adaptive M (running mean, no side
  information) saves 8–9% of the payload at 1% density with the global
  norm but costs 4–7% more at 0.1%, where one M fits; one M per stretch
  between refreshes saves at most 0.6% once its side information is
  paid. The staged mode, the default, has no skip stream at all. A coordinate
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

**What a decoder accepts** (clients are untrusted; the checks follow from
the encoder, so no stream it writes is refused): at most
``sides·(50·n + 1000)`` picks (the encoder's own ``max_iter`` with the
target at its largest, n) and at most one refresh per iteration plus one;
skips below n and M ≤ 2n + 2; refresh steps below
:func:`max_refresh_steps` (beyond it λ would have left the float64 range
from any λ₀); every pick's τ at most 2 (τ is below a normalized magnitude,
which is at most 1). The replay runs in chunks (:data:`DECODE_CHUNK`
symbols), so besides the symbols (4 bytes each) it keeps O(n): time
O(payload bits + picks + n), memory O(payload + n).

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
    TruncatedPayloadError,
    check_values,
    elias_delta_decode,
    elias_delta_encode,
    elias_gamma_decode,
    elias_gamma_encode,
    golomb_decode,
    golomb_encode,
    golomb_parameter_for,
    pack,
    specs_of,
    values_within,
)
from fedcomp.compressors.update import surp_kernel as kernel
from fedcomp.compressors.update import surp_staged as staged
from fedcomp.compressors.update.base import (
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
from fedcomp.seeding import derive_seed

SURP_ORDER = 12  # seeding purpose
pow_by_squaring = kernel.pow_by_squaring
MAX_ITER_PER_TARGET, MAX_ITER_BASE = 50, 1000
"""The encoder stops after ``50·target + 1000`` iterations (target ≤ n): the decoder's bound on picks."""
DECODE_CHUNK = 1 << 18
"""Symbols replayed per step of the decoder (bounds its per-pick temporaries)."""
MAX_TAU = 2.0
"""Largest threshold a pick may have: τ is below a normalized magnitude (≤ 1, float32 norms round)."""


# ----------------------------------------------------------------------------- shared order


@functools.lru_cache(maxsize=64)
def _round_keys(seed: int) -> np.ndarray:
    return np.array([derive_seed(seed, SURP_ORDER, r) for r in range(4)], dtype=np.uint64)


def shared_order(positions: np.ndarray, n: int, seed: int, inverse: bool = False) -> np.ndarray:
    """π(position) → coordinate (or π⁻¹ with ``inverse``): a seeded bijection of [0, n) (compiled, one pass)."""
    x = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
    if x.size and (int(x.min()) < 0 or int(x.max()) >= n):
        raise ValueError(f"shared order positions must lie in [0, {n})")
    half = max(1, (max(1, (n - 1).bit_length()) + 1) // 2)
    out = np.empty(x.size, dtype=np.int64)
    if kernel.feistel_order(x, n, _round_keys(seed), half, inverse, out):
        raise RuntimeError("cycle walking did not terminate")  # pragma: no cover - probability ~ (3/4)^10000
    return out.reshape(np.shape(positions))


# ----------------------------------------------------------------------------- parameters


@dataclass
class SurpParams:
    density: float = 0.001
    """Stop once this fraction of all coordinates is nonzero."""
    max_bytes: int = 0
    """Also stop before the whole payload (container included) exceeds this many bytes (0 = no budget)."""
    mode: str = "staged"
    """"staged": every residual above a stage's threshold at once (:mod:`.surp_staged`, the default);
    "iterative": one index per iteration, the paper's Algorithm 2 (or 1) as written."""
    stage_ratio: float = 2.0
    """Staged mode: q = τ_{s−1}/τ_s, the geometric schedule of the stage thresholds (2: binary refinement)."""
    beta: float = 0.0
    """Iterative mode: β of the threshold (1/λ)·log(n/β); 0 means log n (zero-rate optimal)."""
    algorithm: int = 2
    """Iterative mode: 2, SuRP-modified on magnitudes with sign bits; 1, ± pairs on signed values."""
    normalization: str = "global"
    """Iterative mode: "global", one ℓ₁ norm over the whole update (one λ for all layers: reverse
    water-filling); "layer", u⁽ˡ⁾ = w⁽ˡ⁾/‖w⁽ˡ⁾‖₁ (the paper's), which starves large layers: one λ over
    per-layer-normalized values puts a layer's threshold at a multiple of its own mean magnitude that
    grows with its size (module docstring; docs/uplink.md)."""
    error_feedback: bool | str | None = None
    lossless: str = "none"
    """A lossless stage after the codec: "none" or "zstd" (the body as one zstd frame, when that is shorter)."""

    def validate(self, path: str) -> None:
        require(0 < self.density <= 1, f"{path}.density", f"a number in (0, 1], got {self.density}")
        require(self.max_bytes >= 0, f"{path}.max_bytes", "an integer >= 0 (0 = no budget)")
        require(self.mode in ("staged", "iterative"), f"{path}.mode", f'"staged" or "iterative", got {self.mode!r}')
        require(
            staged.MIN_RATIO <= self.stage_ratio <= staged.MAX_RATIO,
            f"{path}.stage_ratio",
            f"a number in [{staged.MIN_RATIO}, {staged.MAX_RATIO}], got {self.stage_ratio}",
        )
        require(self.beta >= 0, f"{path}.beta", "a number >= 0 (0 = log n)")
        require(self.algorithm in (1, 2), f"{path}.algorithm", f"1 or 2 (the paper's algorithms), got {self.algorithm}")
        require(
            self.normalization in ("layer", "global"),
            f"{path}.normalization",
            f'"layer" or "global", got {self.normalization!r}',
        )
        if self.mode == "staged":
            require(self.algorithm == 2, f"{path}.algorithm", 'Algorithm 1 exists only with mode = "iterative"')
            require(
                self.normalization == "global",
                f"{path}.normalization",
                'staged SuRP thresholds the whole update (global); "layer" needs mode = "iterative"',
            )


@dataclass
class SurpStream:
    """What an encode decided, before it is written as bits."""

    seed: int
    logf: float
    lam0: float
    norms: np.ndarray  # float32 per layer
    symbols: np.ndarray | Sequence[int]  # skip + 1 per pick, or 0 for a refresh
    steps: np.ndarray | Sequence[int]  # s of each refresh, in order
    signs: np.ndarray | Sequence[bool]  # algorithm 2: True = negative, per distinct coordinate in first-chosen order
    sides: int = 1  # picks per iteration: 1 (algorithm 2) or 2 (algorithm 1: positive, negative)


# ----------------------------------------------------------------------------- the compressor


@UPDATE_COMPRESSORS.register("surp", "SuRP successive-refinement pruning, Golomb-coded indices (Isik et al. 2022)")
class SurpCompressor(UpdateCompressor):
    name = "surp"
    Params = SurpParams
    error_feedback_default = True
    bounds_own_values = True  # only the picked coordinates can be nonzero: decode_body checks those

    def encode(self, update: Update, state: State | None = None, ctx: EncodeContext | None = None) -> Encoded:
        ctx = ctx or EncodeContext()
        tensors = float32_update(update)
        # NaN magnitudes are never chosen: the payload would be a valid all-zero update
        check_finite_input("surp", tensors)
        specs = specs_of(tensors)
        if self.params.mode == "staged":
            return self._encode_staged(tensors, specs, state)
        flats = [t.reshape(-1).numpy() for t in tensors.values()]
        seed = derive_seed(self.seed, SURP_ORDER, ctx.server_round, ctx.client_id) & 0xFFFFFFFF
        stream, coords, taus, stats = run_encoder(flats, self.params, seed)
        n = sum(f.size for f in flats)
        params: dict[str, Any] = {"mode": "iterative", "norm": self.params.normalization}
        if stream.sides == 2:
            params["algorithm"] = 1
        body = write_stream(stream)
        budget = body_budget(self.name, params, specs, self.params.max_bytes)
        if budget is not None and len(body) > budget:
            stream, coords, taus = _fit_budget(stream, coords, taus, budget)
            body = write_stream(stream)
            if len(body) > budget:
                raise ValueError(f"surp: max_bytes = {self.params.max_bytes} is below the smallest iterative payload")
            stats["iterations"] = float(len(coords) // stream.sides)
            stats["refreshes"] = float(len(stream.steps))
        sent = reconstruct(specs, stream.norms, coords, signed_steps(stream, coords, taus, n))
        stats["density"] = kernel.first_chosen(coords, n).size / max(n, 1)
        stats["bits_per_iteration"] = 8 * len(body) / max(stats["iterations"], 1.0)
        return Encoded(pack(self.name, params, specs, body, by_digest=True), sent, stats, dict(state or {}))

    def _encode_staged(self, tensors: OrderedDict, specs: list[TensorSpec], state: State | None) -> Encoded:
        """Staged SuRP (:mod:`.surp_staged`): the top-k support, sent stage by stage."""
        mags = staged.Magnitudes(list(tensors.values()))
        n = mags.n
        k = max(1, min(n, int(math.ceil(self.params.density * n))))
        budget = body_budget(self.name, {}, specs, self.params.max_bytes)
        plan, body = staged.encode(mags, k, self.params.stage_ratio, 0 if budget is None else budget)
        dense = torch.zeros(n, dtype=torch.float32)
        if plan.coords.size:
            dense[torch.from_numpy(plan.coords)] = torch.from_numpy(staged.values(plan))
        sent = split(specs, dense)
        stats = {
            "density": plan.coords.size / max(n, 1),
            "stages": float(plan.stages),
            "refinements": float(sum(r.size for r in plan.refined)),
            "bits_per_nonzero": 8 * len(body) / max(plan.coords.size, 1),
        }
        return Encoded(pack(self.name, {}, specs, body, by_digest=True), sent, stats, dict(state or {}))

    def decode_body(
        self, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes, max_abs: float = math.inf
    ) -> dict[str, torch.Tensor]:
        mode, sides, global_norm = decode_params(params)
        n = sum(s.numel for s in specs)
        if mode == "staged":
            return decode_staged(list(specs), body, n, max_abs)
        stream, reader = read_stream(body, 1 if global_norm else len(specs), n, sides)
        magnitudes, firsts = accumulate(stream, n)
        if sides == 1:
            negative = reader.read_bits(firsts.size, "surp sign bits").astype(bool)
            magnitudes[firsts[negative]] *= -1.0  # exact: float addition is symmetric in sign
        reader.expect_end("surp stream")
        out = denormalize(list(specs), stream.norms, magnitudes)
        if not picked_within(list(specs), stream.norms, magnitudes, firsts, max_abs):
            for name, tensor in out.items():  # name the first tensor that fails
                check_values(name, tensor, max_abs)
        return out


def body_budget(codec: str, params: dict[str, Any], specs: Sequence[TensorSpec], max_bytes: int) -> int | None:
    """Bytes left for the body under a whole-payload budget (None without one); ValueError if nothing fits.

    The container's framing is the same for every body of a codec, params
    and spec list (its body length is a fixed u64), so payload = framing + body.
    """
    if not max_bytes:
        return None
    framing = len(pack(codec, params, specs, b"", by_digest=True))
    if max_bytes - framing < 1:
        raise ValueError(f"{codec}: max_bytes = {max_bytes} is below the container's own {framing + 1} bytes")
    return max_bytes - framing


def split(specs: Sequence[TensorSpec], dense: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat float32 vector as the specs' tensors (views of it, in spec order)."""
    out, offset = OrderedDict(), 0
    for spec in specs:
        out[spec.name] = dense[offset : offset + spec.numel].view(spec.shape)
        offset += spec.numel
    return out


def decode_staged(specs: list[TensorSpec], body: bytes, n: int, max_abs: float) -> dict[str, torch.Tensor]:
    """A staged body as the specs' tensors; the values it places must be finite and within ``max_abs``."""
    coords, values = staged.read(body, n)
    dense = torch.zeros(n, dtype=torch.float32)
    if coords.size:
        dense[torch.from_numpy(coords)] = torch.from_numpy(values)
    out = split(specs, dense)
    if not values_within(torch.from_numpy(values), max_abs):
        for name, tensor in out.items():  # name the first tensor that fails
            check_values(name, tensor, max_abs)
    return out


def decode_params(params: dict[str, Any]) -> tuple[str, int, bool]:
    """(mode, picks per iteration, global normalization) from the container params; DecodeError for anything else.

    ``{}`` is the staged stream; ``{"mode": "iterative"}`` the iterative one,
    with ``norm`` ("layer" when absent) and ``algorithm`` (2 when absent).
    """
    mode = params.get("mode", "staged")
    if mode == "staged":
        if params:
            raise DecodeError(f"surp: unknown params {sorted(params)} for the staged stream")
        return "staged", 1, True
    if mode != "iterative":
        raise DecodeError(f"surp: mode must be 'iterative' or absent, got {mode!r:.40}")
    unknown = sorted(set(params) - {"mode", "algorithm", "norm"})
    if unknown:
        raise DecodeError(f"surp: unknown params {unknown}")
    algorithm = params.get("algorithm", 2)
    if type(algorithm) is not int or algorithm not in (1, 2):
        raise DecodeError(f"surp: algorithm must be 1 or 2, got {algorithm!r:.40}")
    norm = params.get("norm", "layer")
    if norm not in ("layer", "global"):
        raise DecodeError(f"surp: norm must be 'layer' or 'global', got {norm!r:.40}")
    return "iterative", (2 if algorithm == 1 else 1), norm == "global"


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
    signs = np.zeros(0, dtype=bool)
    if sides == 1 and coords.size:
        signs = u[kernel.first_chosen(coords, n)] < 0
    stream = SurpStream(seed, logf, lam0, norms, out_sym[:n_sym].copy(), out_steps[:n_steps].copy(), signs, sides)
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
    if len(s.steps):
        elias_gamma_encode(s.steps if isinstance(s.steps, np.ndarray) else list(s.steps), w)
    w.write_bits(np.asarray(s.signs, dtype=np.uint8))
    return _HEAD.pack(s.seed, s.logf, s.lam0) + s.norms.astype("<f4").tobytes() + w.getvalue()


def max_picks(n: int, sides: int) -> int:
    """The most picks an encoder writes for n coordinates: ``sides`` per iteration, ``50·n + 1000`` iterations."""
    return sides * (MAX_ITER_PER_TARGET * n + MAX_ITER_BASE)


def max_refresh_steps(n: int, logf: float, sides: int) -> int:
    """The largest refresh an encoder can send: past it factor^s > 2^4096, so λ has overflowed from any λ₀.

    λ₀ ≥ 2^-1074 and λ overflows at 2^1024: once factor^s exceeds 2^4096
    every later τ is 0, and the encoder's refresh (the smallest s that puts
    τ below a positive residual) stops long before. The kernel is safe for
    any non-negative int64; this bound keeps a decoded count meaningful.
    """
    factor = n / (n - sides * logf)
    if not factor > 1.0:
        return (1 << 62) - 1  # logf = 0: τ is 0 throughout, the count changes nothing
    return min((1 << 62) - 1, math.ceil(4096.0 / math.log2(factor)))


def read_stream(body: bytes, n_layers: int, n: int, sides: int = 1) -> tuple[SurpStream, BitReader]:
    """Parse a body up to its sign bits, every field checked against ``n`` and the bits present.

    Returns the stream (symbols as int32 arrays when n fits, steps as int64,
    no signs yet) and the reader standing at the sign bits, whose count the
    replay decides.
    """
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
    most = max_picks(n, sides) + max_picks(n, sides) // sides + 1
    if count > r.remaining:
        raise TruncatedPayloadError(f"surp: {count} symbols declared in {r.remaining} bits")
    if count > most:
        raise LimitExceededError(f"surp: {count} symbols declared, at most {most} for n = {n}")
    m = int(elias_delta_decode(r, 1)[0])
    if m > 2 * n + 2:
        raise LimitExceededError(f"surp: Golomb parameter M = {m} for skips below n = {n}")
    symbols = golomb_decode(r, count, m, max_value=n, dtype=np.int32 if n < 1 << 31 else np.int64)
    n_ref = int(np.count_nonzero(symbols == 0))
    picks = count - n_ref
    if picks > max_picks(n, sides):
        raise LimitExceededError(f"surp: {picks} picks, at most {max_picks(n, sides)} for n = {n}")
    if n_ref > picks // sides + 1:
        raise DecodeError(f"surp: {n_ref} refreshes for {picks // sides} iterations (at most one each, plus one)")
    if picks and n < 2:
        raise DecodeError("surp: iterations on fewer than 2 coordinates")
    if picks and lam0 <= 0:
        raise DecodeError("surp: iterations without a threshold (λ₀ = 0)")
    steps = elias_gamma_decode(r, n_ref)
    limit = max_refresh_steps(n, logf, sides)
    if n_ref and int(steps.max()) > limit:
        raise LimitExceededError(f"surp: a refresh of {int(steps.max())} steps, at most {limit} for n = {n}")
    return SurpStream(seed, logf, lam0, norms, symbols, steps.astype(np.int64), np.zeros(0, bool), sides), r


def accumulate(stream: SurpStream, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Replay the stream in chunks: Σ τ per coordinate (signed by slot for algorithm 1) and the first-chosen order.

    The same λ schedule as :func:`replay` and the same additions in the
    same order as :func:`reconstruct`, so the result is bit-identical to
    the encoder's (algorithm 2's signs are applied after, see
    :meth:`SurpCompressor.decode_body`); but no per-pick array outlives
    its chunk of :data:`DECODE_CHUNK` symbols.
    """
    symbols = np.asarray(stream.symbols)
    steps = np.asarray(stream.steps, dtype=np.int64)
    sides = stream.sides
    total = np.zeros(n, dtype=np.float64)
    seen = np.zeros(n, dtype=np.bool_)
    order = np.empty(n, dtype=np.int64)
    if symbols.size == 0:
        return total, order[:0]
    factor = n / (n - sides * stream.logf)
    cursor = np.zeros(sides, dtype=np.int64)  # each side's position in the shared order, mod n
    taus = np.empty(min(symbols.size, DECODE_CHUNK), dtype=np.float64)
    lam, j, in_group, done, distinct = stream.lam0, 0, 0, 0, 0
    for start in range(0, symbols.size, DECODE_CHUNK):
        chunk = symbols[start : start + DECODE_CHUNK]
        k, j, lam, in_group, status = kernel.replay_chunk(
            chunk, steps, j, sides, stream.logf, lam, factor, in_group, taus
        )
        if status:
            raise DecodeError(f"surp: {REPLAY_FAULTS.get(status, f'replay status {status}')}")
        if k == 0:
            continue
        tau = taus[:k]
        if not float(tau.max()) <= MAX_TAU:
            raise DecodeError(f"surp: a threshold of {float(tau.max())!r} exceeds {MAX_TAU} (λ₀ = {stream.lam0!r})")
        coords = shared_order(_positions(chunk[chunk > 0], cursor, done, n, sides), n, stream.seed)
        distinct = kernel.mark_first(coords, seen, order, distinct)
        if sides == 2:
            tau = np.where((done + np.arange(k)) % 2 == 1, -tau, tau)
        np.add.at(total, coords, tau)
        done += k
    if in_group:
        raise DecodeError("surp: the stream ends inside a ± pair of algorithm 1")
    return total, order[:distinct]


REPLAY_FAULTS = {
    kernel.REPLAY_SPLIT: "a refresh splits a ± pair of algorithm 1",
    kernel.REPLAY_BAD_STEP: "a refresh with a negative step count",
    kernel.REPLAY_STEPS_SHORT: "more refreshes than refresh steps",
}


def _positions(picks: np.ndarray, cursor: np.ndarray, done: int, n: int, sides: int) -> np.ndarray:
    """Each pick's position in the shared order: its side's cursor advanced by the symbols (cursor updated)."""
    pos = np.empty(picks.size, dtype=np.int64)
    for side in range(sides):
        first = (side - done) % sides  # picks alternate sides from the very first one
        steps = np.cumsum(picks[first::sides]) + cursor[side]
        if steps.size:
            pos[first::sides] = (steps - 1) % n
            cursor[side] = steps[-1] % n
    return pos


def pick_coords(stream: SurpStream, n: int) -> np.ndarray:
    """The coordinate of every pick: each side's cursor advances by its symbols over the shared order."""
    symbols = np.asarray(stream.symbols, dtype=np.int64)
    picks = symbols[symbols > 0]
    if picks.size == 0:
        return np.zeros(0, np.int64)
    if n < 2:
        raise DecodeError("surp: iterations on fewer than 2 coordinates")
    coords = np.empty(picks.size, np.int64)
    cursor = np.zeros(stream.sides, dtype=np.int64)
    for start in range(0, picks.size, DECODE_CHUNK):  # chunks keep the cursor sums far from int64's end
        part = picks[start : start + DECODE_CHUNK]
        coords[start : start + part.size] = shared_order(
            _positions(part, cursor, start, n, stream.sides), n, stream.seed
        )
    return coords


def replay(stream: SurpStream, n: int, coords: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The λ schedule in one piece: (coordinate, τ) of every pick, bit-identical to the encoder.

    For encoder-made streams (tests, analysis); a decoder replays in bounded chunks with :func:`accumulate`.
    """
    coords = pick_coords(stream, n) if coords is None else coords
    if coords.size and stream.lam0 <= 0:
        raise DecodeError("surp: iterations without a threshold (λ₀ = 0)")
    if not len(stream.symbols):
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
    return denormalize(specs, norms, recon)


def picked_within(
    specs: list[TensorSpec], norms: np.ndarray, recon: np.ndarray, picked: np.ndarray, max_abs: float
) -> bool:
    """Whether the decoded values at the picked coordinates (the only nonzero ones) are finite and within ``max_abs``.

    Computed exactly as :func:`denormalize` computes them (float64 product,
    then float32), in O(picked) instead of a pass over the dense update.
    """
    if picked.size == 0:
        return True
    if len(norms) == 1:
        scale: np.ndarray | np.float64 = np.float64(norms[0])
    else:
        ends = np.cumsum([s.numel for s in specs])
        scale = norms.astype(np.float64)[np.searchsorted(ends, picked, side="right")]
    with np.errstate(over="ignore"):
        values = (recon[picked] * scale).astype(np.float32)
    return values_within(torch.from_numpy(values), max_abs)


def denormalize(specs: list[TensorSpec], norms: np.ndarray, recon: np.ndarray) -> dict[str, torch.Tensor]:
    """The normalized reconstruction times each layer's norm (or the one global norm), as float32 tensors."""
    if len(norms) == 1 and len(specs) > 1:
        norms = np.repeat(norms, len(specs))
    out, offset = OrderedDict(), 0
    for spec, norm in zip(specs, norms, strict=True):
        part = recon[offset : offset + spec.numel] * np.float64(norm)
        with np.errstate(over="ignore"):  # a hostile norm overflows to inf: the output check refuses it
            out[spec.name] = torch.from_numpy(part.astype(np.float32)).view(spec.shape)
        offset += spec.numel
    return out
