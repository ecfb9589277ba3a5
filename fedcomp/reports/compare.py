"""When a difference between two groups of seeds counts, who comes first, and who is Pareto-optimal.

The rule, one for the whole report. When two groups ran the same seeds (a
sweep's runs: the same partitions and sampling per seed), they are compared
**paired**: they differ *beyond noise* when the mean of the per-seed
differences lies outside its 95% t-interval's half-width, t₀.₉₇₅,ₙ₋₁ ·
sd(d)/√n (the paired t-test at 5%). Otherwise the difference of their means
must be larger than the larger of their seed standard deviations (sample
standard deviation, n − 1; a group of one seed has none and does not
count). So a lower mean never wins on its spread alone: with paired seeds
the question is whether one is better seed by seed. Byte counts also tie
when they are within :data:`BYTES_TIE_FRACTION` of the smaller one: nobody
picks a method to save 0.3% of the bytes, however repeatable that saving
is.

With one seed in both groups there is no spread to judge by: a first place
is then said to *lead*, never to *win*, and the frontier compares the point
values (its stars are only as good as single runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

BYTES_TIE_FRACTION = 0.05

Verdict = Literal["wins", "tie", "leads", "only", "none"]


@dataclass(frozen=True)
class Entry:
    """One group's values of one quantity, one per seed (every one known)."""

    label: str
    values: tuple[float, ...]
    seeds: tuple[int, ...] = ()
    """The seed of each value (same order), when known: two entries with the same seeds compare paired."""

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n − 1); None for a single seed."""
        n = len(self.values)
        if n < 2:
            return None
        return math.sqrt(sum((v - self.mean) ** 2 for v in self.values) / (n - 1))


def noise(a: Entry, b: Entry) -> float | None:
    """The larger seed standard deviation of the two; None if neither group has two seeds."""
    spreads = [e.std for e in (a, b) if e.std is not None]
    return max(spreads) if spreads else None


# Student's t, two-sided 95% (0.975 quantile), by degrees of freedom; beyond 30: the normal's 1.96.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def paired_differences(a: Entry, b: Entry) -> tuple[float, ...] | None:
    """``a − b`` seed by seed when both ran the same (at least two) seeds, else None."""
    if len(a.seeds) != len(a.values) or len(b.seeds) != len(b.values) or len(a.seeds) < 2:
        return None
    if sorted(a.seeds) != sorted(b.seeds) or len(set(a.seeds)) != len(a.seeds):
        return None
    of_b = dict(zip(b.seeds, b.values, strict=True))
    return tuple(v - of_b[s] for s, v in sorted(zip(a.seeds, a.values, strict=True)))


def differs(a: Entry, b: Entry, relative: float = 0.0) -> bool | None:
    """True beyond noise, False within it, None when there is no spread to judge by (one seed each).

    ``relative``: differences up to this fraction of the smaller mean are ties whatever the spread.
    """
    diff = abs(a.mean - b.mean)
    if diff <= relative * min(abs(a.mean), abs(b.mean)):
        return False
    d = paired_differences(a, b)
    if d is not None:
        n = len(d)
        mean = sum(d) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        t = T975[n - 2] if n - 1 <= len(T975) else 1.96
        return abs(mean) > t * sd / math.sqrt(n) if sd > 0 else mean != 0
    spread = noise(a, b)
    return None if spread is None else diff > spread


@dataclass(frozen=True)
class Ranking:
    order: tuple[Entry, ...]
    """Best first."""
    tied: tuple[str, ...]
    """The first and every group within noise of it."""
    verdict: Verdict
    """``wins`` (beyond noise of every other), ``tie``, ``leads`` (no spread to judge the runner-up by),
    ``only`` (no other group to compare with), ``none`` (no group)."""


def rank(entries: list[Entry], higher_is_better: bool, relative: float = 0.0) -> Ranking:
    if not entries:
        return Ranking((), (), "none")
    order = tuple(sorted(entries, key=lambda e: -e.mean if higher_is_better else e.mean))
    first, rest = order[0], order[1:]
    if not rest:
        return Ranking(order, (first.label,), "only")
    judged = [differs(first, e, relative) for e in rest]
    tied = (first.label, *(e.label for e, d in zip(rest, judged, strict=True) if d is False))
    verdict: Verdict = "tie" if len(tied) > 1 else "leads" if None in judged else "wins"
    return Ranking(order, tied, verdict)


def pareto_front(points: list[tuple[Entry, Entry]]) -> list[int]:
    """Indices of the (bytes, accuracy) points that no other point beats beyond noise.

    j beats i when j is not worse in either (fewer bytes, or a tie in bytes; higher accuracy, or a tie
    in accuracy) and better beyond noise in one. Without a spread (one seed each) a point difference
    counts, except in bytes within :data:`BYTES_TIE_FRACTION`.
    """

    def beats(j: int, i: int) -> bool:
        (bj, aj), (bi, ai) = points[j], points[i]
        fewer = differs(bj, bi, BYTES_TIE_FRACTION) is not False and bj.mean < bi.mean
        more = differs(bj, bi, BYTES_TIE_FRACTION) is not False and bj.mean > bi.mean
        better = differs(aj, ai) is not False and aj.mean > ai.mean
        worse = differs(aj, ai) is not False and aj.mean < ai.mean
        return not more and not worse and (fewer or better)

    return [i for i in range(len(points)) if not any(beats(j, i) for j in range(len(points)) if j != i)]
