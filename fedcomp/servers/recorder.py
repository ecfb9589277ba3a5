"""The run directory: what a run leaves behind, written as it goes.

    config.toml     the resolved configuration (re-runnable as it is)
    rounds.jsonl    one JSON object per finished round, appended and synced
    model.pt        the final global model (a state_dict)
    summary.json    status (running / complete / failed), totals, timings
    checkpoint.pt   the server state after the last checkpointed round
    client_state/   each client's compressor state per round (simulation)

A crash loses at most the round in flight: every finished round is on
disk, and ``summary.json`` says ``running`` or ``failed`` with the error.
``fedcomp run --resume`` continues from ``checkpoint.pt``: rows of rounds
after it move to ``rounds.dropped.jsonl`` (they are redone), so every round
appears once in ``rounds.jsonl`` and nothing recorded is deleted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedcomp.config import ExperimentConfig, dump_config, load_config

ROUNDS_FILE = "rounds.jsonl"
CONFIG_FILE = "config.toml"
MODEL_FILE = "model.pt"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
DROPPED_ROUNDS_FILE = "rounds.dropped.jsonl"
FINAL_PAYLOAD_FILE = "final_model.bin"
"""The final model as its model compressor ships it (a client decodes it to ``model.pt``'s model)."""
CLIENT_STATE_DIR = "client_state"


@dataclass
class RoundRow:
    """One line of ``rounds.jsonl``."""

    round: int
    sampled_clients: int
    clients: list[int]
    failed_clients: int
    failures: list[dict[str, Any]]
    train_loss: float | None
    test_accuracy: float | None
    test_loss: float | None
    uplink_bytes: int
    uplink_bytes_per_client: list[int]
    uplink_bytes_sent_per_client: list[int]
    downlink_bytes: int
    downlink_bytes_per_client: int
    wall_s: float
    downlink_crc32: int = 0
    """CRC32 of the broadcast payload: which model this round started from."""
    downlink_bytes_received_per_client: list[int] = field(default_factory=list)
    """The broadcast's length as each aggregated client measured it, same order as ``clients``."""
    client_metrics: dict[str, float] = field(default_factory=dict)
    server_metrics: dict[str, float] = field(default_factory=dict)
    """The model compressor's numbers (LC's μ and step, ALDS's error) and, when the evaluated model is
    a compressed one, ``global_test_accuracy`` of the uncompressed global model."""


def software_versions() -> dict[str, Any]:
    """The versions a run records in its summary (so a report can say what produced it)."""
    from importlib.metadata import version

    import flwr

    return {"fedcomp_version": version("fedcomp"), "flwr_version": flwr.__version__, "torch_version": torch.__version__}


def new_run_dir(cfg: ExperimentConfig) -> Path:
    """A fresh directory ``<output_dir>/<name>-<timestamp>[-n]``."""
    base = Path(cfg.output_dir).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = base / (f"{cfg.name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {base}")


class RunRecorder:
    """Writes one run directory; safe to call from the server thread."""

    def __init__(
        self, run_dir: Path, cfg: ExperimentConfig, meta: dict[str, Any] | None = None, resume_from: int | None = None
    ) -> None:
        """A new run directory, or (``resume_from`` = the checkpoint's round) the same one continued."""
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = dict(meta or {})
        self.started = time.time()
        self.rows: list[dict[str, Any]] = []  # as written to rounds.jsonl
        self.wall_before = 0.0
        if resume_from is None:
            (self.dir / CONFIG_FILE).write_text(dump_config(cfg), encoding="utf-8")
        else:
            old = _read_json(self.dir / SUMMARY_FILE)
            self.wall_before = float(old.get("wall_s") or 0.0)
            self.meta["resumed_from_round"] = [*old.get("resumed_from_round", []), resume_from]
            self.rows = read_rounds(self.dir)
        self._write_summary("running")

    def append(self, row: RoundRow) -> None:
        self.rows.append(asdict(row))
        with (self.dir / ROUNDS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(self.rows[-1], allow_nan=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._write_summary("running")

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
        torch.save({"round": server_round, "model": model, "server": server}, tmp)
        os.replace(tmp, self.dir / CHECKPOINT_FILE)

    def finish(self, status: str = "complete", error: str | None = None) -> None:
        self._write_summary(status, error)

    def _write_summary(self, status: str, error: str | None = None) -> None:
        accs = [r["test_accuracy"] for r in self.rows if r["test_accuracy"] is not None]
        summary = {
            "status": status,
            "error": error,
            "rounds_completed": len(self.rows),
            "final_test_accuracy": accs[-1] if accs else None,
            "best_test_accuracy": max(accs) if accs else None,
            "uplink_bytes": sum(r["uplink_bytes"] for r in self.rows),
            "downlink_bytes": sum(r["downlink_bytes"] for r in self.rows),
            "wall_s": self.wall_before + time.time() - self.started,
            **self.meta,
        }
        tmp = self.dir / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        os.replace(tmp, self.dir / SUMMARY_FILE)


@dataclass
class Checkpoint:
    round: int
    model: dict[str, torch.Tensor]
    server: dict[str, Any]


def load_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The run's last checkpoint, or None if it has none."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        return None
    data = torch.load(path, map_location="cpu", weights_only=True)
    return Checkpoint(int(data["round"]), dict(data["model"]), dict(data.get("server", {})))


def load_model(run_dir: str | Path) -> torch.nn.Module:
    """The final model of a complete run as a runnable module (factorized layers and all)."""
    from fedcomp.compressors.model.structure import Architecture, structure_from_json

    path = Path(run_dir)
    summary = _read_json(path / SUMMARY_FILE)
    if not (path / MODEL_FILE).exists() or "input_shape" not in summary:
        raise FileNotFoundError(f"{path} holds no final model (is it a complete run directory?)")
    cfg = load_config(path / CONFIG_FILE)
    arch = Architecture(cfg.model.name, tuple(summary["input_shape"]), int(summary["num_classes"]))
    model = arch.build(structure_from_json(summary.get("model_structure", [])))
    model.load_state_dict(torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True))
    return model


def keep_rounds_up_to(run_dir: str | Path, last_round: int) -> int:
    """Move the rows of rounds after ``last_round`` to ``rounds.dropped.jsonl`` (they are redone).

    ``rounds.jsonl`` is rewritten atomically; the dropped rows are kept, not
    deleted. Returns how many were dropped.
    """
    rows = read_rounds(run_dir)
    kept = [r for r in rows if r["round"] <= last_round]
    dropped = [r for r in rows if r["round"] > last_round]
    if dropped:
        with (Path(run_dir) / DROPPED_ROUNDS_FILE).open("a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in dropped))
    path = Path(run_dir) / ROUNDS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)
    return len(rows) - len(kept)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def read_rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run directory's ``rounds.jsonl`` (a torn last line is skipped)."""
    rows = []
    path = Path(run_dir) / ROUNDS_FILE
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
