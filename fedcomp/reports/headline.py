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
  :func:`fedcomp.reports.table.default_target`), asked three times: both
  directions together, the uplink alone and the downlink alone ("which
  uplink?" has its own answer even when a dense downlink dominates the total).
- **Simulated time to a target** (only when the runs carry a ``[network]``
  clock): the simulated clock at that same first round, ranked as bytes are
  (ties within 5% too): the network model's answer to "which gets there
  first on these links?", a model and not a measurement.
- Only complete runs count, one per seed (:attr:`RunGroup.counted`): a group
  with partial runs only is named as left out, never ranked.
- A group takes part only if every one of its seeds has a value (an
  evaluated round within the budget; the target reached); the others are
  named with how many seeds did.
- Ties and wins follow :mod:`fedcomp.reports.compare`: paired per-seed
  differences where the groups ran the same seeds, else the difference of the
  means against the larger seed standard deviation (bytes also tie within 5%).
- The **bottom line** (:func:`bottom_line`) is one plain sentence: the
  compressed method with the fewest total bytes among those within one
  point of dense accuracy, and its factor in each direction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fedcomp.reports.compare import BYTES_TIE_FRACTION, Entry, Ranking, rank
from fedcomp.reports.curves import Direction, accuracy_within, first_reach, shipped_curve
from fedcomp.reports.runs import RunGroup, RunRecord
from fedcomp.reports.units import human_seconds, short_bytes
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
    direction: Direction | Literal["time"] = "total"
    """Which bytes count: both directions, or the uplink or the downlink alone; ``time``: simulated seconds."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value,
            "direction": self.direction,
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
            which = {"total": "bytes (both directions)", "uplink": "uplink bytes", "downlink": "downlink bytes"}
            ask, what, value = (
                f"To reach accuracy {self.value:.4g}",
                f"needs the fewest {which[self.direction]}" if self.direction != "time" else
                "needs the least simulated time ([network] model)",
                _bytes if self.direction != "time" else _seconds,
            )  # fmt: skip
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
    bottom_line: str = ""
    """One plain sentence (:func:`bottom_line`)."""
    left_out: list[str] = field(default_factory=list)
    """Groups with no complete run: named, never ranked."""

    @property
    def questions(self) -> list[Question]:
        return self.budgets + self.targets

    def lines(self) -> list[str]:
        out = [self.bottom_line] if self.bottom_line else []
        out += [q.sentence() for q in self.questions]
        if self.left_out:
            out.append("Not counted (no complete run): " + ", ".join(self.left_out) + ".")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "budget_source": self.budget_source,
            "bottom_line": self.bottom_line,
            "left_out": self.left_out,
            "budgets": [q.as_dict() for q in self.budgets],
            "targets": [q.as_dict() for q in self.targets],
            "lines": self.lines(),
        }


def default_budgets(groups: list[RunGroup]) -> list[float]:
    """Each group's largest total over its seeds, ascending.

    A budget within 5% below a larger one asks the same question and is merged into it (the larger is
    kept, so that every run of both groups fits).
    """
    totals = sorted({max(_total(r) for r in g.counted) for g in groups if g.counted}, reverse=True)
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
        if not g.counted:
            continue
        values = [accuracy_within(r, budget) for r in g.counted]
        known = tuple(v for v in values if v is not None)
        if len(known) == len(values):
            entries.append(Entry(g.label, known, tuple(r.seed for r in g.counted)))
        else:
            incomplete.append((g.label, len(known), len(values)))
    return Question("budget", budget, rank(entries, higher_is_better=True), incomplete)


def target_question(
    groups: list[RunGroup], target: float, direction: Direction | Literal["time"] = "total"
) -> Question:
    """Who reaches ``target`` with the fewest bytes of ``direction`` (``time``: in the least simulated time; a
    group without any clock is left out, a run that reached it at a round without one counts as not reached)."""
    entries, incomplete, rounds = [], [], {}
    for g in groups:
        if not g.counted:
            continue
        if direction == "time" and not any(p.sim_s is not None for r in g.counted for p in shipped_curve(r)):
            continue  # no clock at all (a mixed report): not a method that missed the target
        reached = [first_reach(r, target) for r in g.counted]
        if direction == "time":
            reached = [p if p is not None and p.sim_s is not None else None for p in reached]
        known = [p for p in reached if p is not None]
        seeds = tuple(r.seed for r in g.counted)
        if len(known) == len(reached):
            values = (p.sim_s if direction == "time" else p.spent(direction) for p in known)
            entries.append(Entry(g.label, tuple(float(v or 0.0) for v in values), seeds))
            rounds[g.label] = Entry(g.label, tuple(float(p.round) for p in known), seeds)
        else:
            incomplete.append((g.label, len(known), len(reached)))
    ranking = rank(entries, higher_is_better=False, relative=BYTES_TIE_FRACTION)
    return Question("target", target, ranking, incomplete, rounds, direction)


DIRECTIONS: tuple[Direction, ...] = ("total", "uplink", "downlink")


def make_headline(groups: list[RunGroup], targets: Sequence[float], budgets: Sequence[float] | None = None) -> Headline:
    if budgets:
        chosen, source = sorted(budgets), "given"
    else:
        chosen, source = default_budgets(groups), "each method's total bytes over its whole run (largest seed)"
    clock = any(p.sim_s is not None for g in groups for r in g.counted for p in shipped_curve(r))
    directions: tuple[Direction | Literal["time"], ...] = (*DIRECTIONS, "time") if clock else DIRECTIONS
    return Headline(
        [budget_question(groups, b) for b in chosen],
        [target_question(groups, t, d) for t in targets for d in directions],
        source,
        bottom_line(groups),
        [g.label for g in groups if not g.counted],
    )


WITHIN = 0.01
"""How close to dense accuracy counts as "as good" for the bottom line: one point."""


def is_dense(group: RunGroup) -> bool:
    """Nothing compressed in either direction: the reference every compression is measured against."""
    return all(str((group.config.get(s) or {}).get("name", "identity")) == "identity"
               for s in ("uplink", "downlink", "server_compression"))  # fmt: skip


def bottom_line(groups: list[RunGroup]) -> str:
    """One plain sentence: which compressed method reaches within a point of dense with the fewest bytes."""
    counted = [g for g in groups if g.counted]
    dense_groups = [g for g in counted if is_dense(g)]
    if not dense_groups:
        return "No dense run to measure against: add one (uplink, downlink and server compression all identity)."
    if len(dense_groups) > 1:  # they differ in another key (a learning rate): which one is "dense" is not ours to pick
        return "Several dense groups differ in other keys: report one setting at a time for a bottom line."
    dense = dense_groups[0]
    ref = _mean([_final(r) for r in dense.counted])
    if ref is None:
        return "The dense run has no evaluated accuracy to measure against."
    best: tuple[float, RunGroup, float] | None = None
    for g in counted:
        acc = _mean([_final(r) for r in g.counted])
        if is_dense(g) or acc is None or acc < ref - WITHIN:
            continue
        ratio = _mean([_total(r) for r in dense.counted]) / max(_mean([_total(r) for r in g.counted]) or 1.0, 1.0)
        if best is None or ratio > best[0]:
            best = (ratio, g, acc)
    if best is None:
        return f"No compressed method comes within {WITHIN * 100:.0f} point of dense accuracy ({ref:.3f})."
    ratio, g, acc = best
    up, down = (_mean([_spent(r, d) for r in dense.counted]) / max(_mean([_spent(r, d) for r in g.counted]) or 1, 1)
                for d in ("uplink", "downlink"))  # fmt: skip
    return (
        f"{g.label} reaches within {WITHIN * 100:.0f} point of dense accuracy ({acc:.3f} against {ref:.3f}) with "
        f"{ratio:,.1f}× fewer bytes in both directions ({up:,.1f}× uplink, {down:,.1f}× downlink)."
    )


def _final(run: RunRecord) -> float | None:
    accs = [r["test_accuracy"] for r in run.rows if r.get("test_accuracy") is not None]
    return float(accs[-1]) if accs else None


def _spent(run: RunRecord, direction: str) -> float:
    return float(sum(int(r[f"{direction}_bytes"]) for r in run.rows))


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _accuracy(e: Entry) -> str:
    return f"{e.mean:.3f}" + (f" ± {e.std:.3f}" if e.std is not None else "")


def _bytes(e: Entry) -> str:
    return human_bytes(e.mean) + (f" ± {short_bytes(e.std)}" if e.std else "")


def _seconds(e: Entry) -> str:
    return human_seconds(e.mean) + (f" ± {human_seconds(e.std)}" if e.std else "")


def _rounds(e: Entry) -> str:
    return f"{e.mean:.3g}" + (f" ± {e.std:.2g}" if e.std else "")
