"""``fedcomp compare``: methods compared the way a reviewer accepts (DESIGN.md, principle 9).

    out_dir/
        tuning/<method>/     a sweep per method over the tuned values, evaluated on validation data only
        final/<method>/      the chosen values, the same seeds for every method (paired)
        report/              fedcomp report over final/
        compare.json         the choices, every validation score, and the paired differences

1. **Tuning on validation data, never the test set.** Each method runs once
   per value of the tuned keys (``--tune client.lr=0.03,0.1,0.3``; several
   keys: their cross product) with ``federation.evaluate_on = "clients"``:
   every client evaluates the global model on a held-out share of its own
   training data (``data.client_test_fraction``), and the server evaluates
   nothing, so the test set is never read. A value's score is the last
   round's example-weighted client accuracy, averaged over ``tune_seeds``
   seeds; the best score wins (ties: the first value listed).
2. **Paired seeds.** Every method then runs with its own choice on the
   same seeds (``seed``, ``seed + 1``, ...): the same partitions and the
   same client sampling per seed across methods.
3. **Paired answers.** Bytes (total and uplink) and rounds to the target
   accuracy, per method, and each method's per-seed difference from the
   first method (the baseline) with its 95% t-interval. Seeds where either
   did not reach the target are counted, not averaged.

Equal-bytes comparisons stay what they were: give every method the same
``max_bytes`` in its own overrides.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcomp.config import ConfigError, ExperimentConfig, parse_value, set_dotted
from fedcomp.engine import shared_engine
from fedcomp.reports.compare import T975
from fedcomp.reports.curves import first_reach
from fedcomp.reports.runs import load_run
from fedcomp.sweep import SweepResult, load_base, plan, run_sweep, split_top_level

logger = logging.getLogger(__name__)

COMPARE_FILE = "compare.json"
VALIDATION = {"federation": {"evaluate_on": "clients"}}
"""What makes a tuning run validate instead of test: each client evaluates on its own held-out data."""


@dataclass
class MethodResult:
    label: str
    overrides: dict[str, Any]
    chosen: dict[str, Any]
    """The tuned keys' chosen values."""
    validation: dict[str, float | None] = field(default_factory=dict)
    """Each tuned combination (as ``key=value, ...``) → its mean validation accuracy."""
    runs: list[str] = field(default_factory=list)
    """The final runs' directories, one per seed."""
    to_target: dict[str, list[float | None]] = field(default_factory=dict)
    """``total_bytes``, ``uplink_bytes``, ``rounds`` to the target, per seed (None: not reached)."""
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Against the baseline, per quantity: mean difference, 95% t-interval, seeds counted and left out."""


@dataclass
class CompareResult:
    out_dir: Path
    target: float | None
    methods: list[MethodResult]

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "methods": [m.__dict__ for m in self.methods]}


def parse_method(text: str) -> dict[str, Any]:
    """``'uplink={name="surp",density=0.01};client.lr=0.1'`` → {dotted key: value} (TOML values)."""
    out: dict[str, Any] = {}
    for part in split_top_level(text.replace(";", ",")) if ";" in text else [text]:
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"method {text!r}: expected KEY=VALUE[;KEY=VALUE...], e.g. 'uplink.name=surp'")
        out[key.strip()] = parse_value(raw.strip())
    return out


def method_label(overrides: Mapping[str, Any]) -> str:
    """A folder-safe name for a method: its overrides, as a sweep names a grid point."""
    parts = [f"{k}={_flat(v)}" for k, v in overrides.items()]
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "__".join(parts)) or "base"


def compare(
    config: str | Path | dict[str, Any] | ExperimentConfig,
    methods: Sequence[Mapping[str, Any]],
    *,
    tune: Mapping[str, Sequence[Any]] | None = None,
    seeds: int = 3,
    tune_seeds: int = 1,
    target: float | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | Path = "runs/compare",
    progress: bool = True,
) -> CompareResult:
    """Tune each method on validation data, run it on paired seeds, and compare (module docstring).

    ``methods``: each a mapping of dotted config keys to values (``{"uplink.name": "surp"}``), the
    first the baseline. ``tune``: dotted key → values tried for every method (none: no tuning).
    """
    if len(methods) < 1:
        raise ConfigError("compare: give at least one method (the first is the baseline)")
    if any("seed" in m for m in methods) or "seed" in (tune or {}):
        raise ConfigError("compare: 'seed' cannot be a method key or tuned: every method runs the same seeds (--seeds)")
    if seeds < 2:
        raise ConfigError(f"compare: seeds must be >= 2 for paired intervals, got {seeds}")
    tune = {k: list(v) for k, v in (tune or {}).items()}
    for key, values in tune.items():
        if not values:
            raise ConfigError(f"compare: tune key {key!r} has no values")
    base = load_base(config, overrides)
    out = Path(out_dir)
    results = [MethodResult(method_label(m), dict(m), {}) for m in methods]
    if len({r.label for r in results}) != len(results):
        raise ConfigError("compare: two methods have the same overrides")
    # Every run of both phases is validated before anything runs (a typo stops the comparison at once).
    for m in methods:
        plan(_with(base, m, VALIDATION), tune, tune_seeds)
    with shared_engine():
        for r in results:
            if tune:
                sweep = run_sweep(_with(base, r.overrides, VALIDATION), tune, seeds=tune_seeds,
                                  sweep_dir=out / "tuning" / r.label, progress=progress)  # fmt: skip
                r.chosen, r.validation = _choose(sweep, tune)
            final = run_sweep(_with(base, {**r.overrides, **r.chosen}), {}, seeds=seeds,
                              sweep_dir=out / "final" / r.label, progress=progress)  # fmt: skip
            r.runs = [str(final.sweep_dir / run.dir) for run in final.runs if run.status in ("complete", "skipped")]
            if final.failed:
                raise ConfigError(f"compare: {len(final.failed)} final runs of {r.label} failed; see {final.sweep_dir}")
    target = target if target is not None else _default_target(results)
    for r in results:
        r.to_target = _to_target(r.runs, target)
    for r in results:
        r.paired = {q: _paired(r.to_target[q], results[0].to_target[q]) for q in r.to_target}
    result = CompareResult(out, target, results)
    (out / COMPARE_FILE).write_text(json.dumps(result.as_dict(), indent=2), encoding="utf-8")
    return result


def _with(base: dict[str, Any], overrides: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict:
    data = json.loads(json.dumps(base))
    for key, value in overrides.items():
        set_dotted(data, key, value, what=f"method key '{key}'")
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    return data


def _choose(sweep: SweepResult, tune: dict[str, list[Any]]) -> tuple[dict[str, Any], dict[str, float | None]]:
    """The tuned combination with the best mean validation accuracy over the tuning seeds (ties: listed first)."""
    scores: dict[str, list[float]] = {}
    combos: dict[str, dict[str, Any]] = {}
    for run in sweep.runs:
        key = ", ".join(f"{k}={_flat(run.overrides[k])}" for k in tune)
        combos[key] = {k: run.overrides[k] for k in tune}
        # A failed or partial run scores nothing: its last validation round is not the end of training.
        acc = _validation_accuracy(sweep.sweep_dir / run.dir) if run.status in ("complete", "skipped") else None
        scores.setdefault(key, []).append(acc if acc is not None else -math.inf)
    means = {k: sum(v) / len(v) for k, v in scores.items()}
    order = [", ".join(f"{k}={_flat(v)}" for k, v in zip(tune, values, strict=True))
             for values in itertools.product(*tune.values())]  # fmt: skip
    best = max((k for k in order if k in means), key=lambda k: means[k])  # max keeps the first of equals
    if not math.isfinite(means[best]):
        raise ConfigError(f"compare: no tuning run of {sweep.sweep_dir} has a validation accuracy")
    return combos[best], {k: (means[k] if math.isfinite(means[k]) else None) for k in order if k in means}


def _validation_accuracy(run_dir: Path) -> float | None:
    """The last round's example-weighted accuracy of the clients on their own held-out data."""
    rows = load_run(run_dir).rows
    for row in reversed(rows):
        acc = (row.get("federated_eval") or {}).get("test_accuracy")
        if isinstance(acc, int | float):
            return float(acc)
    return None


def _default_target(results: list[MethodResult]) -> float | None:
    """The baseline's mean final test accuracy less one point: the bar "as good as the baseline" means."""
    finals = []
    for run in results[0].runs:
        accs = [r["test_accuracy"] for r in load_run(run).rows if r.get("test_accuracy") is not None]
        if accs:
            finals.append(accs[-1])
    return round(sum(finals) / len(finals) - 0.01, 4) if finals else None


def _to_target(runs: list[str], target: float | None) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {"total_bytes": [], "uplink_bytes": [], "rounds": []}
    for run in runs:
        point = first_reach(load_run(run), target) if target is not None else None
        out["total_bytes"].append(float(point.total) if point else None)
        out["uplink_bytes"].append(float(point.uplink) if point else None)
        out["rounds"].append(float(point.round) if point else None)
    return out


def _paired(values: list[float | None], baseline: list[float | None]) -> dict[str, Any]:
    """Mean per-seed difference from the baseline with its 95% t-interval, over the seeds both reached."""
    d = [v - b for v, b in zip(values, baseline, strict=True) if v is not None and b is not None]
    out: dict[str, Any] = {"seeds": len(d), "left_out": len(values) - len(d)}
    if not d:
        return {**out, "mean_difference": None, "ci95": None}
    mean = sum(d) / len(d)
    if len(d) < 2:
        return {**out, "mean_difference": mean, "ci95": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    half = (T975[len(d) - 2] if len(d) - 1 <= len(T975) else 1.96) * sd / math.sqrt(len(d))
    return {**out, "mean_difference": mean, "ci95": [mean - half, mean + half]}


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={_flat(v)}" for k, v in value.items()) + "}"
    return str(value)
