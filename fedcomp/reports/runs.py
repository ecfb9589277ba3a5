"""Reading run directories for a report: what a run recorded, and which runs belong together.

A report takes run directories and sweep directories (a sweep directory is
expanded to the runs it lists). Runs are grouped when their configurations
differ only in ``seed`` (and ``name`` / ``output_dir``); runs of different
*experiments* (dataset, partition, model, number of clients) are refused
unless asked for, because their bytes and accuracies do not compare.

A damaged run never stops a report: its intact rows are read, and every
problem (a damaged line of ``rounds.jsonl`` with its number, an unreadable
``summary.json`` or ``model.pt``) is kept in :attr:`RunRecord.problems`,
which the report prints as a warning and marks in its table. A sweep member
that is not readable at all is left out with a warning; a directory named on
the command line that is not a run is a :class:`ReportError`.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcomp.errors import ReportError
from fedcomp.reports.units import short_bytes
from fedcomp.servers.recorder import (
    APP_RUNTIME,
    CONFIG_FILE,
    MODEL_FILE,
    ROUNDS_FILE,
    SUMMARY_FILE,
    read_rounds_checked,
)

SWEEP_FILE = "sweep.json"
MAX_LINES_NAMED = 5
"""Damaged lines named one by one per file; the rest are counted."""

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


@dataclass
class RunRecord:
    """One run directory as the report sees it."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    """What is damaged in the run's files, each naming the file (and line): shown as warnings."""
    _state: Any = field(default=None, repr=False)

    @property
    def status(self) -> str:
        """``complete``, or ``partial`` for a run that is still running, crashed or failed."""
        done = self.summary.get("status") == "complete" and len(self.rows) >= self.planned_rounds
        return "complete" if done else "partial"

    @property
    def planned_rounds(self) -> int:
        rounds = self.get("federation.rounds")
        return rounds if isinstance(rounds, int) and not isinstance(rounds, bool) else len(self.rows)

    @property
    def seed(self) -> int:
        seed = self.get("seed", 0)
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0

    def model_state(self) -> dict[str, Any] | None:
        """``model.pt`` as a state dict of tensors; None (and a problem noted) if absent or unreadable."""
        if self._state is None:
            self._state = _load_state(self.path / MODEL_FILE, self.problems)
        return self._state or None

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
    def counted(self) -> list[RunRecord]:
        """The complete runs, one per seed: the only runs the headline, the frontier and the seed counts use
        (an interrupted run, or a second run of a seed, would count a seed twice or a half-run as a result)."""
        out, seen = [], set()
        for run in self.runs:
            if run.status == "complete" and run.seed not in seen:
                seen.add(run.seed)
                out.append(run)
        return out

    @property
    def left_out(self) -> list[RunRecord]:
        """The runs :attr:`counted` leaves out: partial runs and repeated seeds (shown apart, marked)."""
        counted = {id(r) for r in self.counted}
        return [r for r in self.runs if id(r) not in counted]

    @property
    def uplink(self) -> str:
        return self._name_in("uplink")

    @property
    def server_compression(self) -> str:
        return self._name_in("server_compression")

    def _name_in(self, section_name: str) -> str:
        section = self.config.get(section_name, {})
        return str(section.get("name", "identity")) if isinstance(section, dict) else "identity"


def load_run(path: str | Path) -> RunRecord:
    """Read one run directory; :class:`ReportError` if it is not one."""
    p = Path(path)
    if not p.is_dir():
        raise ReportError(f"{p}: no such directory")
    if not (p / CONFIG_FILE).exists():
        raise ReportError(f"{p}: not a fedcomp run directory (no {CONFIG_FILE}; expected a run or sweep directory)")
    try:
        config = tomllib.loads((p / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # TOMLDecodeError, UnicodeDecodeError: ValueErrors
        raise ReportError(f"{p / CONFIG_FILE}: unreadable ({_first_line(exc)})") from None
    problems: list[str] = []
    summary: dict[str, Any] = {}
    if (p / SUMMARY_FILE).exists():
        try:
            loaded = json.loads((p / SUMMARY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            loaded, why = None, f"unreadable ({_first_line(exc)})"
        else:
            why = "not a JSON object" if loaded is not None else "null, not a JSON object"
        if isinstance(loaded, dict):
            summary = loaded
        else:
            summary = {"status": "unknown"}  # a torn summary: the rounds still count
            problems.append(f"{p / SUMMARY_FILE}: {why}; the run's status and wall time are unknown")
    try:
        rows, damaged = read_rounds_checked(p)  # [] when the run never finished a round
    except OSError as exc:
        rows, damaged = [], []
        problems.append(f"{p / ROUNDS_FILE}: unreadable ({exc.strerror or exc}); no rounds read")
    for d in damaged[:MAX_LINES_NAMED]:
        problems.append(f"{p / ROUNDS_FILE} line {d.line}: {d.reason}; skipped")
    if len(damaged) > MAX_LINES_NAMED:
        problems.append(f"{p / ROUNDS_FILE}: {len(damaged) - MAX_LINES_NAMED} more damaged lines skipped")
    if damaged:
        problems.append(f"{p}: {len(rows)} intact rows read, {len(damaged)} damaged lines left out")
    return RunRecord(p, config, summary, rows, problems)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "strerror", None) or exc) or type(exc).__name__
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _load_state(path: Path, problems: list[str]) -> dict[str, Any]:
    """A state dict of tensors from ``path``; {} (and a problem noted) if absent or not loadable."""
    if not path.exists():
        return {}
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever unpickling raises, the file is unusable
        problems.append(f"{path}: unreadable ({type(exc).__name__}: {_first_line(exc)}); not used")
        return {}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        problems.append(f"{path}: not a state dict of tensors; not used")
        return {}
    return state


def expand(paths: list[str | Path], warnings: list[str] | None = None) -> list[RunRecord]:
    """Runs from run directories and sweep directories, in the order given, each once.

    Sweep members (and runs in a folder of runs) that cannot be read are
    left out with a line in ``warnings``; a path given itself must be a run.
    """
    if not paths:
        raise ReportError("no run or sweep directory given")
    notes = warnings if warnings is not None else []
    runs: list[RunRecord] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        given = False
        if (p / SWEEP_FILE).exists():
            members = _sweep_members(p, notes)
        elif p.is_dir() and not (p / CONFIG_FILE).exists() and _child_runs(p):
            members = _child_runs(p)  # a folder of runs
        else:
            members, given = [p], True
        for m in members:
            key = m.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                runs.append(load_run(m))
            except ReportError as exc:
                if given:
                    raise
                notes.append(f"{exc}; left out of the report")
    if not runs:
        raise ReportError("no readable run in " + ", ".join(str(p) for p in paths) + "".join(f"; {n}" for n in notes))
    return runs


def _child_runs(folder: Path) -> list[Path]:
    try:
        return sorted(c for c in folder.iterdir() if c.is_dir() and (c / CONFIG_FILE).exists())
    except OSError:
        return []


def _sweep_members(sweep_dir: Path, warnings: list[str]) -> list[Path]:
    """The runs a sweep.json lists; if it is unreadable, the run directories found in the sweep directory."""
    file = sweep_dir / SWEEP_FILE
    try:
        sweep: Any = json.loads(file.read_text(encoding="utf-8"))
        problem = "" if isinstance(sweep, dict) and isinstance(sweep.get("runs", []), list) else "not a sweep record"
    except (OSError, ValueError, RecursionError) as exc:
        sweep, problem = None, f"unreadable ({_first_line(exc)})"
    if problem:
        found = _child_runs(sweep_dir)
        if not found:
            raise ReportError(f"{file}: {problem}, and {sweep_dir} holds no run directory")
        warnings.append(f"{file}: {problem}; reporting the {len(found)} run directories found in {sweep_dir}")
        return found
    entries = sweep.get("runs", [])
    bad = [e for e in entries if not (isinstance(e, dict) and isinstance(e.get("dir"), str) and e["dir"])]
    if bad:
        warnings.append(f"{file}: {len(bad)} run entries without a 'dir' ignored")
    dirs = [sweep_dir / e["dir"] for e in entries if e not in bad]
    members = [d for d in dirs if (d / CONFIG_FILE).exists()]
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
    for run, flat in zip(runs, flats, strict=True):
        if run.summary.get("runtime") == APP_RUNTIME:  # your own Flower app trains its own way: never one of ours
            flat["app"] = APP_RUNTIME
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


METHOD_NAMES = {
    "identity": "dense", "surp": "SuRP", "topk": "top-k", "rtopk": "rTop-k", "randomk": "random-k", "dgc": "DGC",
    "qsgd": "QSGD", "terngrad": "TernGrad", "signsgd": "signSGD", "ef_signsgd": "EF-signSGD", "powersgd": "PowerSGD",
    "stc": "STC", "lc": "LC", "alds": "ALDS", "bwcp": "BWCP", "udfc": "UDFC",
}  # fmt: skip
"""How a report names a registered method; any other name (your own, a newer one) is shown as it is."""
SECTIONS = (("uplink", "↑"), ("downlink", "Δ↓"), ("server_compression", "↓"))
"""The three places a method compresses, as a label marks them: the update, the model's change, the model."""


def _label(flat: dict[str, Any], varying: list[str]) -> str:
    """A readable name: each direction's method with its rate (``SuRP 1% ↑ · SuRP 5% Δ↓``), ``dense`` when
    nothing is compressed, then every other key that varies among the groups.

    A method's density shows as a percentage and ``max_bytes`` as a budget; its other parameters show only
    where they vary. Long values (LC's group lists) are shortened: ``config.toml`` in each run has the rest.
    """
    parts = []
    for section, mark in SECTIONS:
        name = str(flat.get(f"{section}.name", "identity"))
        if name == "identity" and not (section == "uplink" and _compressed(flat)):
            continue
        shown = [METHOD_NAMES.get(name, name)]
        if name != "identity":
            shown += _rate(flat, section)
            shown += [_short(f"{k.split('.', 1)[1]}={flat[k]}") for k in varying
                      if k.startswith(f"{section}.") and k not in _RATE_KEYS(section) and k in flat]  # fmt: skip
        parts.append(" ".join(shown) + f" {mark}")
    if not parts:
        parts = ["dense"]
    others = [k for k in varying if k in flat and not k.startswith(tuple(f"{s}." for s, _ in SECTIONS))]
    return " · ".join(parts + [_short(f"{k}={flat[k]}") for k in others])


def _RATE_KEYS(section: str) -> tuple[str, ...]:  # noqa: N802 - reads as the constant it is
    return (f"{section}.name", f"{section}.density", f"{section}.max_bytes")


def _compressed(flat: dict[str, Any]) -> bool:
    return any(str(flat.get(f"{s}.name", "identity")) != "identity" for s, _ in SECTIONS)


def _rate(flat: dict[str, Any], section: str) -> list[str]:
    out = []
    density = flat.get(f"{section}.density")
    if isinstance(density, int | float) and not isinstance(density, bool) and density < 1:
        out.append(f"{100 * density:.3g}%")
    budget = flat.get(f"{section}.max_bytes")
    if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
        out.append(f"≤{short_bytes(budget)}")
    return out


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:39] + "…"
