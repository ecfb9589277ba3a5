"""ALDS: automatic layer-wise decomposition selection (Liebenwein, Maalouf, Feldman, Rus).

**Local step** (supplement A.1–A.3). A conv weight W ∈ R^{f×c×κ1×κ2} (a
linear layer is κ1 = κ2 = 1) is unfolded to the matrix f × (c·κ1κ2). Its c
input channels are sliced into k equal subspaces (k divides c); each slice
W_i ∈ R^{f×(c/k·κ1κ2)} gets a rank-j SVD W_i ≈ U_i V_i. The layer becomes
a grouped convolution c → j·k with the original kernel, stride and padding
(groups = k, holding the V_i) followed by a 1×1 convolution j·k → f (holding
[U_1 … U_k], with the original bias): j·(k·f + c·κ1κ2) parameters instead of
f·c·κ1κ2. At full rank (j = min(f, c/k·κ1κ2)) it is exact.

**Error measure** tabulated per (layer, k, j): max over slices of
σ_{j+1}(W_i) / ‖W‖₂, from one SVD per slice (the public implementation's
measure). It is a lower estimate: the true relative operator-norm error
‖W − Ŵ‖₂/‖W‖₂ of the sliced approximation lies between it and √k times it,
since Ŵ − W is a row of k blocks each of norm σ_{j+1}(W_i).
:func:`true_error` computes the real one for checking a solution.

**Algorithm 1** (:func:`allocate`): for a parameter budget, alternate
OptimalRanks — one relative error ε shared by all layers, each layer taking
the smallest rank whose tabulated error is ≤ ε, ε the smallest value whose
ranks fit the budget (an exact search over the tabulated errors, so the
maximum error is minimized for the given k's) — and OptimalSubspaces — per
layer, keeping its parameter count, the k with the lowest error. Several
initializations of k (k = 1 everywhere, uniform k's, random), 4 alternations
each, keep the lowest maximum error; then spend what is left of the budget
on the layers with the largest error, one rank at a time, so the achieved
size is within one rank step of the target. A layer whose decomposition
would not save parameters stays dense (error 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass
class LayerTable:
    """Every (k, j) option of one layer: parameters and tabulated error."""

    name: str
    shape: tuple[int, ...]  # (f, c, κ1, κ2) or (f, c)
    ks: list[int]
    sigmas: dict[int, np.ndarray]  # k → (k, r_max) singular values per slice
    norm: float  # ‖W‖₂ of the unfolded layer

    @property
    def dense_params(self) -> int:
        return math.prod(self.shape)

    @property
    def f(self) -> int:
        return self.shape[0]

    @property
    def c(self) -> int:
        return self.shape[1]

    @property
    def kernel(self) -> int:
        return math.prod(self.shape[2:]) if len(self.shape) > 2 else 1

    def max_rank(self, k: int) -> int:
        return min(self.f, self.c // k * self.kernel)

    def params(self, k: int, j: int) -> int:
        return j * (k * self.f + self.c * self.kernel)

    def error(self, k: int, j: int) -> float:
        """max_i σ_{j+1}(W_i) / ‖W‖₂ (0 at full rank)."""
        s = self.sigmas[k]
        if j >= s.shape[1] or self.norm == 0:
            return 0.0
        return float(s[:, j].max() / self.norm)

    def options(self) -> list[tuple[int, int, int, float]]:
        """(k, j, params, error) of every decomposition that saves parameters."""
        out = []
        for k in self.ks:
            for j in range(1, self.max_rank(k) + 1):
                p = self.params(k, j)
                if p < self.dense_params:
                    out.append((k, j, p, self.error(k, j)))
        return out


def unfold(weight: np.ndarray) -> np.ndarray:
    """The layer's matrix operator f × (c·κ1κ2) (scheme 0)."""
    return weight.reshape(weight.shape[0], -1)


def slices(weight: np.ndarray, k: int) -> list[np.ndarray]:
    """The k input-channel subspaces, each unfolded to f × (c/k·κ1κ2)."""
    f, c = weight.shape[:2]
    if c % k:
        raise ValueError(f"k = {k} does not divide the {c} input channels")
    step = c // k
    return [weight[:, i * step : (i + 1) * step].reshape(f, -1) for i in range(k)]


def tabulate(name: str, weight: np.ndarray, max_k: int = 8) -> LayerTable:
    """One SVD per slice per k (k among the divisors of c up to ``max_k``)."""
    w = np.asarray(weight, dtype=np.float64)
    c = w.shape[1]
    ks = [k for k in range(1, min(max_k, c) + 1) if c % k == 0]
    sigmas = {k: np.stack([np.linalg.svd(s, compute_uv=False) for s in slices(w, k)]) for k in ks}
    norm = float(np.linalg.svd(unfold(w), compute_uv=False)[0]) if w.size else 0.0
    return LayerTable(name, tuple(w.shape), ks, sigmas, norm)


# ----------------------------------------------------------------------------- the local step


def decompose(weight: np.ndarray, k: int, j: int) -> tuple[np.ndarray, np.ndarray]:
    """(encoder, decoder) weights: encoder (j·k, c/k, κ1, κ2) grouped conv, decoder (f, j·k, 1, 1)."""
    w = np.asarray(weight, dtype=np.float64)
    f, c = w.shape[:2]
    kernel_shape = w.shape[2:]
    enc, dec = [], []
    for s in slices(w, k):
        u, sv, vt = np.linalg.svd(s, full_matrices=False)
        r = min(j, sv.size)
        left = u[:, :r] * sv[:r]
        right = vt[:r]
        if r < j:  # pad with zero directions so every slice has j
            left = np.pad(left, ((0, 0), (0, j - r)))
            right = np.pad(right, ((0, j - r), (0, 0)))
        dec.append(left)
        enc.append(right.reshape(j, c // k, *kernel_shape))
    encoder = np.concatenate(enc, axis=0)  # (k·j, c/k, κ1, κ2)
    decoder = np.concatenate(dec, axis=1).reshape(f, k * j, *([1] * len(kernel_shape)))
    return encoder, decoder


def recompose(encoder: np.ndarray, decoder: np.ndarray, k: int) -> np.ndarray:
    """The dense weight the decomposed pair computes: [U_1 … U_k] blockdiag(V_i)."""
    f = decoder.shape[0]
    kj = encoder.shape[0]
    j = kj // k
    u = decoder.reshape(f, kj)
    parts = [u[:, i * j : (i + 1) * j] @ encoder[i * j : (i + 1) * j].reshape(j, -1) for i in range(k)]
    per = encoder.shape[1]
    return np.concatenate([p.reshape(f, per, *encoder.shape[2:]) for p in parts], axis=1)


def true_error(weight: np.ndarray, k: int, j: int) -> float:
    """‖W − Ŵ‖₂ / ‖W‖₂ of the sliced rank-j approximation (the real operator-norm error)."""
    w = np.asarray(weight, dtype=np.float64)
    approx = recompose(*decompose(w, k, j), k)
    norm = np.linalg.svd(unfold(w), compute_uv=False)[0]
    return float(np.linalg.svd(unfold(w - approx), compute_uv=False)[0] / norm) if norm else 0.0


class ALDSConv2d(nn.Module):
    """A conv layer as ALDS rebuilds it: grouped conv c → j·k (original kernel) then 1×1 conv j·k → f."""

    def __init__(self, conv: nn.Conv2d, k: int, j: int) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError("ALDS decomposes ungrouped convolutions only")
        enc, dec = decompose(conv.weight.detach().cpu().numpy(), k, j)
        like = {"dtype": conv.weight.dtype, "device": conv.weight.device}
        self.encoder = nn.Conv2d(
            conv.in_channels, k * j, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=k, bias=False,
            **like,
        )  # fmt: skip
        self.decoder = nn.Conv2d(k * j, conv.out_channels, 1, bias=conv.bias is not None, **like)
        with torch.no_grad():
            self.encoder.weight.copy_(torch.from_numpy(enc).to(conv.weight.dtype))
            self.decoder.weight.copy_(torch.from_numpy(dec).to(conv.weight.dtype))
            if conv.bias is not None:
                self.decoder.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


# ----------------------------------------------------------------------------- Algorithm 1


@dataclass
class Allocation:
    """A choice per layer: (k, j), or None for dense."""

    choice: dict[str, tuple[int, int] | None]
    params: int  # decomposable layers only
    max_error: float
    errors: dict[str, float] = field(default_factory=dict)


def _evaluate(tables: list[LayerTable], choice: dict[str, tuple[int, int] | None]) -> Allocation:
    params, errors = 0, {}
    for t in tables:
        c = choice[t.name]
        if c is None:
            params += t.dense_params
            errors[t.name] = 0.0
        else:
            params += t.params(*c)
            errors[t.name] = t.error(*c)
    return Allocation(dict(choice), params, max(errors.values(), default=0.0), errors)


def _ranks_for(tables: list[LayerTable], ks: dict[str, int], eps: float) -> dict[str, tuple[int, int] | None]:
    """Each layer's smallest rank with error ≤ ε for its k (dense if that does not save)."""
    out: dict[str, tuple[int, int] | None] = {}
    for t in tables:
        k = ks[t.name]
        s = t.sigmas[k]
        rel = s.max(axis=0) / t.norm if t.norm else np.zeros(s.shape[1])  # error(k, j) = rel[j]
        j = int(np.argmax(rel <= eps)) if np.any(rel <= eps) else t.max_rank(k)
        j = max(j, 1)
        out[t.name] = (k, j) if t.params(k, j) < t.dense_params else None
    return out


def optimal_ranks(tables: list[LayerTable], ks: dict[str, int], budget: int) -> Allocation:
    """The smallest shared ε whose per-layer ranks fit ``budget`` (exact over the tabulated errors)."""
    candidates = sorted({t.error(ks[t.name], j) for t in tables for j in range(t.max_rank(ks[t.name]) + 1)})
    lo, hi = 0, len(candidates) - 1
    best = _evaluate(tables, _ranks_for(tables, ks, candidates[hi]))
    while lo <= hi:  # params(ε) is non-increasing in ε
        mid = (lo + hi) // 2
        alloc = _evaluate(tables, _ranks_for(tables, ks, candidates[mid]))
        if alloc.params <= budget:
            best, hi = alloc, mid - 1
        else:
            lo = mid + 1
    return best


def optimal_subspaces(tables: list[LayerTable], alloc: Allocation) -> dict[str, int]:
    """Per layer, within its current parameter count, the k with the lowest error."""
    ks = {}
    for t in tables:
        current = alloc.choice[t.name]
        own = t.params(*current) if current is not None else t.dense_params
        best_k, best_err = (current[0] if current else 1), math.inf
        for k in t.ks:
            j = min(t.max_rank(k), own // (k * t.f + t.c * t.kernel))
            if j >= 1 and t.error(k, j) < best_err:
                best_k, best_err = k, t.error(k, j)
        ks[t.name] = best_k
    return ks


def _fill(tables: list[LayerTable], alloc: Allocation, budget: int) -> Allocation:
    """Spend the rest of the budget: one more rank for the worst layer that still fits, repeatedly."""
    choice = dict(alloc.choice)
    while True:
        current = _evaluate(tables, choice)
        for name, _ in sorted(current.errors.items(), key=lambda kv: -kv[1]):
            c = choice[name]
            t = next(t for t in tables if t.name == name)
            if c is None or c[1] >= t.max_rank(c[0]):
                continue
            step = t.params(c[0], c[1] + 1) - t.params(*c)
            if current.params + step <= budget and t.params(c[0], c[1] + 1) < t.dense_params:
                choice[name] = (c[0], c[1] + 1)
                break
        else:
            return current


def allocate(
    tables: list[LayerTable], budget: int, seeds: int = 15, alternations: int = 4, rng_seed: int = 0
) -> Allocation:
    """Algorithm 1: the (k, j) per layer with the lowest maximum error whose parameters fit ``budget``."""
    rng = np.random.default_rng(rng_seed)
    inits: list[dict[str, int]] = [{t.name: 1 for t in tables}]  # k = 1: plain SVD is in the search space
    for u in (3, 5, 7, 9):  # uniform k, each layer's nearest divisor
        inits.append({t.name: min(t.ks, key=lambda k, u=u: abs(k - u)) for t in tables})
    while len(inits) < seeds:
        inits.append({t.name: int(rng.choice(t.ks)) for t in tables})
    best: Allocation | None = None
    for ks in inits[:seeds]:
        alloc = optimal_ranks(tables, ks, budget)
        for _ in range(alternations):
            ks = optimal_subspaces(tables, alloc)
            nxt = optimal_ranks(tables, ks, budget)
            if nxt.max_error >= alloc.max_error:
                break
            alloc = nxt
        if best is None or (alloc.max_error, alloc.params) < (best.max_error, best.params):
            best = alloc
    assert best is not None
    return _fill(tables, best, budget)


def uniform_svd(tables: list[LayerTable], budget: int) -> Allocation:
    """The baseline: k = 1 and the same fraction of each layer's full rank, the largest that fits."""
    best = _evaluate(tables, {t.name: None for t in tables})
    for frac in np.linspace(1.0, 0.0, 1001):
        choice = {}
        for t in tables:
            j = max(1, int(frac * t.max_rank(1)))
            choice[t.name] = (1, j) if t.params(1, j) < t.dense_params else None
        alloc = _evaluate(tables, choice)
        if alloc.params <= budget:
            return alloc
    return best
