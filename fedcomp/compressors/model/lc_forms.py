"""LC compression forms and their exact C steps (Carreira-Perpiñán & Idelbayev, LC Part V).

A *form* Δ(θ) maps low-dimensional parameters θ to a weight tensor; its C
step solves θ* = argmin_θ ‖w − Δ(θ)‖² for the weights it is given (the LC
algorithm calls it on w − λ/μ). Every C step here is the exact minimizer of
its problem, except adaptive quantization, where Lloyd's k-means is a local
method (warm-started from the previous codebook, as in the paper) and
:func:`kmeans_1d_optimal` gives the global optimum by dynamic programming
where that is affordable.

- :class:`AdaptiveQuantization` — k-entry codebook learnt from the weights (1-D k-means).
- :class:`Binarization` — fixed codebook {−a, a}, scale a = mean |w| (optimal).
- :class:`Ternarization` — {−a, 0, a}: over the i largest |w|, a = their mean, i maximizing
  (Σ_{t≤i} |w|_(t))² / i; that is the exact minimizer (sort once, O(n log n)).
- :class:`PruneL0` — constraint ℓ0: keep the κ largest |w| (exact); with one κ for several tensors,
  :func:`net_prune_c_step` (the paper's net-wide κ).
- :class:`LowRank` — truncated SVD at rank r (Eckart–Young); a conv weight (n, m, d1, d2) is
  reshaped to n × (m·d1·d2) as in the paper.
- :class:`RankSelection` — low rank with the rank chosen by cost: min_r α·C(r) + μ/2·Σ_{i>r} s_i².

**Additive combinations** (Part V, eq. 1–4): w ≈ Σ_f Δ_f(θ_f) on one
parameter group is solved by alternating each form's own C step on the
residual of the others (eq. 4), warm-started (:func:`additive_c_step`).
Each alternation solves one block exactly, so ‖w − Σ Δ_f‖ never increases
(k-means excepted only in that Lloyd is a descent method, which keeps the
property). **Theorem 4.1** (fixed codebook + sparse corrections) is solved
exactly, without alternation, by :func:`quantize_plus_sparse_exact`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numba import njit

from fedcomp.coding import (
    BitReader,
    BitWriter,
    DecodeError,
    decode_indices,
    elias_gamma_decode,
    elias_gamma_encode,
    encode_indices,
    pack_values,
    unpack_values,
)


class Form(Protocol):
    """One compression form: an exact (or warm-started) C step, its decompression, θ to bits and back."""

    def c_step(self, w: np.ndarray, theta: Any | None = None) -> Any: ...

    def decompress(self, theta: Any, shape: tuple[int, ...]) -> np.ndarray: ...

    def write(self, theta: Any, shape: tuple[int, ...], w: BitWriter) -> None: ...

    def read(self, r: BitReader, shape: tuple[int, ...]) -> Any: ...


# ----------------------------------------------------------------------------- θ on the wire
# Storage as in Part V appendix B: a codebook in fp32 and ⌈log₂ k⌉ bits per
# weight; sparse corrections as coded index gaps plus fp16 values; low-rank
# factors in fp16. The bytes are real: what is counted is what is written.


def _write_floats(values: np.ndarray, fmt: str, w: BitWriter) -> None:
    w.write_array(np.frombuffer(pack_values(np.asarray(values, np.float32), fmt), dtype=np.uint8), 8)


def _read_floats(r: BitReader, count: int, fmt: str, field: str) -> np.ndarray:
    """``count`` floats of ``fmt`` from any bit position: one byte of memory per payload byte, then the values."""
    size = 4 if fmt == "fp32" else 2
    raw = r.read_bytes(count * size, field)
    values = unpack_values(raw, fmt, count).numpy().astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise DecodeError(f"{field}: values must be finite")
    return values


def _bits_for(k: int) -> int:
    return max(0, (k - 1).bit_length())


def encode_theta(form: Form, theta: Any, shape: tuple[int, ...]) -> bytes:
    """θ of one form as bytes (the form's own bit layout, padded to a byte)."""
    w = BitWriter()
    form.write(theta, shape, w)
    return w.getvalue()


def decode_theta(form: Form, data: bytes, shape: tuple[int, ...]) -> Any:
    """Inverse of :func:`encode_theta`; a DecodeError names what does not fit."""
    r = BitReader(data)
    theta = form.read(r, shape)
    if r.remaining >= 8:
        raise DecodeError(f"{type(form).__name__}: {r.remaining} bits left after θ")
    return theta


# ----------------------------------------------------------------------------- quantization


@njit(cache=True)
def _kmeans_dp(sorted_w: np.ndarray, k: int) -> np.ndarray:
    """Optimal 1-D k-means on sorted values: DP over contiguous clusters, divide and conquer per row.

    cost(i, j) = SSE of sorted_w[i:j] from prefix sums; D[c][j] = min_i D[c−1][i] + cost(i, j).
    The optimal split point is monotone in j (a Monge cost), so each row is
    filled in O(n log n). Returns the cluster start indices (k of them).
    """
    n = sorted_w.size
    s1 = np.zeros(n + 1)
    s2 = np.zeros(n + 1)
    for i in range(n):
        s1[i + 1] = s1[i] + sorted_w[i]
        s2[i + 1] = s2[i] + sorted_w[i] * sorted_w[i]
    inf = np.inf
    prev = np.full(n + 1, inf)
    for j in range(1, n + 1):
        m = s1[j] / j
        prev[j] = max(0.0, s2[j] - j * m * m)
    prev[0] = 0.0
    arg = np.zeros((k, n + 1), np.int64)
    for c in range(1, k):
        cur = np.full(n + 1, inf)
        # Iterative divide and conquer: (lo, hi, opt_lo, opt_hi) ranges on a stack.
        stack = [(c + 1, n, c, n - 1)]
        while stack:
            lo, hi, olo, ohi = stack.pop()
            if lo > hi:
                continue
            mid = (lo + hi) // 2
            best, best_i = inf, olo
            for i in range(olo, min(mid - 1, ohi) + 1):
                cnt = mid - i
                mean = (s1[mid] - s1[i]) / cnt
                cost = max(0.0, (s2[mid] - s2[i]) - cnt * mean * mean)
                v = prev[i] + cost
                if v < best:
                    best, best_i = v, i
            cur[mid] = best
            arg[c, mid] = best_i
            stack.append((lo, mid - 1, olo, best_i))
            stack.append((mid + 1, hi, best_i, ohi))
        prev = cur
    starts = np.zeros(k, np.int64)
    j = n
    for c in range(k - 1, 0, -1):
        starts[c] = arg[c, j]
        j = starts[c]
    return starts


DP_MAX_BYTES = 1 << 30
"""The most memory the exact 1-D k-means may take: its split table is k·(n + 1) int64 entries."""


def dp_bytes(k: int, n: int) -> int:
    return 8 * k * (n + 1)


def kmeans_1d_optimal(w: np.ndarray, k: int) -> np.ndarray:
    """The globally optimal k-entry codebook for the values ``w`` (sorted ascending).

    Raises ValueError, before allocating, when its table would exceed
    :data:`DP_MAX_BYTES` (k = 65,536 codewords on LeNet-5's 400,000-weight
    layer: about 210 GB).
    """
    values = np.sort(np.asarray(w, dtype=np.float64).ravel())
    if dp_bytes(k, values.size) > DP_MAX_BYTES:
        raise ValueError(
            f"exact 1-D k-means with k = {k} on {values.size:,} weights needs {dp_bytes(k, values.size) / 1e9:.1f} GB "
            f"(limit {DP_MAX_BYTES / 1e9:.1f} GB): use exact = false (Lloyd) or a smaller k"
        )
    distinct = np.unique(values)
    if distinct.size <= k:
        return np.concatenate([distinct, np.repeat(distinct[-1:], k - distinct.size)]) if distinct.size else np.zeros(k)
    starts = _kmeans_dp(values, k)
    ends = np.append(starts[1:], values.size)
    return np.array([values[a:b].mean() for a, b in zip(starts, ends, strict=True)])


def assign(w: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook entry for each weight (codebook sorted ascending)."""
    mids = (codebook[1:] + codebook[:-1]) / 2
    return np.searchsorted(mids, w.ravel())


@dataclass
class AdaptiveQuantization:
    """k-entry codebook learnt from the weights: 1-D k-means (Lloyd, warm-started), or exact by DP."""

    k: int = 2
    exact: bool = False
    iterations: int = 100

    def c_step(
        self, w: np.ndarray, theta: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        flat = np.asarray(w, dtype=np.float64).ravel()
        if self.exact or (theta is None and dp_bytes(self.k, flat.size) <= DP_MAX_BYTES):
            codebook = kmeans_1d_optimal(flat, self.k)  # the global optimum also seeds Lloyd's first call
        elif theta is None:  # too large for the exact seed: Lloyd from the k quantiles
            codebook = np.quantile(flat, (np.arange(self.k) + 0.5) / self.k)
        else:
            codebook = np.sort(theta[0].astype(np.float64))
        for _ in range(self.iterations if not self.exact else 0):
            idx = assign(flat, codebook)
            sums = np.bincount(idx, weights=flat, minlength=self.k)
            counts = np.bincount(idx, minlength=self.k)
            new = np.where(counts > 0, sums / np.maximum(counts, 1), codebook)
            new = np.sort(new)
            if np.allclose(new, codebook, rtol=0, atol=1e-12):
                codebook = new
                break
            codebook = new
        return codebook, assign(flat, codebook)

    def decompress(self, theta: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        codebook, idx = theta
        return codebook[idx].reshape(shape)

    def write(self, theta: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...], w: BitWriter) -> None:
        codebook, idx = theta
        _write_floats(codebook, "fp32", w)
        w.write_array(np.asarray(idx, np.uint64), _bits_for(self.k))

    def read(self, r: BitReader, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        codebook = _read_floats(r, self.k, "fp32", "codebook")
        idx = r.read_array(math.prod(shape), _bits_for(self.k), "codeword indices").astype(np.int64)
        if idx.size and int(idx.max()) >= self.k:
            raise DecodeError(f"codeword index {int(idx.max())} out of a {self.k}-entry codebook")
        return codebook, idx


@dataclass
class Binarization:
    """Fixed codebook {−a, +a}; a = mean |w| minimizes Σ(w − a·sign w)²."""

    def c_step(self, w: np.ndarray, theta: Any = None) -> tuple[float, np.ndarray]:
        flat = np.asarray(w, dtype=np.float64).ravel()
        return float(np.abs(flat).mean()) if flat.size else 0.0, flat >= 0

    def decompress(self, theta: tuple[float, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        a, positive = theta
        return np.where(positive, a, -a).reshape(shape)

    def write(self, theta: tuple[float, np.ndarray], shape: tuple[int, ...], w: BitWriter) -> None:
        _write_floats(np.array([theta[0]]), "fp32", w)
        w.write_bits(np.asarray(theta[1], np.uint8))

    def read(self, r: BitReader, shape: tuple[int, ...]) -> tuple[float, np.ndarray]:
        a = float(_read_floats(r, 1, "fp32", "binary scale")[0])
        return a, r.read_bits(math.prod(shape), "binary codes").astype(bool)


@dataclass
class Ternarization:
    """Fixed codebook {−a, 0, +a}, jointly optimal a and support.

    For a support of the i largest |w| the best a is their mean and the
    error is Σ w² − (Σ_{t≤i} |w|_(t))² / i, so i maximizes (prefix sum)² / i.
    """

    def c_step(self, w: np.ndarray, theta: Any = None) -> tuple[float, np.ndarray]:
        flat = np.asarray(w, dtype=np.float64).ravel()
        mags = np.sort(np.abs(flat))[::-1]
        if not flat.size or mags[0] == 0:
            return 0.0, np.zeros(flat.size, np.int8)
        prefix = np.cumsum(mags)
        i = int(np.argmax(prefix**2 / np.arange(1, mags.size + 1)))
        a = float(prefix[i] / (i + 1))
        # The i+1 largest |w| get ±a (ties at the boundary: nearest codeword, which keeps the optimum).
        code = np.where(np.abs(flat) > a / 2, np.sign(flat), 0).astype(np.int8)
        return a, code

    def decompress(self, theta: tuple[float, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        a, code = theta
        return (a * code.astype(np.float64)).reshape(shape)

    def write(self, theta: tuple[float, np.ndarray], shape: tuple[int, ...], w: BitWriter) -> None:
        _write_floats(np.array([theta[0]]), "fp32", w)
        w.write_array((np.asarray(theta[1], np.int64) + 1).astype(np.uint64), 2)

    def read(self, r: BitReader, shape: tuple[int, ...]) -> tuple[float, np.ndarray]:
        a = float(_read_floats(r, 1, "fp32", "ternary scale")[0])
        code = r.read_array(math.prod(shape), 2, "ternary codes").astype(np.int64) - 1
        if code.size and int(code.max()) > 1:
            raise DecodeError("ternary code 3 is not a codeword")
        return a, code.astype(np.int8)


@dataclass
class PruneL0:
    """Constraint ℓ0: the κ largest |w| kept as they are, the rest zero (exact)."""

    kappa: int

    def c_step(self, w: np.ndarray, theta: Any = None) -> tuple[np.ndarray, np.ndarray]:
        flat = np.asarray(w, dtype=np.float64).ravel()
        k = min(self.kappa, flat.size)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0)
        idx = np.sort(np.argpartition(-np.abs(flat), k - 1)[:k])
        return idx, flat[idx]

    def decompress(self, theta: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        idx, values = theta
        out = np.zeros(math.prod(shape))
        out[idx] = values
        return out.reshape(shape)

    def write(self, theta: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...], w: BitWriter) -> None:
        encode_indices(theta[0], math.prod(shape), w)
        _write_floats(theta[1], "fp16", w)

    def read(self, r: BitReader, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        idx = decode_indices(r, math.prod(shape))
        if idx.size > self.kappa:
            raise DecodeError(f"{idx.size} corrections, more than κ = {self.kappa}")
        return idx, _read_floats(r, idx.size, "fp16", "correction values")


def as_matrix(shape: tuple[int, ...]) -> tuple[int, int]:
    """The matrix a weight is factorized as: (out, in) for linear, n × (m·d1·d2) for a conv."""
    if len(shape) < 2:
        raise ValueError(f"low-rank needs a matrix or a conv weight, got shape {shape}")
    return shape[0], math.prod(shape[1:])


def factor_storage(rank: int, rows: int, cols: int) -> int:
    """Parameters a rank-r matrix is stored in: its factors, r·(m + n), or the matrix itself when that is fewer."""
    return min(rank * (rows + cols), rows * cols)


def _factors(u: np.ndarray, s: np.ndarray, vt: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """θ of the rank-r truncation: (U·√s, √s·Vᵀ), or (W_r, I) when the factors hold more numbers than W_r.

    The second is the dense fallback: the same matrix W_r, in m·n numbers
    instead of r·(m + n) (for r > m·n/(m + n), say full rank of a square
    matrix, factors take twice the matrix's storage).
    """
    rows, cols = u.shape[0], vt.shape[1]
    root = np.sqrt(s[:r])
    left, right = u[:, :r] * root, root[:, None] * vt[:r]
    if r * (rows + cols) > rows * cols:
        return left @ right, np.eye(cols)
    return left, right


def _is_dense(theta: tuple[np.ndarray, np.ndarray], rows: int, cols: int) -> bool:
    """Whether θ is the dense fallback (W_r, I): factors of rank r ≤ min(m, n) never have that shape."""
    left, right = theta
    return left.shape == (rows, cols) and right.shape == (cols, cols)


@dataclass
class LowRank:
    """Rank-r truncated SVD (Eckart–Young): θ = (U·√s, √s·Vᵀ); stored dense when that is smaller (:func:`_factors`)."""

    rank: int

    def c_step(self, w: np.ndarray, theta: Any = None) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = as_matrix(w.shape)
        u, s, vt = np.linalg.svd(np.asarray(w, dtype=np.float64).reshape(rows, cols), full_matrices=False)
        return _factors(u, s, vt, min(self.rank, s.size))

    def decompress(self, theta: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        left, right = theta
        return (left @ right).reshape(shape)

    def write(self, theta: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...], w: BitWriter) -> None:
        rows, cols = as_matrix(shape)
        left, right = theta
        if _is_dense(theta, rows, cols):  # rank field min(m, n) + 1: the matrix follows, dense
            elias_gamma_encode([min(rows, cols) + 2], w)
            _write_floats(left, "fp16", w)
            return
        elias_gamma_encode([left.shape[1] + 1], w)
        _write_floats(left, "fp16", w)
        _write_floats(right, "fp16", w)

    def read(self, r: BitReader, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = as_matrix(shape)
        rank = int(elias_gamma_decode(r, 1)[0]) - 1
        if rank == min(rows, cols) + 1:
            return _read_floats(r, rows * cols, "fp16", "dense matrix").reshape(rows, cols), np.eye(cols)
        if rank > min(self.rank, rows, cols):
            raise DecodeError(f"rank {rank} above the form's {self.rank} or the matrix's {min(rows, cols)}")
        left = _read_floats(r, rows * rank, "fp16", "left factor").reshape(rows, rank)
        right = _read_floats(r, rank * cols, "fp16", "right factor").reshape(rank, cols)
        return left, right


@dataclass
class RankSelection:
    """Low rank with the rank chosen by the C step: min_{r ≥ 1} α·C(r) + μ/2·Σ_{i>r} s_i² (LC's rank selection).

    C(r) = min(r·(m + n), m·n) is the storage of the rank-r matrix in
    parameters (its factors, or the matrix itself when that is smaller,
    :func:`_factors`); ``mu`` is the LC penalty of the current step, set by
    the LC loop before each C step. For a fixed r the inner problem is
    Eckart–Young, so the minimum over r of the sum is exact (one SVD, all r
    scanned). Departure: r = 0 is not among the choices. Selecting it
    removes a layer's weights altogether, and a zeroed layer breaks the
    network: measured on main, α = 1e-4 selected rank 0 for layers of
    LeNet-5 and the federation ended at 0.10–0.18 accuracy.
    """

    max_rank: int = 0
    """The largest rank considered (0: the matrix's full rank)."""
    alpha: float = 1e-6
    mu: float = 1.0

    def _bound(self, shape: tuple[int, ...]) -> int:
        full = min(as_matrix(shape))
        return min(full, self.max_rank) if self.max_rank > 0 else full

    def c_step(self, w: np.ndarray, theta: Any = None) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = as_matrix(w.shape)
        u, s, vt = np.linalg.svd(np.asarray(w, dtype=np.float64).reshape(rows, cols), full_matrices=False)
        bound = self._bound(w.shape)
        sq = s**2
        tail = np.concatenate([np.cumsum(sq[::-1])[::-1], [0.0]])  # tail[r] = Σ_{i ≥ r} s_i² (0-based)
        r_all = np.arange(1, bound + 1)
        storage = np.minimum(r_all * (rows + cols), rows * cols)
        cost = self.alpha * storage + 0.5 * self.mu * tail[r_all]
        return _factors(u, s, vt, int(r_all[np.argmin(cost)]))

    def decompress(self, theta: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        return LowRank(self._bound(shape)).decompress(theta, shape)

    def write(self, theta: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...], w: BitWriter) -> None:
        LowRank(self._bound(shape)).write(theta, shape, w)

    def read(self, r: BitReader, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        return LowRank(self._bound(shape)).read(r, shape)


# ----------------------------------------------------------------------------- combinations


def additive_c_step(
    forms: list[Form], w: np.ndarray, thetas: list[Any] | None = None, sweeps: int = 10
) -> tuple[list[Any], list[float]]:
    """Eq. 4: alternate each form's C step on w minus the others' parts; warm-started from ``thetas``.

    Returns the parameters and ‖w − Σ Δ_f(θ_f)‖² after each form's update
    (non-increasing: each update is an exact block minimization).
    """
    w = np.asarray(w, dtype=np.float64)
    shape = w.shape
    parts = [np.zeros(shape) for _ in forms]
    thetas = list(thetas) if thetas is not None else [None] * len(forms)
    if any(t is not None for t in thetas):
        parts = [
            f.decompress(t, shape) if t is not None else np.zeros(shape) for f, t in zip(forms, thetas, strict=True)
        ]
    errors: list[float] = []
    for _ in range(sweeps):
        for i, form in enumerate(forms):
            others = sum((p for j, p in enumerate(parts) if j != i), np.zeros(shape))
            thetas[i] = form.c_step(w - others, thetas[i])
            parts[i] = form.decompress(thetas[i], shape)
            errors.append(float(((w - others - parts[i]) ** 2).sum()))
        if len(errors) > len(forms) and errors[-len(forms) - 1] - errors[-1] <= 1e-12 * max(errors[-1], 1.0):
            break
    return thetas, errors


def net_prune_c_step(residuals: dict[str, np.ndarray], kappa: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Constraint ℓ0 over several tensors at once: the κ largest |w| of all of them together (exact).

    LC's pruning with one κ for the net (Part V, its "1-bit codebook + x% corrections" setting): the
    per-tensor C step is this problem with the tensors taken separately. Each tensor's θ is the
    (indices, values) of its share, so each still travels as a :class:`PruneL0` θ.
    """
    flat = [np.asarray(r, dtype=np.float64).ravel() for r in residuals.values()]
    magnitudes = np.concatenate([np.abs(f) for f in flat]) if flat else np.zeros(0)
    k = min(kappa, magnitudes.size)
    keep = np.zeros(magnitudes.size, dtype=bool)
    if k > 0:
        keep[np.argpartition(-magnitudes, k - 1)[:k]] = True
    out, start = {}, 0
    for name, f in zip(residuals, flat, strict=True):
        idx = np.flatnonzero(keep[start : start + f.size])
        out[name] = (idx, f[idx])
        start += f.size
    return out


def joint_additive_c_step(
    forms: dict[str, list[Form]],
    targets: dict[str, np.ndarray],
    thetas: dict[str, list[Any] | None],
    net: int,
    kappa: int,
    sweeps: int = 10,
) -> tuple[dict[str, list[Any]], list[float]]:
    """Eq. 4 over a group of tensors whose form number ``net`` is one net-wide pruning of ``kappa`` entries.

    The other forms take their C step per tensor, as in :func:`additive_c_step`; a net-wide form takes
    :func:`net_prune_c_step` on all the tensors' residuals at once. Each update is an exact block
    minimization of Σ_tensors ‖w − Σ_f Δ_f(θ_f)‖², so the returned errors never increase.
    """
    names = list(targets)
    count = len(forms[names[0]])
    parts, theta = {}, {}
    for n in names:
        shape, warm = targets[n].shape, thetas.get(n)
        theta[n] = list(warm) if warm is not None else [None] * count
        parts[n] = [
            f.decompress(t, shape) if t is not None else np.zeros(shape)
            for f, t in zip(forms[n], theta[n], strict=True)
        ]
    errors: list[float] = []
    for _ in range(sweeps):
        for i in range(count):
            residual = {n: targets[n] - sum((p for j, p in enumerate(parts[n]) if j != i), 0.0) for n in names}
            if i == net:
                for n, share in net_prune_c_step(residual, kappa).items():
                    theta[n][i] = share
            else:
                for n in names:
                    theta[n][i] = forms[n][i].c_step(residual[n], theta[n][i])
            for n in names:
                parts[n][i] = forms[n][i].decompress(theta[n][i], targets[n].shape)
            errors.append(sum(float(((targets[n] - sum(parts[n])) ** 2).sum()) for n in names))
        if len(errors) > count and errors[-count - 1] - errors[-1] <= 1e-12 * max(errors[-1], 1.0):
            break
    return theta, errors


def quantize_plus_sparse_exact(
    w: np.ndarray, codebook: np.ndarray, kappa: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Theorem 4.1: nearest codeword for every weight, then the κ largest residuals as corrections.

    Returns (codeword index per weight, correction indices, correction values).
    """
    flat = np.asarray(w, dtype=np.float64).ravel()
    book = np.sort(np.asarray(codebook, dtype=np.float64))
    q_idx = assign(flat, book)
    residual = flat - book[q_idx]
    idx, values = PruneL0(kappa).c_step(residual)
    return q_idx, idx, values
