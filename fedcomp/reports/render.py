"""Write a report: self-contained HTML, the same as Markdown, and the table as CSV and JSON.

OUT/report.html     figures embedded as data: URIs (one file to mail around)
OUT/report.md       the same text; figures next to it in OUT/figures/
OUT/table.csv       one row per group: mean and std of every metric
OUT/table.json      header, target, ratio source and every group with per-seed values
OUT/figures/*.png

A run with damaged files is reported over what is intact: the table's
"notes" column marks its group (⚠) and a "Warnings" section names each file
and line; :attr:`Report.warnings` has the same lines for the command line.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcomp.reports import figures
from fedcomp.reports.runs import RunGroup, RunRecord, check_same_experiment, expand, group_runs
from fedcomp.reports.table import METRICS, Table, build_table
from fedcomp.servers.app import human_bytes

FIGURES = {
    "accuracy_vs_uplink": "Accuracy against cumulative uplink bytes",
    "accuracy_vs_rounds": "Accuracy against rounds",
    "bytes_per_round": "Bytes per client per round, each way (grey dashed: formula-based references)",
    "frontier": "Accuracy–bytes frontier (★ = Pareto-optimal)",
}


@dataclass
class Report:
    out_dir: Path
    html: Path
    markdown: Path
    csv: Path
    json: Path
    figures: dict[str, Path]
    table: Table
    warnings: list[str] = field(default_factory=list)
    """Damaged or left-out run files, each naming the file (and line)."""


def make_report(
    paths: list[str | Path], out_dir: str | Path, target: float | None = None, allow_mixed: bool = False
) -> Report:
    """Read runs (and sweeps), group them by seed, write every report file under ``out_dir``."""
    notes: list[str] = []
    runs = expand(list(paths), notes)
    if not allow_mixed:
        check_same_experiment(runs)
    groups = group_runs(runs)
    table = build_table(groups, target)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    n_params = _model_size(runs)
    pngs = {
        "accuracy_vs_uplink": figures.accuracy_vs_uplink(groups),
        "accuracy_vs_rounds": figures.accuracy_vs_rounds(groups),
        "bytes_per_round": figures.bytes_per_round(groups, n_params),
        "frontier": figures.frontier(table),
    }
    fig_paths = {}
    for name, data in pngs.items():
        fig_paths[name] = out / "figures" / f"{name}.png"
        fig_paths[name].write_bytes(data)
    head = header(runs, groups)
    for row, g in zip(table.rows, groups, strict=True):  # problems found while drawing (e.g. model.pt) too
        row.warnings = [p for r in g.runs for p in r.problems]
    table.warnings = notes + [w for row in table.rows for w in row.warnings]
    report = Report(
        out,
        out / "report.html",
        out / "report.md",
        out / "table.csv",
        out / "table.json",
        fig_paths,
        table,
        list(table.warnings),
    )
    report.json.write_text(json.dumps(_json(head, table), indent=2), encoding="utf-8")
    _write_csv(report.csv, table)
    report.markdown.write_text(_markdown(head, table), encoding="utf-8")
    report.html.write_text(_html(head, table, pngs), encoding="utf-8")
    return report


def header(runs: list[RunRecord], groups: list[RunGroup]) -> dict[str, Any]:
    """What the experiment was, so that the report stands alone."""
    first = runs[0]

    def values(key: str) -> str:
        vals = sorted({str(r.get(key)) for r in runs})
        return ", ".join(vals)

    partition = values("data.partition")
    if partition == "dirichlet":
        partition += f" (α = {values('data.alpha')})"
    elif partition == "pathological":
        partition += f" ({values('data.classes_per_client')} classes per client)"
    return {
        "dataset": values("data.dataset"),
        "partition": partition,
        "model": values("model.name"),
        "clients": values("federation.num_clients"),
        "clients per round (fraction)": values("federation.fraction_train"),
        "rounds": values("federation.rounds"),
        "local epochs": values("client.local_epochs"),
        "runs": f"{len(runs)} in {len(groups)} groups",
        "fedcomp version": first.summary.get("fedcomp_version", "unknown"),
        "Flower version": first.summary.get("flwr_version", "unknown"),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _model_size(runs: list[RunRecord]) -> int | None:
    for r in runs:
        state = r.model_state()
        if state:
            return sum(v.numel() for v in state.values() if v.is_floating_point())
    return None


# ----------------------------------------------------------------------------- formatting


def _fmt(key: str, mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    if key.endswith("accuracy"):
        body, spread = f"{mean:.4f}", f"{std:.4f}" if std else ""
    elif key == "compression_ratio":
        body, spread = f"{mean:,.1f}×", f"{std:,.1f}" if std else ""
    elif key in ("rounds_to_target", "wall_s"):
        body, spread = f"{mean:,.1f}", f"{std:,.1f}" if std else ""
    elif key in ("rounds_without_update", "failed_replies"):
        body, spread = f"{mean:,.4g}", f"{std:,.2g}" if std else ""
    else:
        body, spread = human_bytes(mean), human_bytes(std) if std else ""
    return f"{body} ± {spread}" if spread else body


def _table_cells(table: Table) -> tuple[list[str], list[list[str]]]:
    head = ["run (group)", "seeds", "status", *METRICS.values(), "notes"]
    body = []
    for row in table.rows:
        cells = [row.label, str(len(row.seeds)), row.status]
        cells += [_fmt(k, row.metrics[k].mean, row.metrics[k].std) for k in METRICS]
        cells.append(f"⚠ damaged files (see Warnings, {len(row.warnings)})" if row.warnings else "")
        body.append(cells)
    return head, body


def _notes(table: Table) -> list[str]:
    target = "none" if table.target_accuracy is None else f"{table.target_accuracy:.4f}"
    ratio = "—" if table.identity_bytes is None else human_bytes(table.identity_bytes)
    return [
        f"Target accuracy: {target} ({table.target_source}).",
        f"Compression ratio = identity bytes per client per round ({ratio}; {table.identity_source}) "
        "/ the run's uplink bytes per client per round.",
        "Values are mean ± standard deviation over seeds; bytes are payload lengths as sent.",
        "Partial runs (crashed, failed or still running) are reported over the rounds they finished.",
        "Rounds w/o update: rounds in which no client's update was aggregated (every reply failed or none came).",
    ]


def _markdown(head: dict[str, Any], table: Table) -> str:
    cols, rows = _table_cells(table)
    lines = ["# fedcomp report", ""]
    lines += [f"- **{k}**: {v}" for k, v in head.items()]
    lines += ["", "## Results", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines += [""] + [f"- {n}" for n in _notes(table)] + [""]
    if table.warnings:
        lines += ["## Warnings", "", "Damaged run files; the report uses every intact row.", ""]
        lines += [f"- ⚠ {w}" for w in table.warnings] + [""]
    for name, title in FIGURES.items():
        lines += [f"## {title}", "", f"![{title}](figures/{name}.png)", ""]
    return "\n".join(lines)


def _html(head: dict[str, Any], table: Table, pngs: dict[str, bytes]) -> str:
    cols, rows = _table_cells(table)
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>fedcomp report</title>',
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}dt{font-weight:bold}</style>",
        "</head><body>",
        "<h1>fedcomp report</h1>",
        "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in head.items()) + "</dl>",
        "<h2>Results</h2>",
        "<table><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr></thead><tbody>",
    ]
    parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
    parts += ["</tbody></table>", "<ul>" + "".join(f"<li>{e(n)}</li>" for n in _notes(table)) + "</ul>"]
    if table.warnings:
        parts += [
            '<h2 id="warnings">Warnings</h2>',
            "<p>Damaged run files; the report uses every intact row.</p>",
            "<ul>" + "".join(f"<li>⚠ {e(w)}</li>" for w in table.warnings) + "</ul>",
        ]
    for name, title in FIGURES.items():
        data = base64.b64encode(pngs[name]).decode("ascii")
        parts += [f"<h2>{e(title)}</h2>", f'<img alt="{e(title)}" id="{name}" src="data:image/png;base64,{data}">']
    parts += ["</body></html>", ""]
    return "\n".join(parts)


def _json(head: dict[str, Any], table: Table) -> dict[str, Any]:
    return {
        "header": head,
        "target_accuracy": table.target_accuracy,
        "target_source": table.target_source,
        "identity_bytes_per_client_round": table.identity_bytes,
        "identity_source": table.identity_source,
        "warnings": table.warnings,
        "groups": [r.as_dict() for r in table.rows],
    }


def _write_csv(path: Path, table: Table) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        metrics = (f"{k}_{s}" for k in METRICS for s in ("mean", "std"))
        w.writerow(["label", "uplink", "seeds", "status", *metrics, "warnings"])
        for row in table.rows:
            stats = [v for k in METRICS for v in (row.metrics[k].mean, row.metrics[k].std)]
            cells = ["" if v is None else v for v in stats]
            w.writerow([row.label, row.uplink, len(row.seeds), row.status, *cells, " | ".join(row.warnings)])
