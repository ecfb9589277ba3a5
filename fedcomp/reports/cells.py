"""The report's main table as text: a few columns that read on one screen, one line per group.

Shown: method, seeds, final accuracy (mean ± sd), total bytes (both
directions), uplink, downlink, uplink compression ratio, bytes and rounds
to the target, failures, and a notes column only when a group is partial
or has damaged files. With a ``[network]`` model (:attr:`Table.simulated`),
the simulated time to the target too, beside the bytes to it (the whole
run's simulated time is in table.csv and table.json: ``sim_clock_s``); runs
without one get the table without that column. Rows are sorted by final accuracy, best first. Every
other metric (best accuracy, per-client-per-round bytes, wall time, the
standard deviations of bytes, per-seed values) is in table.csv and table.json.
Each cell carries the number it shows, for sorting in the HTML.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedcomp.reports.table import GroupRow, Stat, Table
from fedcomp.reports.units import human_seconds, short_bytes
from fedcomp.servers.app import human_bytes


@dataclass(frozen=True)
class Cell:
    text: str
    sort: float | str | None = None
    """What the column sorts by (None sorts last)."""


def columns(table: Table, with_notes: bool) -> list[str]:
    target = "target" if table.target_accuracy is None else f"{table.target_accuracy:.4g}"
    cols = ["method", "seeds", "final accuracy", "total bytes ↑+↓", "uplink ↑", "downlink ↓", "↑ ratio", "↓ ratio",
            "bits/param ↑ · ↓"]  # fmt: skip
    if with_model_columns(table):
        cols += ["final model", "dense accuracy"]
    if table.simulated:
        cols += [f"bytes to {target}", f"sim. time to {target}", f"rounds to {target}", "failures"]
    else:
        cols += [f"bytes to {target}", f"rounds to {target}", "failures"]
    return cols + (["notes"] if with_notes else [])


def with_model_columns(table: Table) -> bool:
    """The final model's bytes and the dense model's accuracy, when a group compresses the model itself."""
    return any(r.server_compression != "identity" for r in table.rows)


def notes_of(row: GroupRow) -> str:
    parts = [] if row.status == "complete" else [row.status]
    if row.warnings:
        parts.append(f"⚠ damaged files (see Warnings, {len(row.warnings)})")
    return "; ".join(parts)


def table_cells(table: Table) -> tuple[list[str], list[list[Cell]]]:
    with_notes = any(notes_of(r) for r in table.rows)
    model_columns = with_model_columns(table)
    simulated = table.simulated
    rows = sorted(table.rows, key=lambda r: -(r.metrics["final_accuracy"].mean or float("-inf")))
    body = []
    for row in rows:
        m = row.metrics
        cells = [
            Cell(row.label, row.label),
            Cell(str(len(row.seeds)), len(row.seeds)),
            accuracy(m["final_accuracy"]),
            byte_count(m["total_bytes"]),
            byte_count(m["uplink_bytes"]),
            byte_count(m["downlink_bytes"]),
            ratio(m["compression_ratio"]),
            ratio(m["downlink_ratio"]),
            bits(m["uplink_bits_per_parameter"], m["downlink_bits_per_parameter"]),
            *((byte_count(m["final_model_bytes"]), accuracy(m["dense_accuracy"])) if model_columns else ()),
            to_target(m["total_bytes_to_target"], human_bytes, short_bytes),
            *((to_target(m["sim_s_to_target"], human_seconds, human_seconds),) if simulated else ()),
            to_target(m["rounds_to_target"], lambda v: f"{v:.3g}", lambda v: f"{v:.2g}"),
            failures(row),
        ]
        if with_notes:
            cells.append(Cell(notes_of(row), notes_of(row)))
        body.append(cells)
    return columns(table, with_notes), body


def accuracy(s: Stat) -> Cell:
    if s.mean is None:
        return Cell("—")
    return Cell(f"{s.mean:.3f}" + (f" ± {s.std:.3f}" if s.std else ""), s.mean)


def byte_count(s: Stat) -> Cell:
    return Cell("—") if s.mean is None else Cell(human_bytes(s.mean), s.mean)


def ratio(s: Stat) -> Cell:
    if s.mean is None:
        return Cell("—")
    return Cell(f"{s.mean:,.0f}×" if s.mean >= 100 else f"{s.mean:.1f}×", s.mean)


def bits(up: Stat, down: Stat) -> Cell:
    """Bits per model parameter per client per round, up · down (32 is a dense float32 model); sorts by up."""
    if up.mean is None and down.mean is None:
        return Cell("—")
    text = " · ".join("—" if s.mean is None else f"{s.mean:.3g}" for s in (up, down))
    return Cell(text, up.mean)


def to_target(s: Stat, fmt: Callable[[float], str], fmt_spread: Callable[[float], str]) -> Cell:
    """Mean ± sd over the seeds that got there; "(k/n)" when not all did, "—" when none did."""
    known = [v for v in s.values if v is not None]
    if s.mean is None or not known:
        return Cell("—")
    text = fmt(s.mean) + (f" ± {fmt_spread(s.std)}" if s.std else "")
    if len(known) < len(s.values):
        text += f" ({len(known)}/{len(s.values)} seeds)"
    return Cell(text, s.mean)


def failures(row: GroupRow) -> Cell:
    """Summed over the group's runs: failed client replies, rounds that aggregated nothing, failed runs."""
    replies = int(sum(v or 0 for v in row.metrics["failed_replies"].values))
    empty = int(sum(v or 0 for v in row.metrics["rounds_without_update"].values))
    parts = []
    if replies:
        parts.append(f"{replies} {'reply' if replies == 1 else 'replies'}")
    if empty:
        parts.append(f"{empty} {'round' if empty == 1 else 'rounds'} w/o update")
    if row.failed_runs:
        parts.append(f"{row.failed_runs} {'run' if row.failed_runs == 1 else 'runs'} failed")
    return Cell(", ".join(parts) or "0", replies + empty + row.failed_runs)
