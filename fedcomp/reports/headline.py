"""The report's answer, before any table: at each budget, which method reaches the highest accuracy;
at each target accuracy, which needs the fewest bytes. Bytes are both directions together.

- **Budgets** (unless given with ``--budget``): each group's total bytes, the
  largest over its seeds, so that every run of the group fits its own budget:
  "with the bytes method X spent on its whole run, who gets furthest?".
  A budget within 5% below a larger one asks the same question and is
  merged into it (the larger kept, so the runs of both fit).
- **Accuracy within a budget**: the best evaluated accuracy among the rounds
  that ended with the run's cumulative bytes at or under it
  (:func:`fedcomp.reports.curves.accuracy_within`).
- **Bytes to a target**: the cumulative bytes at the first evaluated round at
  or above it (the table's target, given or default; see
  :func:`fedcomp.reports.table.default_target`).
- A group takes part only if every one of its seeds has a value (an
  evaluated round within the budget; the target reached); the others are
  named with how many seeds did.
- Ties and wins follow :mod:`fedcomp.reports.compare`: the difference of the
  means against the larger seed standard deviation (bytes also tie within 5%).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fedcomp.reports.compare import BYTES_TIE_FRACTION, Entry, Ranking, rank
from fedcomp.reports.curves import accuracy_within, first_reach
from fedcomp.reports.runs import RunGroup, RunRecord
from fedcomp.reports.units import short_bytes
from fedcomp.servers.app import human_bytes


@dataclass
class Question:
    kind: Literal["budget", "target"]
    value: float
    """The budget in bytes, or the target accuracy."""
    ranking: Ranking
    incomplete: list[tuple[str, int, int]] = field(default_factory=list)
    """Groups left out: (label, seeds with a value, seeds)."""
    rounds: dict[str, Entry] = field(default_factory=dict)
    """For a target: each ranked group's rounds to reach it."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value,
            "verdict": self.ranking.verdict,
            "best": list(self.ranking.tied),
            "order": [
                {"label": e.label, "mean": e.mean, "std": e.std, "values": list(e.values)} for e in self.ranking.order
            ],
            "incomplete": [{"label": lab, "seeds_with_value": k, "seeds": n} for lab, k, n in self.incomplete],
            "rounds": {lab: {"mean": e.mean, "std": e.std, "values": list(e.values)} for lab, e in self.rounds.items()},
        }

    def sentence(self, strong: Callable[[str], str] = str, plain: Callable[[str], str] = str) -> str:
        """One line of text; ``strong`` marks up the first place (and those tied with it), ``plain`` any
        other method's name (HTML escapes it)."""
        if self.kind == "budget":
            ask, what, value = f"Within {human_bytes(self.value)} both ways", "reaches the highest accuracy", _accuracy
            nobody = "no method has an evaluated round within this budget in every seed"
        else:
            ask, what, value = f"To reach accuracy {self.value:.4g}", "needs the fewest bytes", _bytes
            nobody = "no method reached it in every seed"
        r = self.ranking
        if r.verdict == "none":
            text = f"{ask}: {nobody}"
        elif r.verdict == "tie":
            tied = [e for e in r.order if e.label in r.tied]
            text = f"{ask}: " + " and ".join(f"{strong(e.label)} ({value(e)})" for e in tied)
            text += " tie — the differences are within the seeds' spread"
        else:
            first = r.order[0]
            text = f"{ask}: {strong(first.label)} {what}, {value(first)}"
            if self.kind == "target" and first.label in self.rounds:
                text += f" in {_rounds(self.rounds[first.label])} rounds"
            if r.verdict == "leads":
                text += " (one seed each: no spread to call it a win)"
            if r.verdict == "only":
                text += " (the only method with a value in every seed)"
        behind = [e for e in r.order if e.label not in r.tied]
        if behind:
            text += "; then " + ", ".join(f"{plain(e.label)} {value(e)}" for e in behind)
        if self.incomplete:
            verb = "reached it" if self.kind == "target" else "fit it"
            text += "; " + ", ".join(f"{plain(lab)} {verb} in {k} of {n} seeds" for lab, k, n in self.incomplete)
        return text + "."


@dataclass
class Headline:
    budgets: list[Question]
    targets: list[Question]
    budget_source: str

    @property
    def questions(self) -> list[Question]:
        return self.budgets + self.targets

    def as_dict(self) -> dict[str, Any]:
        return {
            "budget_source": self.budget_source,
            "budgets": [q.as_dict() for q in self.budgets],
            "targets": [q.as_dict() for q in self.targets],
            "lines": [q.sentence() for q in self.questions],
        }


def default_budgets(groups: list[RunGroup]) -> list[float]:
    """Each group's largest total over its seeds, ascending.

    A budget within 5% below a larger one asks the same question and is merged into it (the larger is
    kept, so that every run of both groups fits).
    """
    totals = sorted({max(_total(r) for r in g.runs) for g in groups if g.runs}, reverse=True)
    kept: list[float] = []
    for t in totals:
        if t > 0 and (not kept or t * (1 + BYTES_TIE_FRACTION) < kept[-1]):
            kept.append(t)
    return kept[::-1]


def _total(run: RunRecord) -> float:
    return float(sum(int(r["uplink_bytes"]) + int(r["downlink_bytes"]) for r in run.rows))


def budget_question(groups: list[RunGroup], budget: float) -> Question:
    entries, incomplete = [], []
    for g in groups:
        values = [accuracy_within(r, budget) for r in g.runs]
        known = tuple(v for v in values if v is not None)
        if len(known) == len(values):
            entries.append(Entry(g.label, known))
        else:
            incomplete.append((g.label, len(known), len(values)))
    return Question("budget", budget, rank(entries, higher_is_better=True), incomplete)


def target_question(groups: list[RunGroup], target: float) -> Question:
    entries, incomplete, rounds = [], [], {}
    for g in groups:
        reached = [first_reach(r, target) for r in g.runs]
        known = [p for p in reached if p is not None]
        if len(known) == len(reached):
            entries.append(Entry(g.label, tuple(float(p.total) for p in known)))
            rounds[g.label] = Entry(g.label, tuple(float(p.round) for p in known))
        else:
            incomplete.append((g.label, len(known), len(reached)))
    ranking = rank(entries, higher_is_better=False, relative=BYTES_TIE_FRACTION)
    return Question("target", target, ranking, incomplete, rounds)


def make_headline(groups: list[RunGroup], targets: Sequence[float], budgets: Sequence[float] | None = None) -> Headline:
    if budgets:
        chosen, source = sorted(budgets), "given"
    else:
        chosen, source = default_budgets(groups), "each method's total bytes over its whole run (largest seed)"
    return Headline(
        [budget_question(groups, b) for b in chosen],
        [target_question(groups, t) for t in targets],
        source,
    )


def _accuracy(e: Entry) -> str:
    return f"{e.mean:.3f}" + (f" ± {e.std:.3f}" if e.std is not None else "")


def _bytes(e: Entry) -> str:
    return human_bytes(e.mean) + (f" ± {short_bytes(e.std)}" if e.std else "")


def _rounds(e: Entry) -> str:
    return f"{e.mean:.3g}" + (f" ± {e.std:.2g}" if e.std else "")
