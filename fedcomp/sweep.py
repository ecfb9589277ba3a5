"""Sweeps: the cross product of a grid of config values × seeds, one run directory each.

    sweep_dir/
        sweep.json                       the grid, the seeds and every run with its status
        .lock                            held by the sweep while it runs (a second sweep here is refused)
        uplink.name=surp__seed=0/        an ordinary run directory (one name per grid point and seed)
        ...
        .attempts/                       earlier, unfinished attempts of a run (kept, not reported)

Every combination is validated before anything runs, so a grid key that
does not exist stops the sweep at once with the key named. A run that fails
is recorded (its own ``summary.json`` and ``sweep.json`` say why) and the
sweep goes on. Started again on the same directory, a sweep skips the runs
already complete and runs the others afresh (an unfinished attempt is moved
to ``.attempts/``, not deleted). Two sweeps never share a directory: the
second one is refused (:class:`~fedcomp.servers.recorder.RunDirBusyError`)
while the first holds the directory's lock, and each run locks its own run
directory as well.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcomp.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    load_config_unchecked,
    parse_value,
    read_toml,
    set_dotted,
    user_code_as_paths,
)
from fedcomp.engine import shared_engine
from fedcomp.errors import RunInterruptedError
from fedcomp.imports import is_import_spec, spec_of
from fedcomp.reports.runs import SWEEP_FILE, ReportError, RunRecord, load_run
from fedcomp.servers.recorder import CONFIG_FILE, RunDirBusyError, lock_run_dir

logger = logging.getLogger(__name__)


@dataclass
class SweepRun:
    dir: str
    overrides: dict[str, Any]
    seed: int
    status: str = "pending"  # pending | complete | failed | skipped (already complete)
    error: str | None = None
    final_accuracy: float | None = None


@dataclass
class SweepResult:
    sweep_dir: Path
    runs: list[SweepRun] = field(default_factory=list)

    @property
    def failed(self) -> list[SweepRun]:
        return [r for r in self.runs if r.status == "failed"]


def parse_grid(items: list[str] | tuple[str, ...]) -> dict[str, list[Any]]:
    """``["uplink.name=surp,rtopk", "uplink.density=0.01,0.001"]`` → {key: [values]} (TOML value syntax)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(f"grid {item!r}: expected the form section.key=value1,value2,...")
        if key in grid:
            raise ConfigError(f"grid key '{key}' is given twice")
        grid[key] = [parse_value(v.strip()) for v in split_top_level(raw) if v.strip()]
    return grid


def split_top_level(raw: str) -> list[str]:
    """Split on commas outside quotes, [] and {}: ``{name="surp",density=0.01},{name="identity"}`` is two values."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(raw):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(raw[start:i])
            start = i + 1
    parts.append(raw[start:])
    return parts


def plan(base: dict[str, Any], grid: dict[str, list[Any]], seeds: int) -> list[tuple[SweepRun, ExperimentConfig]]:
    """Every combination as a validated config; a ConfigError names the combination and the key."""
    if seeds < 1:
        raise ConfigError(f"seeds: expected an integer >= 1, got {seeds}")
    if "seed" in grid:
        raise ConfigError("grid key 'seed': use --seeds N instead")
    base_cfg = config_from_dict(json.loads(json.dumps(base)))
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        combo = dict(zip(keys, values, strict=True))
        for i in range(seeds):
            seed = base_cfg.seed + i
            data = json.loads(json.dumps(base))
            for k, v in combo.items():
                set_dotted(data, k, v, what=f"grid key '{k}'")
            data["seed"] = seed
            try:
                cfg = config_from_dict(data)
            except ConfigError as exc:
                shown = ", ".join(f"{k}={v}" for k, v in combo.items())
                raise ConfigError(f"grid combination {shown}: {exc}") from exc
            out.append((SweepRun(_slug(combo, seed), combo, seed), cfg))
    dirs = [r.dir for r, _ in out]
    twice = sorted({d for d in dirs if dirs.count(d) > 1})
    if twice:
        raise ConfigError(f"two grid points would share the run directory {twice[0]!r}; give the files other names")
    return out


def _flat(key: str, value: Any) -> list[tuple[str, Any]]:
    """A grid value as dotted keys: ``uplink={name="surp", density=0.01}`` is ``uplink.name``, ``uplink.density``."""
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _flat(f"{key}.{k}", v)]
    return [(key, value)]


def _short(value: Any) -> Any:
    """An import path by its file or module and name (``own.py:Net``), not the folders above it."""
    return value.rsplit("/", 1)[-1] if is_import_spec(value) else value


def _slug(combo: dict[str, Any], seed: int) -> str:
    """A run's directory name: ``uplink.name=surp__uplink.density=0.01__seed=0``.

    One scheme whatever the interface: a table value given on the command
    line and the same keys given dotted from Python name the same directory.
    """
    parts = [f"{k}={_short(v)}" for key, value in combo.items() for k, v in _flat(key, value)] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "__".join(parts))


def run_sweep(
    config: str | Path | dict[str, Any] | ExperimentConfig,
    grid: dict[str, list[Any]] | None = None,
    *,
    seeds: int = 1,
    overrides: list[str] | tuple[str, ...] = (),
    sweep_dir: str | Path | None = None,
    progress: bool = True,
    verbose: bool = False,
) -> SweepResult:
    """Run the grid × seeds; see the module docstring for the directory and the restart rules."""
    base = load_base(config, overrides)
    grid = _grid_as_paths(grid or {}, base)
    runs = plan(base, grid, seeds)
    if sweep_dir is None:
        name = base.get("name", "experiment")
        out = Path(str(base.get("output_dir", "runs"))).expanduser()
        sweep_dir = out / f"{name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        if sweep_dir.resolve().parent != out.resolve():
            raise ConfigError(
                f"config key 'name': {name!r} would put the sweep directory outside output_dir ({out}); "
                "use a plain name without '/' or '..'"
            )
    root = Path(sweep_dir)
    root.mkdir(parents=True, exist_ok=True)
    # One engine start for the whole sweep, not one per run.
    with lock_run_dir(root, what="sweep directory"), shared_engine():
        return _run_all(root, runs, grid or {}, seeds, progress, verbose)


def _run_all(
    root: Path,
    runs: list[tuple[SweepRun, ExperimentConfig]],
    grid: dict[str, list[Any]],
    seeds: int,
    progress: bool,
    verbose: bool,
) -> SweepResult:
    """The sweep's loop, run while the sweep directory is locked."""
    from fedcomp.simulation import run  # Flower and Ray only once a sweep runs (not to parse or report one)

    result = SweepResult(root, [r for r, _ in runs])
    state = _read_state(root)
    for i, (entry, cfg) in enumerate(runs, 1):
        path = root / entry.dir
        done = _completed_run(path)
        if done is not None and not _same_experiment(path, cfg):
            done = None  # a complete run of another config (the base or a --set changed): redone, the old kept
        if done is not None:
            entry.status = "skipped"
            acc = done.summary.get("final_test_accuracy")
            entry.final_accuracy = float(acc) if isinstance(acc, int | float) and not isinstance(acc, bool) else None
            _say(progress, f"[{i}/{len(runs)}] {entry.dir}: already complete, skipped")
            continue
        if path.exists():
            try:
                with lock_run_dir(path):  # not while another process (a resume) is writing it
                    _set_aside(root, path)
            except RunDirBusyError as exc:
                entry.status, entry.error = "failed", str(exc)
                _say(progress, f"[{i}/{len(runs)}] {entry.dir}: {exc}")
                _write_state(root, grid, seeds, result.runs, state)
                continue
        _write_state(root, grid, seeds, result.runs, state)
        _say(progress, f"[{i}/{len(runs)}] {entry.dir}")
        try:
            res = run(cfg, run_dir=path, progress=progress, verbose=verbose, label=f"[{i}/{len(runs)}] {entry.dir}")
        except (KeyboardInterrupt, RunInterruptedError):  # Ctrl-C stops the sweep, not only this run
            entry.status, entry.error = "failed", "interrupted"
            _write_state(root, grid, seeds, result.runs, state)
            raise
        except Exception as exc:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
            entry.status, entry.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.warning("sweep run %s failed: %s", entry.dir, entry.error)
            _say(progress, f"    failed: {entry.error}")
        else:
            entry.status, entry.final_accuracy = "complete", res.final_accuracy
        _write_state(root, grid, seeds, result.runs, state)
    return result


def load_base(
    config: str | Path | dict[str, Any] | ExperimentConfig, overrides: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """The base config as plain TOML-shaped data: what :func:`fedcomp.run` takes, objects turned into the import
    paths it records (:mod:`fedcomp.imports`), so every run of the sweep is recorded as a single run is."""
    if isinstance(config, ExperimentConfig):
        data = config.to_dict()
    elif isinstance(config, dict):
        data = user_code_as_paths(config, None)
    else:
        p, data = read_toml(config)  # the same reading, and errors, as load_config
        data = user_code_as_paths(data, p.parent)
    try:
        data = json.loads(json.dumps(data))  # a deep copy that also proves the rest is plain data
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the sweep's config holds a value that is not a config value: {exc}") from None
    return apply_overrides(data, list(overrides))


def _grid_as_paths(grid: dict[str, list[Any]], base: dict[str, Any]) -> dict[str, list[Any]]:
    """Grid values that are your own model, dataset or function become import paths, as in the base config
    (``{"model.name": [Net, "lenet5"]}``); their folders join ``python_path`` so every worker imports them."""
    out: dict[str, list[Any]] = {}
    dirs = list(base.get("python_path") or [])
    for key, values in grid.items():
        out[key] = []
        for value in values:
            if callable(value):
                spec, where = spec_of(value, key)
                if where and where not in dirs:
                    dirs.append(where)
                value = spec
            out[key].append(value)
    if dirs:
        base["python_path"] = dirs
    return out


def _same_experiment(path: Path, cfg: ExperimentConfig) -> bool:
    """Whether the run at ``path`` ran ``cfg`` (its name and output folder aside: a copied or moved sweep)."""
    try:
        recorded = load_config_unchecked(path / CONFIG_FILE).to_dict()  # imports nothing
    except ConfigError:
        return False
    ours = cfg.to_dict()
    return all(recorded.get(k) == ours.get(k) for k in set(recorded) | set(ours) if k not in ("name", "output_dir"))


def _completed_run(path: Path) -> RunRecord | None:
    """The run at ``path`` if it finished every round, else None (absent, unreadable or partial)."""
    if not (path / CONFIG_FILE).exists():
        return None
    try:
        run = load_run(path)
    except ReportError:
        return None
    return run if run.status == "complete" else None


def _set_aside(root: Path, path: Path) -> None:
    """Keep an unfinished attempt out of the way instead of deleting what it recorded."""
    attempts = root / ".attempts"
    attempts.mkdir(exist_ok=True)
    for n in range(1, 10_000):
        dest = attempts / f"{path.name}-{n}"
        if not dest.exists():
            shutil.move(str(path), dest)
            return


def _read_state(root: Path) -> dict[str, Any]:
    """The sweep.json of earlier invocations; an unreadable one is set aside (renamed, not deleted)."""
    path = root / SWEEP_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("runs", []), list):
        return data
    for n in range(1, 10_000):
        dest = root / f"{SWEEP_FILE}.unreadable-{n}"
        if not dest.exists():
            os.replace(path, dest)
            logger.warning("%s is not a sweep record; kept as %s, a new one is written", path, dest.name)
            break
    return {}


def _write_state(root: Path, grid: dict[str, list[Any]], seeds: int, runs: list[SweepRun], old: dict[str, Any]) -> None:
    """sweep.json: this invocation's runs, plus runs of earlier invocations not planned this time."""
    current = {r.dir for r in runs}
    earlier = [r for r in old.get("runs", []) if isinstance(r, dict) and r.get("dir") not in current]
    data = {
        "grid": grid,
        "seeds": seeds,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": earlier + [r.__dict__ for r in runs],
    }
    tmp = root / (SWEEP_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, root / SWEEP_FILE)


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)
