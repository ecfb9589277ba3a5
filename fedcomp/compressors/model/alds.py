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

import fnmatch
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedcomp.coding import Payload
from fedcomp.compressors.model import MODEL_COMPRESSORS
from fedcomp.compressors.model.base import (
    Broadcast,
    ModelCompressor,
    Received,
    Snapshot,
    State,
    dense_payload,
    read_whole,
)
from fedcomp.compressors.model.structure import Architecture, Edit, Structure, structure_op
from fedcomp.config import require


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
    """A conv layer as ALDS rebuilds it: grouped conv c → j·k (original kernel) then 1×1 conv j·k → f.

    ``weights=False`` builds the empty shell a receiver loads a broadcast into.
    """

    def __init__(self, conv: nn.Conv2d, k: int, j: int, weights: bool = True) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError("ALDS decomposes ungrouped convolutions only")
        _check_kj(conv.out_channels, conv.in_channels, math.prod(conv.kernel_size), k, j)
        like = {"dtype": conv.weight.dtype, "device": conv.weight.device}
        self.encoder = nn.Conv2d(
            conv.in_channels, k * j, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=k, bias=False,
            **like,
        )  # fmt: skip
        self.decoder = nn.Conv2d(k * j, conv.out_channels, 1, bias=conv.bias is not None, **like)
        if weights:
            enc, dec = decompose(conv.weight.detach().cpu().numpy(), k, j)
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
    """Structure edit ``alds`` with args (k, j): the layer's ALDS shell."""
    if len(args) != 2:
        raise ValueError(f"expects (k, j), got {args}")
    if isinstance(layer, nn.Conv2d):
        return ALDSConv2d(layer, *args, weights=False)
    if isinstance(layer, nn.Linear):
        return ALDSLinear(layer, *args, weights=False)
    raise ValueError(f"{type(layer).__name__} is not a Conv2d or Linear layer")


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


# ----------------------------------------------------------------------------- ALDS in FL


@dataclass
class ALDSParams:
    target: float = 0.5
    """Fraction of the decomposable layers' parameters removed (after the last compression step)."""
    compress_at: list[int] = field(default_factory=lambda: [1])
    """Rounds whose broadcast is compressed anew. With several, the kept fraction follows the geometric
    schedule (1 − target)^(i/m) at the i-th of m steps: the paper's iterative compress-retrain."""
    final: bool = False
    """Also compress the final model after the last round (``compress_at = []``: only the final model)."""
    max_k: int = 8
    """Largest number of input-channel subspaces searched per layer."""
    seeds: int = 15
    """Initializations of Algorithm 1 (the paper uses 15)."""
    exclude: list[str] = field(default_factory=list)
    """fnmatch patterns of layers never decomposed (e.g. the first conv)."""

    def validate(self, path: str) -> None:
        require(0 < self.target < 1, f"{path}.target", "a fraction of parameters removed in (0, 1)")
        rounds = self.compress_at
        require(all(r >= 1 for r in rounds), f"{path}.compress_at", "rounds >= 1")
        require(rounds == sorted(set(rounds)), f"{path}.compress_at", "strictly increasing rounds")
        require(bool(rounds) or self.final, f"{path}.compress_at", "at least one round, or final = true")
        require(self.max_k >= 1, f"{path}.max_k", "an integer >= 1")
        require(self.seeds >= 1, f"{path}.seeds", "an integer >= 1")


@MODEL_COMPRESSORS.register("alds", "ALDS: per-layer low-rank factorization with automatic ranks, trained on")
class ALDSCompressor(ModelCompressor):
    """Compress at the chosen rounds (the factorized model is then broadcast and trained), or the final model.

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
                weights[name] = recompose(enc, dec, e.args[0])
                biases[name] = state.get(f"{name}.decoder.bias")
            else:
                weights[name] = state[f"{name}.weight"].double().numpy()
                biases[name] = state.get(f"{name}.bias")
        tables = [tabulate(n, w, self.params.max_k) for n, w in weights.items()]
        alloc = allocate(tables, int(keep * self.dense_params), self.params.seeds, rng_seed=self.seed)
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
        metrics = {"alds_max_error": alloc.max_error, "alds_params_kept": alloc.params / self.dense_params}
        return new_state, new_structure, metrics

    def broadcast(self, server_round: int, state: State, structure: Structure) -> Broadcast:
        metrics: dict[str, float] = {}
        if server_round in self.params.compress_at:
            state, structure, metrics = self.compress(state, structure, self.keep_fraction(server_round))
        return Broadcast(dense_payload(self.name, state, structure), state, structure, metrics)

    def end_of_round(self, server_round: int, state: State, structure: Structure, last: bool) -> Snapshot:
        if not (last and self.params.final):
            return super().end_of_round(server_round, state, structure, last)
        new_state, new_structure, metrics = self.compress(state, structure, 1 - self.params.target)
        payload = dense_payload(self.name, new_state, new_structure)
        return Snapshot(new_state, new_structure, metrics, payload, is_global=False)

    def decode_body(self, parsed: Payload, structure: Structure) -> Received:
        return Received(read_whole(parsed), structure)
