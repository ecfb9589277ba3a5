"""The run directory: what a run leaves behind, written as it goes.

    config.toml     the resolved configuration (re-runnable as it is)
    rounds.jsonl    one JSON object per finished round, appended and synced
    model.pt        the final global model (a state_dict)
    summary.json    status (running / complete / failed), totals, timings, the config's digest
    checkpoint.pt   the server state after the last checkpointed round
    client_state/   each client's compressor state per round (simulation)
    .lock           held (``flock``) by the process writing the directory; it holds that process's PID

A crash loses at most the round in flight: every finished round is on
disk, and ``summary.json`` says ``running`` or ``failed`` with the error.
``fedcomp run --resume`` continues from ``checkpoint.pt``: rows of rounds
after it, and any damaged line of ``rounds.jsonl`` (kept byte for byte),
move to ``rounds.dropped.jsonl`` (the rounds are redone), so every round
appears once in ``rounds.jsonl`` and nothing recorded is deleted.

Reading ``rounds.jsonl`` (:func:`read_rounds_checked`) keeps every intact
row and reports each damaged line by number: one that is not UTF-8 JSON,
not an object, lacks a key the reports need (or has a value of the wrong
type there), repeats a round already read, or is a torn last line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedcomp.config import ConfigError, ExperimentConfig, dump_config, load_config

try:
    import fcntl
except ImportError:  # pragma: no cover - not Linux/macOS: no locking
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

ROUNDS_FILE = "rounds.jsonl"
CONFIG_FILE = "config.toml"
MODEL_FILE = "model.pt"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
DROPPED_ROUNDS_FILE = "rounds.dropped.jsonl"
FINAL_PAYLOAD_FILE = "final_model.bin"
"""The final model as its model compressor ships it (a client decodes it to ``model.pt``'s model)."""
CLIENT_STATE_DIR = "client_state"
LOCK_FILE = ".lock"
# The run directories a `with lock_run_dir` in this process holds now (resolved paths), and how long a lock
# left to this process only by a forked child's copy of its file is waited for (see lock_run_dir).
_HELD: set[str] = set()
INHERITED_LOCK_WAIT_S = 10.0
APP_RUNTIME = "flower-app"
"""``summary.json``'s ``runtime`` for a run of your own Flower app (:class:`fedcomp.flower.AppRecorder`)."""


class RunDirBusyError(ConfigError):
    """Another process holds the run (or sweep) directory's lock."""


class CorruptRunError(ConfigError):
    """A file of a run directory cannot be read back (e.g. a damaged ``checkpoint.pt``)."""


def software_versions() -> dict[str, Any]:
    """The versions a run records in its summary (so a report can say what produced it)."""
    from importlib.metadata import version

    import flwr

    return {"fedcomp_version": version("fedcomp"), "flwr_version": flwr.__version__, "torch_version": torch.__version__}


# ----------------------------------------------------------------------------- creating and locking


def new_run_dir(cfg: ExperimentConfig) -> Path:
    """A fresh directory ``<output_dir>/<name>-<timestamp>[-n]``; never outside ``output_dir``."""
    base = Path(cfg.output_dir).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    first = base / f"{cfg.name}-{stamp}"
    if first.resolve().parent != base.resolve():
        raise ConfigError(
            f"config key 'name': {cfg.name!r} would put the run directory outside output_dir ({base}); "
            "use a plain name without '/' or '..'"
        )
    for n in range(1000):
        path = base / (f"{cfg.name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {base}")


def prepare_run_dir(path: str | Path) -> Path:
    """The directory for a new run: created if absent, accepted if empty, else refused (nothing is touched).

    Only a stale ``.lock`` may be there already. A directory holding a run
    is refused with a pointer to ``--resume``; any other content (the user's
    own files, a ``config.toml`` of theirs) is refused as it is.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"run directory {p} is a file, not a directory; give a new or empty directory")
    if p.is_dir():
        try:
            present = sorted(c.name for c in p.iterdir() if c.name != LOCK_FILE)
        except OSError as exc:
            raise ConfigError(f"run directory {p}: cannot list it ({exc.strerror or exc})") from exc
        if present:
            if ROUNDS_FILE in present or SUMMARY_FILE in present:
                raise ConfigError(
                    f"run directory {p} already holds a run; give a new directory, or continue it with "
                    f"`fedcomp run --resume {p}` (nothing was changed)"
                )
            shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
            raise ConfigError(
                f"run directory {p} is not empty (it holds {shown}); give a new or empty directory (nothing was changed)"
            )
    p.mkdir(parents=True, exist_ok=True)
    return p


def lock_holder(path: str | Path) -> int | None:
    """The PID written into ``path/.lock`` by the process that last took the lock (None if unknown)."""
    try:
        text = (Path(path) / LOCK_FILE).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def lock_run_dir(path: str | Path, what: str = "run directory") -> Iterator[Path]:
    """Hold an exclusive lock on a run (or sweep) directory for the ``with`` block.

    ``flock(LOCK_EX | LOCK_NB)`` on ``path/.lock`` (the directory is created
    if needed); the kernel releases it when the process ends, however it
    ends. The holder's PID is written into the file. A directory already
    locked — by another process, or by another ``with`` in this one — raises
    :class:`RunDirBusyError` at once, naming the directory and the PID; only
    a lock this process's PID holds although no ``with`` here does (a forked
    child's copy of the file) is waited for, up to
    :data:`INHERITED_LOCK_WAIT_S`.
    The lock file is left in place afterwards (removing it would race with
    the next taker).
    """
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        logger.warning("no file locking on this platform: %s is not protected from a second writer", p)
        yield p
        return
    key = str(p.resolve())
    deadline = time.monotonic() + INHERITED_LOCK_WAIT_S
    while True:
        fd = os.open(p / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            os.close(fd)
            pid = lock_holder(p)
            # This process's own lock, though no `with` here holds it: a child forked while it was held (a
            # subprocess between fork and exec, a fork-started worker) still has the file open. flock
            # belongs to the open file, so it lasts until that copy closes too: wait for it, briefly.
            if pid == os.getpid() and key not in _HELD and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            who = f"process {pid}" if pid is not None else "another process"
            mine = " (this process)" if pid == os.getpid() else ""
            raise RunDirBusyError(
                f"{what} {p} is in use by {who}{mine}; wait until it has finished or use another directory "
                "(nothing was changed)"
            ) from exc
    _HELD.add(key)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield p
    finally:
        _HELD.discard(key)
        os.close(fd)  # releases the lock (once no forked copy of it is open)


# ----------------------------------------------------------------------------- the configuration's digest


def config_digest(cfg: ExperimentConfig) -> str:
    """SHA-256 of the resolved configuration (canonical JSON of :meth:`ExperimentConfig.to_dict`)."""
    text = json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def check_resumable(run_dir: str | Path, cfg: ExperimentConfig) -> None:
    """Refuse (:class:`ConfigError`) to resume a run whose ``config.toml`` changed since it started.

    ``cfg`` is the configuration loaded from ``run_dir/config.toml`` now.
    It matches when its digest equals the recorded ``config_digest`` (so
    comments and formatting may change), or when the file's bytes are the
    ones the run wrote (``config_file_sha256``: a newer fedcomp with new
    defaults still resumes an untouched file). A run recorded before
    digests existed is accepted with a warning.
    """
    path = Path(run_dir)
    summary = _read_json(path / SUMMARY_FILE)
    recorded = summary.get("config_digest")
    if not isinstance(recorded, str):
        logger.warning(
            "%s records no config digest (a run from an earlier fedcomp, or summary.json is unreadable): "
            "cannot check that config.toml is the one the run started with",
            path,
        )
        return
    now = config_digest(cfg)
    if now == recorded:
        return
    if summary.get("config_file_sha256") and _file_digest(path / CONFIG_FILE) == summary["config_file_sha256"]:
        return  # the file is untouched; only how this fedcomp resolves it differs
    raise ConfigError(
        f"{path / CONFIG_FILE} was edited since the run started (digest {now[:12]}, recorded {recorded[:12]}); "
        "start a new run, or restore it"
    )


# ----------------------------------------------------------------------------- the recorder


class RunRecorder:
    """Writes one run directory; safe to call from the server thread."""

    def __init__(
        self, run_dir: Path, cfg: ExperimentConfig, meta: dict[str, Any] | None = None, resume_from: int | None = None
    ) -> None:
        """A new run directory, or (``resume_from`` = the checkpoint's round) the same one continued.

        A new run never overwrites a ``config.toml`` that is already there
        (:class:`ConfigError`); call :func:`prepare_run_dir` first.
        """
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = dict(meta or {})
        self.started = time.time()
        self.rows: list[dict[str, Any]] = []  # as written to rounds.jsonl
        self.wall_before = 0.0
        if resume_from is None:
            text = dump_config(cfg)
            try:
                with (self.dir / CONFIG_FILE).open("x", encoding="utf-8") as fh:
                    fh.write(text)
            except FileExistsError as exc:
                raise ConfigError(
                    f"{self.dir / CONFIG_FILE} exists already; a new run needs a new or empty directory "
                    "(nothing was changed)"
                ) from exc
            self.meta["config_digest"] = config_digest(cfg)
            self.meta["config_file_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        else:
            old = _read_json(self.dir / SUMMARY_FILE)
            self.wall_before = _number(old.get("wall_s"), 0.0)
            earlier = old.get("resumed_from_round")
            self.meta["resumed_from_round"] = [*(earlier if isinstance(earlier, list) else []), resume_from]
            for key in ("config_digest", "config_file_sha256"):
                if isinstance(old.get(key), str):
                    self.meta[key] = old[key]
            self.meta.setdefault("config_digest", config_digest(cfg))  # a run from before digests: from now on
            self.rows = read_rounds(self.dir)
        self._write_summary("running")

    def append(self, row: Any) -> None:
        """One round's row (:class:`~fedcomp.flower.rounds.RoundRow`) appended to ``rounds.jsonl`` and synced."""
        self.rows.append(asdict(row))
        with (self.dir / ROUNDS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(self.rows[-1], allow_nan=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._write_summary("running")

    def rounds_aggregated(self) -> int:
        """How many recorded rounds aggregated at least one client's update."""
        return sum(1 for r in self.rows if r.get("clients"))

    def save_model(
        self,
        state: dict[str, torch.Tensor],
        structure: list[Any],
        input_shape: tuple[int, ...],
        num_classes: int,
    ) -> None:
        """``model.pt`` (a state dict) and, in the summary, what rebuilds its module (see :func:`load_model`)."""
        torch.save(state, self.dir / MODEL_FILE)
        self.meta.update(model_structure=structure, input_shape=list(input_shape), num_classes=num_classes)
        self._write_summary("running")

    def save_final_payload(self, payload: bytes) -> None:
        (self.dir / FINAL_PAYLOAD_FILE).write_bytes(payload)
        self.meta["final_model_bytes"] = len(payload)
        self._write_summary("running")

    def save_checkpoint(self, server_round: int, model: dict[str, torch.Tensor], server: dict[str, Any]) -> None:
        """The server state after ``server_round``, replaced atomically (a crash mid-write keeps the old one)."""
        tmp = self.dir / (CHECKPOINT_FILE + ".tmp")
        with tmp.open("wb") as fh:
            torch.save({"round": server_round, "model": model, "server": server}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / CHECKPOINT_FILE)

    def finish(self, status: str = "complete", error: str | None = None) -> None:
        self.finished = (status, error)
        self._write_summary(status, error)

    finished: tuple[str, str | None] | None = None
    """The status :meth:`finish` wrote; a row the server thread appends after it (the engine died under
    it) is still recorded, but the summary keeps saying how the run ended."""

    def _write_summary(self, status: str, error: str | None = None) -> None:
        if self.finished is not None:
            status, error = self.finished
        accs = [r["test_accuracy"] for r in self.rows if r.get("test_accuracy") is not None]
        summary = {
            "status": status,
            "error": error,
            "rounds_completed": len(self.rows),
            "rounds_without_update": sum(1 for r in self.rows if not r.get("clients")),
            "failed_client_replies": sum(int(r.get("failed_clients") or 0) for r in self.rows),
            "final_test_accuracy": accs[-1] if accs else None,
            "best_test_accuracy": max(accs) if accs else None,
            "uplink_bytes": sum(int(r.get("uplink_bytes") or 0) for r in self.rows),
            "downlink_bytes": sum(int(r.get("downlink_bytes") or 0) for r in self.rows),
            "uplink_wire_bytes": sum(int(r.get("uplink_wire_bytes") or 0) for r in self.rows),
            "downlink_wire_bytes": sum(int(r.get("downlink_wire_bytes") or 0) for r in self.rows),
            "late_uplink_bytes": sum(int(r.get("late_uplink_bytes") or 0) for r in self.rows),
            "sim_clock_s": next(
                (r["sim_clock_s"] for r in reversed(self.rows) if r.get("sim_clock_s") is not None), None
            ),
            "wall_s": self.wall_before + time.time() - self.started,
            **self.meta,
        }
        tmp = self.dir / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        os.replace(tmp, self.dir / SUMMARY_FILE)


# ----------------------------------------------------------------------------- reading back


@dataclass
class Checkpoint:
    round: int
    model: dict[str, torch.Tensor]
    server: dict[str, Any]


def load_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The run's last checkpoint, or None if it has none; :class:`CorruptRunError` if it cannot be read."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        return None
    remedy = (
        "move it away to redo the run from round 1 (the recorded rounds are kept in "
        f"{DROPPED_ROUNDS_FILE}), or start a new run"
    )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever unpickling raises, the file is unusable
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise CorruptRunError(f"{path}: the checkpoint cannot be loaded ({detail}); {remedy}") from exc
    problem = None
    if not isinstance(data, dict):
        problem = f"expected a dict, got {type(data).__name__}"
    elif not isinstance(data.get("round"), int) or isinstance(data["round"], bool) or data["round"] < 0:
        problem = "no valid 'round'"
    elif not isinstance(data.get("model"), dict) or not all(
        isinstance(v, torch.Tensor) for v in data["model"].values()
    ):
        problem = "no valid 'model' (a dict of tensors)"
    elif not isinstance(data.get("server", {}), dict):
        problem = "'server' is not a dict"
    if problem:
        raise CorruptRunError(f"{path}: not a fedcomp checkpoint ({problem}); {remedy}")
    return Checkpoint(int(data["round"]), dict(data["model"]), dict(data.get("server", {})))


TRUST_CODE_HOW = (
    "a run directory is data and may come from anyone: if you trust the code its config names, "
    "pass trust_code=True (command line: --trust-code)"
)


def load_model(run_dir: str | Path, *, trust_code: bool = False) -> torch.nn.Module:
    """The final model of a complete run as a runnable module (factorized layers and all).

    A config naming a model, dataset or function by import path is refused
    (:class:`~fedcomp.imports.UntrustedCodeError`) before anything is imported,
    unless ``trust_code=True``; ``sys.path`` is left as it was either way.
    ``summary.json``'s structure is built on the meta device and must give
    ``model.pt``'s names, shapes and dtypes before any weight is allocated
    (:class:`CorruptRunError` otherwise).
    """
    # Imported here: reading a run directory's rows and summary (reports, sweeps) needs no model code.
    from fedcomp.coding import DecodeError
    from fedcomp.compressors.model.structure import Architecture, load_structured, same_specs, structure_from_json
    from fedcomp.imports import only_allowed

    path = Path(run_dir)
    summary = _read_json(path / SUMMARY_FILE)
    if not (path / MODEL_FILE).exists() or "input_shape" not in summary:
        raise FileNotFoundError(f"{path} holds no final model (is it a complete run directory?)")
    input_shape, num_classes = _recorded_shape(summary, path)
    with only_allowed(None if trust_code else (), TRUST_CODE_HOW):
        cfg = load_config(path / CONFIG_FILE)
        arch = Architecture.of_config(cfg, input_shape, num_classes)
        try:
            structure = structure_from_json(summary.get("model_structure", []))
            specs = arch.specs(structure)  # on the meta device: no memory, however large the claim
        except DecodeError as exc:
            raise CorruptRunError(f"{path / SUMMARY_FILE}: its model_structure does not fit the model: {exc}") from None
        try:
            state = torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - whatever unpickling raises, the file is unusable
            raise CorruptRunError(f"{path / MODEL_FILE} cannot be loaded: {type(exc).__name__}: {exc}"[:300]) from exc
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CorruptRunError(f"{path / MODEL_FILE} is not a state dict (a dict of tensors)")
        if not same_specs(state, specs):
            raise CorruptRunError(
                f"{path / MODEL_FILE} does not hold the model {path / SUMMARY_FILE} describes "
                f"({len(state)} tensors, expected {len(specs)} with the recorded shapes)"
            )
        return load_structured(arch, structure, state)


_MAX_INPUT_DIMS = 4


def _recorded_shape(summary: dict[str, Any], path: Path) -> tuple[tuple[int, ...], int]:
    """``input_shape`` and ``num_classes`` from a summary, as positive integers (CorruptRunError otherwise).

    A Flower app's run (:class:`fedcomp.flower.AppRecorder`) may record neither (``[]`` and 0): its model
    function builds the model by itself, and gets them only if it asks for them."""
    shape, classes = summary.get("input_shape"), summary.get("num_classes")
    if summary.get("runtime") == APP_RUNTIME and shape == [] and classes == 0:
        return (), 0
    if not (
        isinstance(shape, list) and 1 <= len(shape) <= _MAX_INPUT_DIMS and all(_is_int(d) and d > 0 for d in shape)
    ):
        raise CorruptRunError(f"{path / SUMMARY_FILE}: 'input_shape' is not 1 to {_MAX_INPUT_DIMS} positive integers")
    if not (_is_int(classes) and classes > 0):
        raise CorruptRunError(f"{path / SUMMARY_FILE}: 'num_classes' is not a positive integer")
    return tuple(shape), classes


def settle_finished_run(run_dir: str | Path) -> str:
    """The status of a run whose every round and final model are on disk, settled in ``summary.json``.

    A run killed between its last row and :meth:`RunRecorder.finish` still says ``running``
    (or ``interrupted``); it gets the status its end would have written: ``complete``, or
    ``failed`` if no round aggregated an update. A settled status is kept. Returns the status.
    """
    path = Path(run_dir)
    summary = _read_json(path / SUMMARY_FILE)
    status = summary.get("status")
    if not summary or status in ("complete", "failed"):
        return str(status or "unknown")
    aggregated = any(r.get("clients") for r in read_rounds(path))
    summary["status"] = "complete" if aggregated else "failed"
    summary["error"] = None if aggregated else "no round aggregated an update"
    tmp = path / (SUMMARY_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    os.replace(tmp, path / SUMMARY_FILE)
    logger.info("%s: every round and the final model were recorded; status %s -> %s", path, status, summary["status"])
    return summary["status"]


@dataclass(frozen=True)
class DamagedLine:
    """A line of ``rounds.jsonl`` that holds no usable row: its number (from 1), why, and its bytes as stored."""

    line: int
    reason: str
    raw: bytes = field(repr=False)


@dataclass(frozen=True)
class _Line:
    number: int
    raw: bytes
    row: dict[str, Any] | None
    reason: str = ""


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
_INT_KEYS = ("round", "sampled_clients", "failed_clients", "uplink_bytes", "downlink_bytes")
_OPTIONAL_NUMBER_KEYS = ("train_loss", "test_accuracy")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _number(v: Any, default: float) -> float:
    return float(v) if _is_number(v) and math.isfinite(v) else default


def row_problem(row: Any) -> str | None:
    """Why a parsed line is not a usable round row (None if it is one)."""
    if not isinstance(row, dict):
        return f"a JSON {_JSON_TYPES.get(type(row), type(row).__name__)}, not an object"
    for key in _INT_KEYS:
        if key not in row:
            return f"no {key!r}"
        if not _is_int(row[key]) or row[key] < 0:
            return f"{key!r} is {row[key]!r}, not a count"
    if row["round"] < 1:
        return f"'round' is {row['round']}, not a round number"
    if not isinstance(row.get("clients"), list):
        return "no 'clients' list" if "clients" not in row else f"'clients' is {row['clients']!r}, not a list"
    if not _is_number(row.get("wall_s")):
        return "no 'wall_s'" if "wall_s" not in row else f"'wall_s' is {row['wall_s']!r}, not a number"
    for key in _OPTIONAL_NUMBER_KEYS:
        if key not in row:
            return f"no {key!r}"
        if row[key] is not None and not _is_number(row[key]):
            return f"{key!r} is {row[key]!r}, not a number"
    return None


def _scan(path: Path) -> list[_Line]:
    """Every non-blank line of a rounds file, parsed and checked (never raises on the file's content)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    pieces = data.split(b"\n")
    torn_index = len(pieces) - 1 if pieces[-1] else None  # no newline after the last line
    out: list[_Line] = []
    first_seen: dict[int, int] = {}
    for i, raw in enumerate(pieces):
        if not raw.strip():
            continue
        number = i + 1
        row: Any = None
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            problem: str | None = "not UTF-8 text (binary data)"
        except (ValueError, RecursionError) as exc:
            problem = f"not valid JSON ({str(exc).splitlines()[0][:80]})"
        else:
            problem = row_problem(row)
            if problem is None and row["round"] in first_seen:
                problem = f"round {row['round']} is recorded already at line {first_seen[row['round']]}"
        if problem is not None:
            if i == torn_index:
                problem = f"torn last line, its write cut off: {problem}"
            out.append(_Line(number, raw, None, problem))
            continue
        first_seen[row["round"]] = number
        out.append(_Line(number, raw, row))
    return out


def read_rounds_checked(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[DamagedLine]]:
    """Every intact row of ``rounds.jsonl`` in file order, and every damaged line (see the module docstring)."""
    lines = _scan(Path(run_dir) / ROUNDS_FILE)
    rows = [ln.row for ln in lines if ln.row is not None]
    damaged = [DamagedLine(ln.number, ln.reason, ln.raw) for ln in lines if ln.row is None]
    return rows, damaged


def read_rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    """The intact rows of a run directory's ``rounds.jsonl``; damaged lines are skipped, never the rows after them."""
    return read_rounds_checked(run_dir)[0]


def keep_rounds_up_to(run_dir: str | Path, last_round: int) -> int:
    """Before a resume: keep in ``rounds.jsonl`` only the intact rows of rounds up to ``last_round``.

    Rows of later rounds (they are redone) and damaged lines (byte for
    byte) are appended to ``rounds.dropped.jsonl`` and synced before
    ``rounds.jsonl`` is replaced atomically; nothing is deleted (a crash in
    between leaves a line in both files, never in neither). Returns how many
    lines were moved.
    """
    path = Path(run_dir) / ROUNDS_FILE
    if not path.exists():
        return 0
    lines = _scan(path)
    kept = [ln for ln in lines if ln.row is not None and ln.row["round"] <= last_round]
    moved = [ln for ln in lines if ln.row is None or ln.row["round"] > last_round]
    for ln in moved:
        if ln.row is None:
            logger.warning("%s line %d: %s; moved to %s as it was", path, ln.number, ln.reason, DROPPED_ROUNDS_FILE)
    if moved:
        with (Path(run_dir) / DROPPED_ROUNDS_FILE).open("ab") as fh:
            fh.write(b"".join(ln.raw + b"\n" for ln in moved))
            fh.flush()
            os.fsync(fh.fileno())
    tmp = path.with_name(ROUNDS_FILE + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(b"".join(ln.raw + b"\n" for ln in kept))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(moved)


def missing_rounds(rows: list[dict[str, Any]], last_round: int) -> list[int]:
    """The rounds 1..``last_round`` that have no row in ``rows`` (e.g. after their lines were damaged)."""
    present = {r["round"] for r in rows}
    return [n for n in range(1, last_round + 1) if n not in present]


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} if it is absent, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}
