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
- :class:`PruneL0` — constraint ℓ0: keep the κ largest |w| (exact).
- :class:`LowRank` — truncated SVD at rank r (Eckart–Young); a conv weight (n, m, d1, d2) is
  reshaped to n × (m·d1·d2) as in the paper.

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


class Form(Protocol):
    """One compression form: an exact (or warm-started) C step and its decompression."""

    def c_step(self, w: np.ndarray, theta: Any | None = None) -> Any: ...

    def decompress(self, theta: Any, shape: tuple[int, ...]) -> np.ndarray: ...


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


def kmeans_1d_optimal(w: np.ndarray, k: int) -> np.ndarray:
    """The globally optimal k-entry codebook for the values ``w`` (sorted ascending)."""
    values = np.sort(np.asarray(w, dtype=np.float64).ravel())
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
        if self.exact or theta is None:
            codebook = kmeans_1d_optimal(flat, self.k)  # the global optimum also seeds Lloyd's first call
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


@dataclass
class Binarization:
    """Fixed codebook {−a, +a}; a = mean |w| minimizes Σ(w − a·sign w)²."""

    def c_step(self, w: np.ndarray, theta: Any = None) -> tuple[float, np.ndarray]:
        flat = np.asarray(w, dtype=np.float64).ravel()
        return float(np.abs(flat).mean()) if flat.size else 0.0, flat >= 0

    def decompress(self, theta: tuple[float, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        a, positive = theta
        return np.where(positive, a, -a).reshape(shape)


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


def as_matrix(shape: tuple[int, ...]) -> tuple[int, int]:
    """The matrix a weight is factorized as: (out, in) for linear, n × (m·d1·d2) for a conv."""
    if len(shape) < 2:
        raise ValueError(f"low-rank needs a matrix or a conv weight, got shape {shape}")
    return shape[0], math.prod(shape[1:])


@dataclass
class LowRank:
    """Rank-r truncated SVD (Eckart–Young): θ = (U·√s, √s·Vᵀ)."""

    rank: int

    def c_step(self, w: np.ndarray, theta: Any = None) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = as_matrix(w.shape)
        u, s, vt = np.linalg.svd(np.asarray(w, dtype=np.float64).reshape(rows, cols), full_matrices=False)
        r = min(self.rank, s.size)
        root = np.sqrt(s[:r])
        return u[:, :r] * root, root[:, None] * vt[:r]

    def decompress(self, theta: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        left, right = theta
        return (left @ right).reshape(shape)


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
