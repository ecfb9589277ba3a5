"""Bounding one client's influence: an update-norm bound usable with any strategy.

FedAvg is not Byzantine-robust: one client's update Δ_c enters the
average with weight n_c/Σn, so a well-formed update of any size within
``max_abs_value`` moves the model as far as its sender wants
(docs/threat_model.md). :class:`NormBound` limits the Euclidean norm
‖Δ_c‖₂ (over every floating-point tensor of the decoded update) before
the inner strategy sees it, with a limit that is

- relative: τ = ``factor`` × median_c ‖Δ_c‖₂, the median over the round's
  accepted updates (with fewer than half of them hostile the median is an
  honest client's norm, so τ follows the honest scale as training
  converges; with two clients the median is their mean and gives no
  protection: use the absolute bound), or
- absolute: τ = ``max_norm``, or
- both: the smaller of the two.

``clip`` scales an update beyond τ down to norm τ,
Δ_c ← Δ_c · τ/‖Δ_c‖₂ (norm clipping as in Sun et al. 2019, "Can you really
backdoor federated learning?", and DP-FedAvg, McMahan et al. 2018, with an
adaptive τ); ``reject`` drops it and the round records the client's
failure. The bound caps how far one client moves the average (at most
n_c/Σn · τ), it does not make a hostile update honest: clipped, its
direction still counts.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

MODES = ("clip", "reject")


@dataclass(frozen=True)
class NormBound:
    """The bound (see the module docstring): ``mode`` clip or reject, τ = min(factor × median, max_norm)."""

    mode: Literal["clip", "reject"] = "clip"
    factor: float = 3.0
    """τ relative to the round's median update norm; 0 = no relative bound."""
    max_norm: float = 0.0
    """An absolute τ; 0 = none."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"NormBound mode must be one of {MODES}, got {self.mode!r}")
        for name in ("factor", "max_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"NormBound {name} must be a finite number >= 0, got {value!r}")
        if self.factor == 0 and self.max_norm == 0:
            raise ValueError("NormBound needs a factor (× the round's median norm) or a max_norm, or both")
        if 0 < self.factor < 1:
            raise ValueError(
                f"NormBound factor must be >= 1 (below it the median client is clipped), got {self.factor}"
            )

    def describe(self) -> str:
        parts = [f"{self.factor:g} × the round's median norm"] if self.factor > 0 else []
        if self.max_norm > 0:
            parts.append(f"at most {self.max_norm:g}")
        return ", ".join(parts)

    def limit(self, norms: Sequence[float]) -> float:
        """τ for a round whose accepted updates have these norms."""
        bounds = [self.max_norm] if self.max_norm > 0 else []
        if self.factor > 0 and norms:
            bounds.append(self.factor * statistics.median(norms))
        return min(bounds) if bounds else math.inf


@dataclass
class Bounded:
    """What the bound did to one round's updates."""

    limit: float
    norms: list[float]
    clipped: list[int] = field(default_factory=list)
    """Positions (in the order given) of the updates scaled down to the limit."""
    rejected: dict[int, str] = field(default_factory=dict)
    """Position → why the update was refused."""


def update_norm(update: Mapping[str, torch.Tensor]) -> float:
    """‖Δ‖₂ over the update's floating-point tensors (in float64: a sum of squares of 10⁷ values near 10⁶)."""
    total = sum(float(v.double().square().sum()) for v in update.values() if v.is_floating_point())
    return math.sqrt(total)


def apply_bound(bound: NormBound, updates: Sequence[dict[str, torch.Tensor]]) -> Bounded:
    """Clip (in place) or mark for rejection every update whose norm exceeds the round's τ."""
    norms = [update_norm(u) for u in updates]
    limit = bound.limit(norms)
    out = Bounded(limit, norms)
    for i, (update, norm) in enumerate(zip(updates, norms, strict=True)):
        if norm <= limit:
            continue
        if bound.mode == "reject":
            out.rejected[i] = f"update norm {norm:.4g} exceeds the bound {limit:.4g} ({bound.describe()})"
            continue
        scale = limit / norm
        for name, value in update.items():
            if value.is_floating_point():
                update[name] = value * scale
        out.clipped.append(i)
    return out
