"""Reading run directories for a report: what a run recorded, and which runs belong together.

A report takes run directories and sweep directories (a sweep directory is
expanded to the runs it lists). Runs are grouped when their configurations
differ only in ``seed`` (and ``name`` / ``output_dir``); runs of different
*experiments* (dataset, partition, model, number of clients) are refused
unless asked for, because their bytes and accuracies do not compare.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcomp.servers.recorder import CONFIG_FILE, SUMMARY_FILE, read_rounds

SWEEP_FILE = "sweep.json"

# Keys that define the experiment: runs that differ here are different experiments.
EXPERIMENT_KEYS = (
    "data.dataset",
    "data.partition",
    "data.alpha",
    "data.classes_per_client",
    "data.test_size",
    "model.name",
    "federation.num_clients",
)
# Keys that never make two runs different methods.
IGNORED_KEYS = ("seed", "name", "output_dir")


class ReportError(ValueError):
    """A report or sweep input is not usable: not a run, mixed experiments, an unknown key."""


@dataclass
class RunRecord:
    """One run directory as the report sees it."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def status(self) -> str:
        """``complete``, or ``partial`` for a run that is still running, crashed or failed."""
        done = self.summary.get("status") == "complete" and len(self.rows) >= self.planned_rounds
        return "complete" if done else "partial"

    @property
    def planned_rounds(self) -> int:
        return int(self.config.get("federation", {}).get("rounds", len(self.rows)))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


@dataclass
class RunGroup:
    """Runs that differ only in seed: one row of the report."""

    label: str
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return self.runs[0].config

    @property
    def uplink(self) -> str:
        return str(self.config.get("uplink", {}).get("name", "identity"))


def load_run(path: str | Path) -> RunRecord:
    """Read one run directory; :class:`ReportError` if it is not one."""
    p = Path(path)
    if not p.is_dir():
        raise ReportError(f"{p}: no such directory")
    if not (p / CONFIG_FILE).exists():
        raise ReportError(f"{p}: not a fedcomp run directory (no {CONFIG_FILE}; expected a run or sweep directory)")
    try:
        config = tomllib.loads((p / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ReportError(f"{p / CONFIG_FILE}: unreadable ({exc})") from exc
    summary: dict[str, Any] = {}
    if (p / SUMMARY_FILE).exists():
        try:
            summary = json.loads((p / SUMMARY_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            summary = {"status": "unknown"}  # a torn summary: the rounds still count
    rows = read_rounds(p)  # [] when the run never finished a round
    return RunRecord(p, config, summary, rows)


def expand(paths: list[str | Path]) -> list[RunRecord]:
    """Runs from run directories and sweep directories, in the order given, each once."""
    if not paths:
        raise ReportError("no run or sweep directory given")
    runs: list[RunRecord] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if (p / SWEEP_FILE).exists():
            members = _sweep_members(p)
        elif (
            p.is_dir()
            and not (p / CONFIG_FILE).exists()
            and any(c.is_dir() and (c / CONFIG_FILE).exists() for c in p.iterdir())
        ):
            members = sorted(c for c in p.iterdir() if c.is_dir() and (c / CONFIG_FILE).exists())  # a folder of runs
        else:
            members = [p]
        for m in members:
            key = m.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(load_run(m))
    return runs


def _sweep_members(sweep_dir: Path) -> list[Path]:
    try:
        sweep = json.loads((sweep_dir / SWEEP_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{sweep_dir / SWEEP_FILE}: unreadable ({exc})") from exc
    members = [sweep_dir / r["dir"] for r in sweep.get("runs", []) if (sweep_dir / r["dir"] / CONFIG_FILE).exists()]
    if not members:
        raise ReportError(f"{sweep_dir}: the sweep has not started any run yet")
    return members


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_same_experiment(runs: list[RunRecord]) -> None:
    """Refuse runs of different experiments, naming the key and the runs that differ."""
    first = flatten(runs[0].config)
    for run in runs[1:]:
        other = flatten(run.config)
        for key in EXPERIMENT_KEYS:
            if first.get(key) != other.get(key):
                raise ReportError(
                    f"runs of different experiments: {key} = {first.get(key)!r} in {runs[0].path} "
                    f"but {other.get(key)!r} in {run.path} (report them separately, or pass --allow-mixed)"
                )


def group_runs(runs: list[RunRecord]) -> list[RunGroup]:
    """Group runs whose configurations differ only in seed; label each group by what sets it apart."""
    flats = [{k: v for k, v in flatten(r.config).items() if k not in IGNORED_KEYS} for r in runs]
    groups: dict[str, RunGroup] = {}
    keys: list[dict[str, Any]] = []
    for run, flat in zip(runs, flats, strict=True):
        ident = json.dumps(flat, sort_keys=True, default=str)
        if ident not in groups:
            groups[ident] = RunGroup(label="")
            keys.append(flat)
        groups[ident].runs.append(run)
    varying = sorted({k for flat in keys for k in flat if any(f.get(k) != flat.get(k) for f in keys)})
    for group, flat in zip(groups.values(), keys, strict=True):
        group.label = _label(flat, varying)
    return list(groups.values())


def _label(flat: dict[str, Any], varying: list[str]) -> str:
    """The uplink name, then the server compression (if any), then every other key that varies across groups.

    Section prefixes are dropped and long values (LC's group lists) shortened: the table's columns and
    ``config.toml`` in each run have the rest.
    """
    parts = [str(flat.get("uplink.name", "identity"))]
    downlink = str(flat.get("server_compression.name", "identity"))
    if downlink != "identity" or "server_compression.name" in varying:
        parts.append(f"↓{downlink}")
    for key in varying:
        if key in ("uplink.name", "server_compression.name") or key not in flat:
            continue
        short = key.removeprefix("uplink.").removeprefix("server_compression.")
        value = str(flat[key])
        parts.append(f"{short}={value if len(value) <= 32 else value[:31] + '…'}")
    return " ".join(parts)
