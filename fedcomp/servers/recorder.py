"""The run directory: what a run leaves behind, written as it goes.

    config.toml     the resolved configuration (re-runnable as it is)
    rounds.jsonl    one JSON object per finished round, appended and synced
    model.pt        the final global model (a state_dict)
    summary.json    status (running / complete / failed), totals, timings

A crash loses at most the round in flight: every finished round is on
disk, and ``summary.json`` says ``running`` or ``failed`` with the error.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedcomp.config import ExperimentConfig, dump_config

ROUNDS_FILE = "rounds.jsonl"
CONFIG_FILE = "config.toml"
MODEL_FILE = "model.pt"
SUMMARY_FILE = "summary.json"


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
    client_metrics: dict[str, float] = field(default_factory=dict)


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

    def __init__(self, run_dir: Path, cfg: ExperimentConfig, meta: dict[str, Any] | None = None) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / CONFIG_FILE).write_text(dump_config(cfg), encoding="utf-8")
        self.meta = dict(meta or {})
        self.started = time.time()
        self.rows: list[RoundRow] = []
        self._write_summary("running")

    def append(self, row: RoundRow) -> None:
        self.rows.append(row)
        with (self.dir / ROUNDS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(row), allow_nan=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._write_summary("running")

    def save_model(self, state: dict[str, torch.Tensor]) -> None:
        torch.save(state, self.dir / MODEL_FILE)

    def finish(self, status: str = "complete", error: str | None = None) -> None:
        self._write_summary(status, error)

    def _write_summary(self, status: str, error: str | None = None) -> None:
        accs = [r.test_accuracy for r in self.rows if r.test_accuracy is not None]
        summary = {
            "status": status,
            "error": error,
            "rounds_completed": len(self.rows),
            "final_test_accuracy": accs[-1] if accs else None,
            "best_test_accuracy": max(accs) if accs else None,
            "uplink_bytes": sum(r.uplink_bytes for r in self.rows),
            "downlink_bytes": sum(r.downlink_bytes for r in self.rows),
            "wall_s": time.time() - self.started,
            **self.meta,
        }
        tmp = self.dir / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        os.replace(tmp, self.dir / SUMMARY_FILE)


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
