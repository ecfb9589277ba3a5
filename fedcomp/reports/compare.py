"""When a difference between two groups of seeds counts, who comes first, and who is Pareto-optimal.

The rule, one for the whole report: two groups differ *beyond noise* when
the difference of their means is larger than the larger of their seed
standard deviations (sample standard deviation, n − 1; a group of one seed
has none and does not count). Byte counts also tie when they are within
:data:`BYTES_TIE_FRACTION` of the smaller one: nobody picks a method to save
0.3% of the bytes, however repeatable that saving is.

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


def differs(a: Entry, b: Entry, relative: float = 0.0) -> bool | None:
    """True beyond noise, False within it, None when there is no spread to judge by (one seed each).

    ``relative``: differences up to this fraction of the smaller mean are ties whatever the spread.
    """
    diff = abs(a.mean - b.mean)
    if diff <= relative * min(abs(a.mean), abs(b.mean)):
        return False
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
