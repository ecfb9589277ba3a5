"""A run's accuracy against what it has spent so far: the curve every comparison in a report reads.

One point per evaluated round: the round, its test accuracy, and the bytes
sent up to the end of that round, uplink, downlink and both together
(payload lengths as ``rounds.jsonl`` records them). Rounds without an
evaluation still add their bytes to the next point.

:func:`shipped_curve` keeps only the points that evaluated the model a run
ships: where a server compressor evaluated a compressed model in some rows
(LC's Δ(Θ) every round, a final-only UDFC or ALDS in the last), the other
rows evaluated the uncompressed global model, which nobody receives; a
"best accuracy" or "accuracy within a budget" read from them would credit
the run with a model it never delivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedcomp.reports.runs import RunRecord

Direction = Literal["total", "uplink", "downlink"]


@dataclass(frozen=True)
class Point:
    round: int
    accuracy: float
    uplink: int
    """Cumulative uplink bytes (all clients) at the end of the round."""
    downlink: int
    sim_s: float | None = None
    """The simulated clock at the end of the round (``[network]``: ``sim_clock_s``); None without a network model."""

    @property
    def total(self) -> int:
        return self.uplink + self.downlink

    def spent(self, direction: Direction) -> int:
        return self.total if direction == "total" else self.uplink if direction == "uplink" else self.downlink


def curve(run: RunRecord) -> list[Point]:
    out, up, down = [], 0, 0
    for r in run.rows:
        up += int(r["uplink_bytes"])
        down += int(r["downlink_bytes"])
        if r.get("test_accuracy") is not None:
            clock = r.get("sim_clock_s")
            sim = float(clock) if isinstance(clock, int | float) and not isinstance(clock, bool) else None
            out.append(Point(int(r["round"]), float(r["test_accuracy"]), up, down, sim))
    return out


def shipped_curve(run: RunRecord) -> list[Point]:
    """The points of :func:`curve` that evaluated the model the run ships (module docstring)."""
    points = curve(run)
    compressed = {int(r["round"]) for r in run.rows if "global_test_accuracy" in (r.get("server_metrics") or {})}
    return [p for p in points if p.round in compressed] if compressed else points


def accuracy_within(run: RunRecord, budget: float, direction: Direction = "total") -> float | None:
    """The best accuracy among the evaluated rounds that ended within ``budget`` bytes; None if none did.

    The best, not the last: the run could have stopped at that round and kept that model, and it makes
    "accuracy within B ≥ T" the same statement as "bytes to reach T ≤ B".
    """
    accs = [p.accuracy for p in shipped_curve(run) if p.spent(direction) <= budget]
    return max(accs) if accs else None


def first_reach(run: RunRecord, target: float) -> Point | None:
    """The first evaluated round at or above ``target``; None if the run never got there."""
    return next((p for p in shipped_curve(run) if p.accuracy >= target), None)
