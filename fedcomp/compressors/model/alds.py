"""ALDS: automatic layer-wise decomposition selection (Liebenwein, Maalouf, Feldman, Rus).

**Local step** (supplement A.1–A.3). A conv weight W ∈ R^{f×c×κ1×κ2} (a
linear layer is κ1 = κ2 = 1) is unfolded to the matrix f × (c·κ1κ2). Its c
input channels are sliced into k equal subspaces (k divides c); each slice
W_i ∈ R^{f×(c/k·κ1κ2)} gets a rank-j SVD W_i ≈ U_i V_i. The layer becomes
a grouped convolution c → j·k with the original kernel, stride and padding
(groups = k, holding the V_i) followed by a 1×1 convolution j·k → f (holding
[U_1 … U_k], with the original bias): j·(k·f + c·κ1κ2) parameters instead of
f·c·κ1κ2. At full rank (j = min(f, c/k·κ1κ2)) it is exact.

**Error measure** per (layer, k, j), two kinds (``ALDSParams.error``):

- ``"tabulated"`` (the public implementation's, Theorem 1's bound as its
  code evaluates it): max over slices of σ_{j+1}(W_i) / ‖W‖₂, from one SVD
  per slice. It is a lower estimate: the true relative operator-norm error
  ‖W − Ŵ‖₂/‖W‖₂ of the sliced approximation lies between it and √k times
  it, since Ŵ − W is a row of k blocks each of norm σ_{j+1}(W_i). So it
  flatters large k, and Algorithm 1 picks them for it (measured:
  docs/server_compression.md, ALDS).
- ``"true"`` (the default; a departure): that operator-norm error itself,
  ‖W − Ŵ‖₂² = λ_max(Σ_i E_i E_iᵀ) with E_i = U_i,>j S_i,>j V_i,>jᵀ the
  residual of slice i, so Σ_i E_i E_iᵀ = Σ_i Σ_{t>j} σ_it² u_it u_itᵀ is
  accumulated from the same SVDs, one rank-k update per rank (exact; k = 1
  is the tabulated value). It is what eq. 8's maximum relative error means,
  and with it Algorithm 1's k = 1 seed (plain SVD) can only be beaten by an
  allocation whose worst true error is lower.

:func:`true_error` recomputes the real error from the factors, for checks.

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

**The ablation baselines** (supplement Fig. 10; ``ALDSParams.allocation``):
``k1``, OptimalRanks with k = 1 in every layer (plain truncated SVD at the
ranks Algorithm 1 allocates: one shared error ε, the smallest that fits the
budget); ``fixed_k``, the same with k subspaces in every layer (each
layer's nearest divisor of its input channels, since k must divide them);
``uniform_svd``, k = 1 and one fraction of every layer's full rank
(:func:`uniform_svd`). :func:`fixed_k_allocation`.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fedcomp.coding import Payload
from fedcomp.compressors.model.base import (
    MODEL_COMPRESSORS,
    Broadcast,
    ModelCompressor,
    Received,
    Snapshot,
    State,
    dense_payload,
    read_whole,
)
from fedcomp.compressors.model.structure import Architecture, Edit, Structure, structure_op
from fedcomp.params import ConfigError, require

SCHEMES = (0, 1, 2, 3)

logger = logging.getLogger(__name__)


def scheme_kernels(scheme: int, kernel: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(encoder kernel, decoder kernel) of a folding scheme (supplement A.6) for a conv kernel (κ1, κ2)."""
    if not kernel:  # a linear layer: only scheme 0 exists
        return (), ()
    k1, k2 = kernel
    return {0: ((k1, k2), (1, 1)), 1: ((1, k2), (k1, 1)), 2: ((k1, 1), (1, k2)), 3: ((1, 1), (k1, k2))}[scheme]


def fold(weight: np.ndarray, scheme: int = 0) -> np.ndarray:
    """The matrix a scheme decomposes: 0 f × cκ1κ2, 1 fκ1 × cκ2, 2 fκ2 × cκ1, 3 fκ1κ2 × c.

    Rows hold the decoder's side (f and its kernel axes), columns the
    encoder's (c and its kernel axes), so slicing c slices the columns.
    """
    f = weight.shape[0]
    if weight.ndim == 2 or scheme == 0:
        return weight.reshape(f, -1)
    _, dec = scheme_kernels(scheme, weight.shape[2:])
    axes = {1: (0, 2, 1, 3), 2: (0, 3, 1, 2), 3: (0, 2, 3, 1)}[scheme]
    return weight.transpose(axes).reshape(f * math.prod(dec), -1)  # (f, dec kernel, c, enc kernel)


def slices(weight: np.ndarray, k: int, scheme: int = 0) -> list[np.ndarray]:
    """The k input-channel subspaces, each folded by ``scheme`` (scheme 0: f × (c/k·κ1κ2))."""
    f, c = weight.shape[:2]
    if c % k:
        raise ValueError(f"k = {k} does not divide the {c} input channels")
    step = c // k
    return [fold(weight[:, i * step : (i + 1) * step], scheme) for i in range(k)]


Option = tuple[int, int]
"""A layer's subspace option: (k, scheme)."""
Choice = tuple[int, int, int]
"""A decomposition: (k, j, scheme)."""


ErrorKind = Literal["tabulated", "bound", "true"]


@dataclass
class LayerTable:
    """Every (k, scheme, j) option of one layer: parameters and relative error."""

    name: str
    shape: tuple[int, ...]  # (f, c, κ1, κ2) or (f, c)
    ks: list[int]
    errors: dict[Option, np.ndarray]  # (k, scheme) → relative error at rank j = 0 … r_max (0 at full rank)
    schemes: tuple[int, ...] = (0,)

    @property
    def dense_params(self) -> int:
        return math.prod(self.shape)

    @property
    def f(self) -> int:
        return self.shape[0]

    @property
    def c(self) -> int:
        return self.shape[1]

    def options(self) -> list[Option]:
        return [(k, s) for s in self.schemes for k in self.ks]

    def sides(self, scheme: int) -> tuple[int, int]:
        """(rows of the folded matrix, encoder kernel size): rows = f·|decoder kernel|."""
        enc, dec = scheme_kernels(scheme, self.shape[2:])
        return self.f * math.prod(dec), math.prod(enc)

    def max_rank(self, k: int, scheme: int = 0) -> int:
        rows, enc = self.sides(scheme)
        return min(rows, self.c // k * enc)

    def params(self, k: int, j: int, scheme: int = 0) -> int:
        rows, enc = self.sides(scheme)
        return j * (k * rows + self.c * enc)

    def error(self, k: int, j: int, scheme: int = 0) -> float:
        """The relative error of the rank-j decomposition with k subspaces (module docstring: which kind)."""
        e = self.errors[(k, scheme)]
        return float(e[j]) if j < e.size else 0.0


def tabulate(
    name: str, weight: np.ndarray, max_k: int = 8, schemes: tuple[int, ...] = (0,), error: ErrorKind = "tabulated"
) -> LayerTable:
    """One SVD per slice per (k, scheme) (k among the divisors of c up to ``max_k``; 0: every divisor)."""
    w = np.asarray(weight, dtype=np.float64)
    c = w.shape[1]
    ks = [k for k in range(1, (min(max_k, c) if max_k > 0 else c) + 1) if c % k == 0]
    if w.ndim == 2 or w.shape[2:] == (1, 1):
        schemes = (0,)  # every folding of a 1×1 kernel is the same matrix
    errors = {}
    for s in schemes:
        norm = float(np.linalg.svd(fold(w, s), compute_uv=False)[0]) if w.size else 0.0
        for k in ks:
            svds = [np.linalg.svd(m, full_matrices=False) for m in slices(w, k, s)]
            errors[(k, s)] = _relative_errors(svds, norm, error)
    return LayerTable(name, tuple(w.shape), ks, errors, tuple(schemes))


def _relative_errors(svds: list[tuple[np.ndarray, ...]], norm: float, kind: ErrorKind) -> np.ndarray:
    """Relative error at every rank j = 0 … r (r = the slices' full rank, where it is 0).

    ``tabulated``: max_i σ_{j+1}(W_i)/‖W‖₂. ``true``: ‖[E_1 … E_k]‖₂/‖W‖₂ with the Gram matrix of the
    residual, Σ_i Σ_{t>j} σ_it² u_it u_itᵀ, grown one rank at a time from the top down (exact).
    """
    sigmas = np.stack([sv for _, sv, _ in svds])  # (k, r)
    r = sigmas.shape[1]
    out = np.zeros(r + 1)
    if norm == 0:
        return out
    if kind == "tabulated" or len(svds) == 1:  # one slice: σ_{j+1} is the true error
        out[:r] = sigmas.max(axis=0) / norm
        return out
    if kind == "bound":
        out[:r] = np.sqrt((sigmas**2).sum(axis=0)) / norm
        return out
    # ‖[E_1 … E_k]‖₂ = ‖[U_1,>j S_1,>j … U_k,>j S_k,>j]‖₂ (the V_i sit on disjoint columns): the larger
    # eigenvalue of whichever Gram matrix of that rows × k(r − j) matrix is smaller.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of small decompositions: threads only contend (7× slower on 2 busy cores)
    try:
        scaled = [torch.from_numpy(u[:, :r] * sv[None, :]) for u, sv, _ in svds]
        rows = scaled[0].shape[0]
        gram = torch.zeros(rows, rows, dtype=torch.float64)
        for j in range(r - 1, -1, -1):  # the residual at rank j holds components j … r−1
            column = torch.stack([us[:, j] for us in scaled], dim=1)
            gram += column @ column.T  # the k slices' rank-j components
            if len(svds) * (r - j) < rows:
                a = torch.cat([us[:, j:] for us in scaled], dim=1)
                top = torch.linalg.eigvalsh(a.T @ a)[-1]
            else:
                top = torch.linalg.eigvalsh(gram)[-1]
            out[j] = math.sqrt(max(float(top), 0.0)) / norm
    finally:
        torch.set_num_threads(threads)
    return np.maximum.accumulate(out[::-1])[::-1]  # non-increasing in j, whatever the rounding


# ----------------------------------------------------------------------------- the local step


def decompose(weight: np.ndarray, k: int, j: int, scheme: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(encoder, decoder) weights: encoder (j·k, c/k, *enc kernel) grouped conv, decoder (f, j·k, *dec kernel)."""
    w = np.asarray(weight, dtype=np.float64)
    f, c = w.shape[:2]
    enc_k, dec_k = scheme_kernels(scheme, w.shape[2:])
    enc, dec = [], []
    for s in slices(w, k, scheme):
        u, sv, vt = np.linalg.svd(s, full_matrices=False)
        r = min(j, sv.size)
        left = u[:, :r] * sv[:r]
        right = vt[:r]
        if r < j:  # pad with zero directions so every slice has j
            left = np.pad(left, ((0, 0), (0, j - r)))
            right = np.pad(right, ((0, j - r), (0, 0)))
        # rows are (f, dec kernel...): the decoder's filters, moved to (f, j, dec kernel...)
        left = left.reshape(f, *dec_k, j)
        dec.append(np.moveaxis(left, -1, 1))
        enc.append(right.reshape(j, c // k, *enc_k))
    encoder = np.concatenate(enc, axis=0)  # (k·j, c/k, *enc kernel)
    decoder = np.concatenate(dec, axis=1)  # (f, k·j, *dec kernel)
    return encoder, decoder


def recompose(encoder: np.ndarray, decoder: np.ndarray, k: int, scheme: int = 0) -> np.ndarray:
    """The dense weight the decomposed pair computes (the inverse folding of U_i V_i per slice)."""
    f = decoder.shape[0]
    kj = encoder.shape[0]
    j = kj // k
    per = encoder.shape[1]
    enc_k, dec_k = encoder.shape[2:], decoder.shape[2:]
    parts = []
    for i in range(k):
        u = np.moveaxis(decoder[:, i * j : (i + 1) * j], 1, -1).reshape(-1, j)  # (f·|dec|, j)
        v = encoder[i * j : (i + 1) * j].reshape(j, -1)  # (j, per·|enc|)
        parts.append(_unfold_back(u @ v, f, per, enc_k, dec_k, scheme))
    return np.concatenate(parts, axis=1)


def _unfold_back(
    m: np.ndarray, f: int, c: int, enc_k: tuple[int, ...], dec_k: tuple[int, ...], scheme: int
) -> np.ndarray:
    """Inverse of :func:`fold` for one slice with c input channels."""
    if not enc_k:  # linear
        return m.reshape(f, c)
    if scheme == 0:
        return m.reshape(f, c, *enc_k)
    k1, k2 = max(enc_k[0], dec_k[0]), max(enc_k[1], dec_k[1])
    if scheme == 1:  # rows (f, κ1), columns (c, κ2)
        return m.reshape(f, k1, c, k2).transpose(0, 2, 1, 3)
    if scheme == 2:  # rows (f, κ2), columns (c, κ1)
        return m.reshape(f, k2, c, k1).transpose(0, 2, 3, 1)
    return m.reshape(f, k1, k2, c).transpose(0, 3, 1, 2)  # scheme 3: rows (f, κ1, κ2), columns c


def true_error(weight: np.ndarray, k: int, j: int, scheme: int = 0) -> float:
    """‖W − Ŵ‖₂ / ‖W‖₂ of the sliced rank-j approximation, in the scheme's folding (the real error)."""
    w = np.asarray(weight, dtype=np.float64)
    approx = recompose(*decompose(w, k, j, scheme), k, scheme)
    norm = np.linalg.svd(fold(w, scheme), compute_uv=False)[0]
    return float(np.linalg.svd(fold(w - approx, scheme), compute_uv=False)[0] / norm) if norm else 0.0


def _split(pair: tuple[int, ...] | int) -> tuple[int, int]:
    return (pair, pair) if isinstance(pair, int) else (pair[0], pair[1])


class ALDSConv2d(nn.Module):
    """A conv layer as ALDS rebuilds it: grouped conv c → j·k then conv j·k → f (kernels per scheme).

    Scheme 0 keeps the original kernel, stride and padding in the encoder and
    a 1×1 decoder; the others split the kernel (and with it stride and
    padding) between the two, which composes to the original convolution
    exactly. ``weights=False`` builds the empty shell a receiver loads a
    broadcast into.
    """

    def __init__(self, conv: nn.Conv2d, k: int, j: int, scheme: int = 0, weights: bool = True) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError("ALDS decomposes ungrouped convolutions only")
        if scheme not in SCHEMES:
            raise ValueError(f"folding scheme {scheme} is not one of {SCHEMES}")
        kernel = tuple(conv.kernel_size)
        enc_k, dec_k = scheme_kernels(scheme, kernel)
        _check_kj(conv.out_channels * math.prod(dec_k), conv.in_channels, math.prod(enc_k), k, j)
        if scheme and tuple(_split(conv.dilation)) != (1, 1):
            raise ValueError("folding schemes 1–3 need an undilated convolution")
        (s1, s2), (p1, p2) = _split(conv.stride), _split(conv.padding)
        enc_stride, enc_pad, dec_stride, dec_pad = {
            0: ((s1, s2), (p1, p2), (1, 1), (0, 0)),
            1: ((1, s2), (0, p2), (s1, 1), (p1, 0)),
            2: ((s1, 1), (p1, 0), (1, s2), (0, p2)),
            3: ((1, 1), (0, 0), (s1, s2), (p1, p2)),
        }[scheme]
        like = {"dtype": conv.weight.dtype, "device": conv.weight.device}
        self.encoder = nn.Conv2d(
            conv.in_channels, k * j, enc_k, enc_stride, enc_pad, conv.dilation if scheme == 0 else 1, groups=k,
            bias=False, **like,
        )  # fmt: skip
        self.decoder = nn.Conv2d(
            k * j, conv.out_channels, dec_k, dec_stride, dec_pad, bias=conv.bias is not None, **like
        )
        if weights:
            enc, dec = decompose(conv.weight.detach().cpu().numpy(), k, j, scheme)
            with torch.no_grad():
                self.encoder.weight.copy_(torch.from_numpy(enc).to(conv.weight.dtype))
                self.decoder.weight.copy_(torch.from_numpy(dec).to(conv.weight.dtype))
                if conv.bias is not None:
                    self.decoder.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class GroupedLinear(nn.Module):
    """k independent maps c/k → j on the k input slices (a linear layer's grouped "convolution")."""

    def __init__(self, in_features: int, k: int, j: int, **like: Any) -> None:
        super().__init__()
        self.k, self.j = k, j
        self.weight = nn.Parameter(torch.zeros(k * j, in_features // k, **like))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.reshape(*x.shape[:-1], self.k, -1)  # (..., k, c/k)
        w = self.weight.reshape(self.k, self.j, -1)  # (k, j, c/k)
        return torch.einsum("...kc,kjc->...kj", xs, w).reshape(*x.shape[:-1], self.k * self.j)


class ALDSLinear(nn.Module):
    """A linear layer as ALDS rebuilds it: k slice maps c/k → j, then one linear k·j → f."""

    def __init__(self, linear: nn.Linear, k: int, j: int, weights: bool = True) -> None:
        super().__init__()
        _check_kj(linear.out_features, linear.in_features, 1, k, j)
        like = {"dtype": linear.weight.dtype, "device": linear.weight.device}
        self.encoder = GroupedLinear(linear.in_features, k, j, **like)
        self.decoder = nn.Linear(k * j, linear.out_features, bias=linear.bias is not None, **like)
        if weights:
            enc, dec = decompose(linear.weight.detach().cpu().numpy(), k, j)
            with torch.no_grad():
                self.encoder.weight.copy_(torch.from_numpy(enc).to(linear.weight.dtype))
                self.decoder.weight.copy_(torch.from_numpy(dec).to(linear.weight.dtype))
                if linear.bias is not None:
                    self.decoder.bias.copy_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _check_kj(f: int, c: int, kernel: int, k: int, j: int) -> None:
    if k < 1 or c % k:
        raise ValueError(f"k = {k} does not divide the {c} input channels")
    if not 1 <= j <= min(f, c // k * kernel):
        raise ValueError(f"rank j = {j} outside 1..{min(f, c // k * kernel)}")


@structure_op("alds")
def factorized(layer: nn.Module, args: tuple[int, ...]) -> nn.Module:
    """Structure edit ``alds`` with args (k, j, scheme): the layer's ALDS shell."""
    if len(args) != 3:
        raise ValueError(f"expects (k, j, scheme), got {args}")
    k, j, scheme = args
    if isinstance(layer, nn.Conv2d):
        return ALDSConv2d(layer, k, j, scheme, weights=False)
    if isinstance(layer, nn.Linear):
        if scheme != 0:
            raise ValueError("a linear layer has folding scheme 0 only")
        return ALDSLinear(layer, k, j, weights=False)
    raise ValueError(f"{type(layer).__name__} is not a Conv2d or Linear layer")


# ----------------------------------------------------------------------------- Algorithm 1


@dataclass
class Allocation:
    """A choice per layer: (k, j, scheme), or None for dense."""

    choice: dict[str, Choice | None]
    params: int  # decomposable layers only
    max_error: float
    errors: dict[str, float] = field(default_factory=dict)


def _evaluate(tables: list[LayerTable], choice: dict[str, Choice | None]) -> Allocation:
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


def _ranks_for(tables: list[LayerTable], opts: dict[str, Option], eps: float) -> dict[str, Choice | None]:
    """Each layer's smallest rank with error ≤ ε for its (k, scheme) (dense if that does not save)."""
    out: dict[str, Choice | None] = {}
    for t in tables:
        k, s = opts[t.name]
        rel = t.errors[(k, s)]  # non-increasing in j, 0 at full rank
        j = int(np.argmax(rel <= eps)) if np.any(rel <= eps) else t.max_rank(k, s)
        j = max(j, 1)
        out[t.name] = (k, j, s) if t.params(k, j, s) < t.dense_params else None
    return out


def optimal_ranks(tables: list[LayerTable], opts: dict[str, Option], budget: int) -> Allocation:
    """The smallest shared ε whose per-layer ranks fit ``budget`` (exact over the tabulated errors)."""
    candidates = sorted(
        {t.error(k, j, s) for t in tables for k, s in [opts[t.name]] for j in range(t.max_rank(k, s) + 1)}
    )
    lo, hi = 0, len(candidates) - 1
    best = _evaluate(tables, _ranks_for(tables, opts, candidates[hi]))
    while lo <= hi:  # params(ε) is non-increasing in ε
        mid = (lo + hi) // 2
        alloc = _evaluate(tables, _ranks_for(tables, opts, candidates[mid]))
        if alloc.params <= budget:
            best, hi = alloc, mid - 1
        else:
            lo = mid + 1
    return best


def optimal_subspaces(tables: list[LayerTable], alloc: Allocation) -> dict[str, Option]:
    """Per layer, within its current parameter count, the (k, scheme) with the lowest error."""
    opts = {}
    for t in tables:
        current = alloc.choice[t.name]
        own = t.params(*current) if current is not None else t.dense_params
        best, best_err = ((current[0], current[2]) if current else (1, 0)), math.inf
        for k, s in t.options():
            rows, enc = t.sides(s)
            j = min(t.max_rank(k, s), own // (k * rows + t.c * enc))
            if j >= 1 and t.error(k, j, s) < best_err:
                best, best_err = (k, s), t.error(k, j, s)
        opts[t.name] = best
    return opts


def _fill(tables: list[LayerTable], alloc: Allocation, budget: int) -> Allocation:
    """Spend the rest of the budget: one more rank for the worst layer that still fits, repeatedly."""
    choice = dict(alloc.choice)
    by_name = {t.name: t for t in tables}
    while True:
        current = _evaluate(tables, choice)
        for name, _ in sorted(current.errors.items(), key=lambda kv: -kv[1]):
            c, t = choice[name], by_name[name]
            if c is None or c[1] >= t.max_rank(c[0], c[2]):
                continue
            grown = (c[0], c[1] + 1, c[2])
            if current.params + t.params(*grown) - t.params(*c) <= budget and t.params(*grown) < t.dense_params:
                choice[name] = grown
                break
        else:
            return current


def allocate(
    tables: list[LayerTable], budget: int, seeds: int = 15, alternations: int = 4, rng_seed: int = 0
) -> Allocation:
    """Algorithm 1: the (k, j, scheme) per layer with the lowest maximum error whose parameters fit ``budget``.

    ALDS+ (supplement A.6) is the same search over tables tabulated with
    several folding schemes: OptimalSubspaces then picks k and the scheme.
    """
    rng = np.random.default_rng(rng_seed)
    inits: list[dict[str, Option]] = [{t.name: (1, 0) for t in tables}]  # plain SVD is in the search space
    for u in (3, 5, 7, 9):  # uniform k, each layer's nearest divisor
        inits.append({t.name: (min(t.ks, key=lambda k, u=u: abs(k - u)), 0) for t in tables})
    while len(inits) < seeds:
        inits.append({t.name: t.options()[int(rng.integers(len(t.options())))] for t in tables})
    # Over budget loses to within budget, whatever its error: a seed whose smallest ranks cannot fit
    # (each layer keeps rank >= 1) must never win over one that fits (main: 132 parameters for 97).
    inits.append(cheapest_options(tables))

    def rank(a: Allocation) -> tuple[bool, float, float, int]:
        fits = a.params <= budget
        # Ties in the maximum are common (one layer sets it): then the lower total error.
        return (not fits, a.max_error if fits else float(a.params), sum(a.errors.values()), a.params)

    best: Allocation | None = None
    for opts in inits[:seeds] + inits[-1:]:
        alloc = optimal_ranks(tables, opts, budget)
        for _ in range(alternations):
            opts = optimal_subspaces(tables, alloc)
            nxt = optimal_ranks(tables, opts, budget)
            if rank(nxt) >= rank(alloc):
                break
            alloc = nxt
        alloc = _fill(tables, alloc, budget)  # finished allocations are compared, the k = 1 seed's among them
        if best is None or rank(alloc) < rank(best):
            best = alloc
    assert best is not None
    if best.params > budget:
        logger.warning(
            "ALDS: no allocation fits %d parameters (every layer keeps rank >= 1): the smallest found has %d",
            budget,
            best.params,
        )
    return best


def cheapest_options(tables: list[LayerTable]) -> dict[str, Option]:
    """Per layer, the (k, scheme) whose rank-1 decomposition has the fewest parameters."""
    return {t.name: min(t.options(), key=lambda o, t=t: (t.params(o[0], 1, o[1]), o)) for t in tables}


def uniform_svd(tables: list[LayerTable], budget: int) -> Allocation:
    """The baseline: k = 1 and the same fraction of each layer's full rank, the largest that fits."""
    best = _evaluate(tables, {t.name: None for t in tables})
    for frac in np.linspace(1.0, 0.0, 1001):
        choice: dict[str, Choice | None] = {}
        for t in tables:
            j = max(1, int(frac * t.max_rank(1)))
            choice[t.name] = (1, j, 0) if t.params(1, j) < t.dense_params else None
        alloc = _evaluate(tables, choice)
        if alloc.params <= budget:
            return alloc
    return best


def nearest_divisor(ks: list[int], k: int) -> int:
    """Of a layer's subspace counts ``ks`` (divisors of c), the one nearest ``k`` (the smaller on a tie)."""
    return min(ks, key=lambda d: (abs(d - k), d))


def fixed_k_allocation(tables: list[LayerTable], budget: int, k: int) -> Allocation:
    """The ablation baselines of supplement Fig. 10: Algorithm 1's OptimalRanks with k fixed, no OptimalSubspaces.

    Every layer gets ``k`` subspaces (its nearest divisor of c: k must divide the input channels), then one
    shared ε, each layer the smallest rank within it, ε the smallest that fits ``budget``
    (:func:`optimal_ranks`), and the rest of the budget spent as :func:`allocate` does. ``k = 1`` is plain
    per-layer SVD at the allocated ranks.
    """
    opts = {t.name: (nearest_divisor(t.ks, k), 0) for t in tables}
    return _fill(tables, optimal_ranks(tables, opts, budget), budget)


# ----------------------------------------------------------------------------- ALDS in FL


@dataclass
class ALDSParams:
    target: float = 0.5
    """Fraction of parameters removed (after the last compression step): of the decomposable layers' weights,
    or of all the model's parameters with ``target_of = "model"``."""
    target_of: Literal["layers", "model"] = "layers"
    """What ``target`` is a fraction of: the decomposable weights, or every parameter of the model (the paper's
    CR-P: biases, BatchNorm and excluded layers count, and stay, so the layers give up the whole target)."""
    compress_at: list[int] = field(default_factory=lambda: [1])
    """Rounds whose broadcast is compressed anew. With several, the kept fraction follows the geometric
    schedule (1 − target)^(i/m) at the i-th of m steps: the paper's iterative compress-retrain."""
    final: bool = False
    """Also compress the final model after the last round (``compress_at = []``: only the final model)."""
    max_k: int = 8
    """Largest number of input-channel subspaces searched per layer (0: every divisor, the authors' code)."""
    seeds: int = 15
    """Initializations of Algorithm 1: the authors' code uses 15 (its iterative allocator's ``_num_seeds``: the
    uniform k = 3, 5, 7, 9 and random ones), each alternated 4 times; here plain SVD (k = 1) is the first of them."""
    exclude: list[str] = field(default_factory=list)
    """fnmatch patterns of layers never decomposed (e.g. the first conv)."""
    plus: bool = False
    """ALDS+ (supplement A.6): also search the folding schemes 1–3 for every conv with a spatial kernel."""
    error: ErrorKind = "true"
    """The layer error Algorithm 1 equalizes: "true" ‖W − Ŵ‖₂/‖W‖₂ (exact), "bound" √Σσ²_{j+1}(W_i)/‖W‖₂
    (an upper bound), "tabulated" max σ_{j+1}(W_i)/‖W‖₂ (the authors' code; flatters large k)."""
    allocation: Literal["alds", "k1", "fixed_k", "uniform_svd"] = "alds"
    """How the budget is spread: "alds" (Algorithm 1), or the paper's ablation baselines (supplement Fig. 10):
    "k1" (OptimalRanks with one subspace per layer: plain SVD at the allocated ranks), "fixed_k" (OptimalRanks
    with ``k`` subspaces in every layer), "uniform_svd" (k = 1, the same fraction of every layer's rank)."""
    k: int = 3
    """Subspaces per layer for ``allocation = "fixed_k"`` (each layer's nearest divisor of its input channels)."""

    def schedule_problem(self, rounds: int) -> str:
        late = [r for r in self.compress_at if r > rounds]
        if late:
            return f"compress_at = {late} is after the last round ({rounds}): those rounds never come"
        return ""

    def validate(self, path: str) -> None:
        require(0 < self.target < 1, f"{path}.target", "a fraction of parameters removed in (0, 1)")
        rounds = self.compress_at
        require(all(r >= 1 for r in rounds), f"{path}.compress_at", "rounds >= 1")
        require(rounds == sorted(set(rounds)), f"{path}.compress_at", "strictly increasing rounds")
        require(bool(rounds) or self.final, f"{path}.compress_at", "at least one round, or final = true")
        require(self.max_k >= 0, f"{path}.max_k", "an integer >= 1, or 0 for every divisor")
        require(self.target_of in ("layers", "model"), f"{path}.target_of", '"layers" or "model"')
        require(self.seeds >= 1, f"{path}.seeds", "an integer >= 1")
        require(self.error in ("true", "bound", "tabulated"), f"{path}.error", '"true", "bound" or "tabulated"')
        require(self.allocation in ("alds", "k1", "fixed_k", "uniform_svd"), f"{path}.allocation",
                '"alds", "k1", "fixed_k" or "uniform_svd"')  # fmt: skip
        require(self.k >= 1, f"{path}.k", "an integer >= 1 (subspaces per layer)")
        require(self.k == 3 or self.allocation == "fixed_k", f"{path}.k", 'set only with allocation = "fixed_k"')
        require(not self.plus or self.allocation == "alds", f"{path}.plus",
                'false unless allocation = "alds" (the baselines decompose in the plain folding)')  # fmt: skip


@MODEL_COMPRESSORS.register(
    "alds", "ALDS: per-layer low-rank factorization with automatic ranks; the federation trains the factors on"
)
class ALDSCompressor(ModelCompressor):
    """Compress at the chosen rounds (the factorized model is then broadcast and trained), or the final model.

    Federated adaptation: the paper compresses a trained network and
    retrains it centrally (iteratively for higher ratios); here the global
    model is compressed at the server at the chosen rounds and the clients
    go on training the factorized network, so the retraining is the
    federation's own rounds.

    The broadcast carries the factors dense (fp32) with the structure edits
    that rebuild the factorized layers. A later step works on the dense
    operators the current factors compute (:func:`recompose`), so each step
    re-runs Algorithm 1 over the whole network at the schedule's budget,
    always relative to the original layers' parameter count.
    """

    name = "alds"
    Params = ALDSParams

    def __init__(self, params: ALDSParams | None, arch: Architecture, seed: int = 0) -> None:
        super().__init__(params, arch, seed)
        self.layers = [
            (name, m)
            for name, m in arch.base_layers()
            if not any(fnmatch.fnmatchcase(name, p) for p in self.params.exclude)
        ]
        if not self.layers:
            raise ValueError("server_compression: ALDS found no Conv2d or Linear layer to decompose")
        self.dense_params = sum(m.weight.numel() for _, m in self.layers)
        self.model_params = sum(p.numel() for p in arch.build().parameters())
        if self.params.target_of == "model" and self.budget(1 - self.params.target) <= 0:
            raise ConfigError(
                f"server_compression.target = {self.params.target} of the model's {self.model_params:,} parameters "
                f"removes more than its decomposable weights hold ({self.dense_params:,}): lower it"
            )
        self.allocation: dict[str, float] = {}
        """The last compression's metrics (max error, parameters kept), reported in every later round."""

    def budget(self, keep: float) -> int:
        """The decomposable weights' parameter budget when ``keep`` of the target's parameters stay."""
        if self.params.target_of == "layers":
            return int(keep * self.dense_params)
        return int(keep * self.model_params) - (self.model_params - self.dense_params)

    def keep_fraction(self, server_round: int) -> float:
        rounds = self.params.compress_at
        steps = len(rounds) or 1
        done = rounds.index(server_round) + 1 if server_round in rounds else steps
        return (1 - self.params.target) ** (done / steps)

    def compress(self, state: State, structure: Structure, keep: float) -> tuple[State, Structure, dict[str, float]]:
        """Algorithm 1 at ``keep`` × the original parameters, applied to the dense operators of ``state``."""
        edits = {e.layer: e for e in structure}
        weights: dict[str, np.ndarray] = {}
        biases: dict[str, torch.Tensor | None] = {}
        for name, _ in self.layers:
            e = edits.get(name)
            if e is not None and e.op == "alds":
                enc = state[f"{name}.encoder.weight"].double().numpy()
                dec = state[f"{name}.decoder.weight"].double().numpy()
                weights[name] = recompose(enc, dec, e.args[0], e.args[2])
                biases[name] = state.get(f"{name}.decoder.bias")
            else:
                weights[name] = state[f"{name}.weight"].double().numpy()
                biases[name] = state.get(f"{name}.bias")
        p = self.params
        schemes = SCHEMES if p.plus else (0,)
        # the subspace counts each allocation can use (fixed_k: every divisor up to 2k holds the nearest to k)
        max_k = {"alds": p.max_k, "k1": 1, "uniform_svd": 1, "fixed_k": 2 * p.k}[p.allocation]
        tables = [tabulate(n, w, max_k, schemes, p.error) for n, w in weights.items()]
        budget = self.budget(keep)
        if p.allocation == "alds":
            alloc = allocate(tables, budget, p.seeds, rng_seed=self.seed)
        elif p.allocation == "uniform_svd":
            alloc = uniform_svd(tables, budget)
        else:
            alloc = fixed_k_allocation(tables, budget, 1 if p.allocation == "k1" else p.k)
        new_edits = {e.layer: e for e in structure if e.layer not in weights}
        fresh: dict[str, Any] = {}
        for name, w in weights.items():
            choice = alloc.choice[name]
            if choice is None:
                fresh[f"{name}.weight"] = w
                fresh[f"{name}.bias"] = biases[name]
            else:
                new_edits[name] = Edit("alds", name, choice)
                fresh[f"{name}.encoder.weight"], fresh[f"{name}.decoder.weight"] = decompose(w, *choice)
                fresh[f"{name}.decoder.bias"] = biases[name]
        order = {name: i for i, (name, _) in enumerate(self.arch.base_layers())}
        new_structure = tuple(sorted(new_edits.values(), key=lambda e: order.get(e.layer, -1)))
        new_state: State = OrderedDict()
        for key, ref in self.arch.build(new_structure).state_dict().items():
            value = fresh[key] if key in fresh else state[key]
            new_state[key] = torch.as_tensor(value).reshape(ref.shape).to(ref.dtype)
        metrics = {
            "alds_max_error": alloc.max_error,
            "alds_params_kept": alloc.params / self.dense_params,
            "alds_model_params_kept": (alloc.params + self.model_params - self.dense_params) / self.model_params,
        }
        return new_state, new_structure, metrics

    @classmethod
    def broadcasts_dense_model(cls, params: Any) -> bool:
        return not params.compress_at

    def broadcast(self, server_round: int, state: State, structure: Structure) -> Broadcast:
        metrics: dict[str, float] = {}
        if server_round in self.params.compress_at:
            state, structure, metrics = self.compress(state, structure, self.keep_fraction(server_round))
            self.allocation = dict(metrics)
        return Broadcast(dense_payload(self.name, state, structure), state, structure, metrics)

    def end_of_round(self, server_round: int, state: State, structure: Structure, last: bool) -> Snapshot:
        if not (last and self.params.final):
            snapshot = super().end_of_round(server_round, state, structure, last)
            snapshot.metrics.update(self.allocation)  # every row after a compression says what the model is
            return snapshot
        new_state, new_structure, metrics = self.compress(state, structure, 1 - self.params.target)
        payload = dense_payload(self.name, new_state, new_structure)
        return Snapshot(new_state, new_structure, metrics, payload, is_global=False)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.allocation)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.allocation = {k: float(v) for k, v in state.items() if k.startswith("alds_")}

    def decode_body(self, parsed: Payload, structure: Structure) -> Received:
        return Received(read_whole(parsed), structure)
