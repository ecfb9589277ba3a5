"""Write a report: self-contained HTML, the same as Markdown, and the table as CSV and JSON.

OUT/report.html     figures embedded as data: URIs (one file to mail around, no server, works offline);
                    click a column's header to sort the table
OUT/report.md       the same text; figures next to it in OUT/figures/
OUT/table.csv       one row per group: mean and std of every metric
OUT/table.json      header, target, ratio source, the headline and every group with per-seed values
OUT/figures/*.png   accuracy_vs_time.png only when the runs carry a simulated clock ([network])

The report opens with its answer (:mod:`fedcomp.reports.headline`), then a
compact table (:mod:`fedcomp.reports.cells`), then the figures. A run with
damaged files is reported over what is intact: the table's "notes" column
marks its group (⚠) and a "Warnings" section names each file and line;
:attr:`Report.warnings` has the same lines for the command line.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcomp.reports import figures
from fedcomp.reports.cells import table_cells
from fedcomp.reports.compare import BYTES_TIE_FRACTION
from fedcomp.reports.headline import Headline, make_headline
from fedcomp.reports.runs import RunGroup, RunRecord, check_same_experiment, expand, group_runs
from fedcomp.reports.table import METRICS, Table, build_table
from fedcomp.servers.app import human_bytes

FIGURES = {
    "frontier": "Accuracy–bytes frontier, both directions and uplink (★ = no group better beyond noise)",
    "accuracy_vs_bytes": "Accuracy against cumulative bytes, both directions and uplink (band: ± 1 sd over seeds)",
    "accuracy_vs_rounds": "Accuracy against rounds (band: ± 1 sd over seeds)",
    "bytes_per_round": "Bytes per client per round, each way (dashed: formula-based references)",
    "accuracy_vs_time": "Accuracy against simulated time: the [network] model's clock, not a measurement "
    "(band: ± 1 sd over seeds)",
}
"""Every figure a report can have, in the order shown; ``accuracy_vs_time`` only with a simulated clock."""


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
    headline: Headline | None = None


def make_report(
    paths: list[str | Path],
    out_dir: str | Path,
    target: float | Sequence[float] | None = None,
    allow_mixed: bool = False,
    budgets: Sequence[float] | None = None,
) -> Report:
    """Read runs (and sweeps), group them by seed, write every report file under ``out_dir``.

    ``target``: one accuracy or several (the table uses the first; the headline answers each); default:
    :func:`fedcomp.reports.table.default_target`. ``budgets``: total bytes (both directions) for the
    headline; default: :func:`fedcomp.reports.headline.default_budgets`.
    """
    notes: list[str] = []
    runs = expand(list(paths), notes)
    if not allow_mixed:
        check_same_experiment(runs)
    groups = group_runs(runs)
    targets = [target] if isinstance(target, int | float) else list(target or [])
    table = build_table(groups, targets[0] if targets else None)
    if not targets and table.target_accuracy is not None:
        targets = [table.target_accuracy]
    headline = make_headline(groups, targets, budgets)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    n_params = _model_size(runs)
    pngs = {
        "frontier": figures.png(figures.frontier(table)),
        "accuracy_vs_bytes": figures.png(figures.accuracy_vs_bytes(groups)),
        "accuracy_vs_rounds": figures.png(figures.accuracy_vs_rounds(groups)),
        "bytes_per_round": figures.png(figures.bytes_per_round(groups, n_params)),
    }
    if figures.has_clock(groups):
        pngs["accuracy_vs_time"] = figures.png(figures.accuracy_vs_time(groups))
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
        headline,
    )
    report.json.write_text(json.dumps(_json(head, table, headline), indent=2), encoding="utf-8")
    _write_csv(report.csv, table)
    report.markdown.write_text(_markdown(head, table, headline, list(pngs)), encoding="utf-8")
    report.html.write_text(_html(head, table, headline, pngs), encoding="utf-8")
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
    sizes = {json.dumps(r.summary["client_sizes"], sort_keys=True) for r in runs if r.summary.get("client_sizes")}
    if len(sizes) == 1:  # the runs share one split (a seed of its own per run would differ: then none shown)
        partition += f" ({client_sizes_line(json.loads(sizes.pop()))})"
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


def client_sizes_line(sizes: dict[str, Any]) -> str:
    """``client_sizes`` (summary.json) in words: how many examples each client trains on, and how unequal."""
    return f"examples per client {sizes['min']}–{sizes['max']}, median {sizes['median']:g}, Gini {sizes['gini']:.2f}"


def _header_lines(head: dict[str, Any]) -> tuple[str, str]:
    """The experiment on one line, the versions on another."""
    experiment = (
        f"{head['dataset']} · {head['partition']} · {head['model']} · {head['clients']} clients, "
        f"fraction {head['clients per round (fraction)']} per round · {head['rounds']} rounds × "
        f"{head['local epochs']} local epochs · runs: {head['runs']}"
    )
    versions = (
        f"fedcomp version {head['fedcomp version']} · Flower version {head['Flower version']} · "
        f"generated {head['generated']}"
    )
    return experiment, versions


def _model_size(runs: list[RunRecord]) -> int | None:
    for r in runs:
        state = r.model_state()
        if state:
            return sum(v.numel() for v in state.values() if v.is_floating_point())
    return None


# ----------------------------------------------------------------------------- text around the table


def _rules(headline: Headline) -> str:
    budgets = "given" if headline.budget_source == "given" else headline.budget_source
    timed = (
        ", and the simulated time to it (the [network] model's clock at that round, a model, not a measurement)"
        if any(q.direction == "time" for q in headline.targets)
        else ""
    )
    return (
        f"Budgets are bytes of both directions together: {budgets}; accuracy within a budget is the best "
        "evaluated accuracy among the rounds that ended within it. Bytes to a target are asked for both "
        f"directions, the uplink and the downlink{timed}. Only complete runs count, one per seed; a method counts "
        "only if every seed has a value. Ties: where methods ran the same seeds, the paired per-seed "
        "differences are within their 95% t-interval; otherwise the difference of the means is within the "
        f"larger seed standard deviation (bytes also tie within {BYTES_TIE_FRACTION:.0%}); with one seed each "
        "there is no spread, so the first only leads."
    )


def _notes(table: Table) -> list[str]:
    target = "none" if table.target_accuracy is None else f"{table.target_accuracy:.4g}"
    ratio = "—" if table.identity_bytes is None else human_bytes(table.identity_bytes)
    return [
        f"Target accuracy: {target} ({table.target_source}; --target sets it). Bytes and rounds to it: at the "
        "first evaluated round at or above it; '(k/n seeds)': only k of n seeds got there, the mean is over those.",
        f"↑ ratio = identity bytes per client per round ({ratio}; {table.identity_source}) "
        "/ the run's uplink bytes per client per round.",
        "Values are mean ± standard deviation over seeds; bytes are payload lengths as sent, all clients.",
        "Failures, summed over the seeds: failed client replies, rounds in which no client's update was "
        "aggregated (w/o update), failed runs.",
        "Partial runs (crashed, failed or still running) are reported over the rounds they finished.",
        "Sorted by final accuracy (click a header to sort); every metric per group and seed: table.csv, table.json.",
    ] + ([SIMULATED_NOTE] if table.simulated else [])


SIMULATED_NOTE = (
    "sim. time: the [network] model's simulated clock (sim_clock_s), a model, not a measurement: each round lasts "
    "as long as its slowest sampled client's train message down, compute and reply up over the configured links "
    "(docs/runs.md, 'Simulated time'). 'sim. time to' is the clock at the first evaluated round at or above the "
    "target; the whole run's simulated time is in table.csv and table.json (sim_clock_s)."
)


def _markdown(head: dict[str, Any], table: Table, headline: Headline, pngs: list[str]) -> str:
    cols, rows = table_cells(table)
    experiment, versions = _header_lines(head)
    lines = ["# fedcomp report", "", experiment, "", f"<sub>{versions}</sub>", "", "## Answer", ""]
    if headline.bottom_line:
        lines += [f"**{headline.bottom_line}**", ""]
    lines += [f"- {q.sentence(lambda s: f'**{s}**')}" for q in headline.questions] or ["- no evaluated rounds"]
    if headline.left_out:
        lines += [f"- Not counted (no complete run): {', '.join(headline.left_out)}."]
    lines += ["", f"_{_rules(headline)}_", ""]
    lines += ["## Results", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(c.text.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines += [""] + [f"- {n}" for n in _notes(table)] + [""]
    if table.warnings:
        lines += ["## Warnings", "", "Damaged run files; the report uses every intact row.", ""]
        lines += [f"- ⚠ {w}" for w in table.warnings] + [""]
    for name in pngs:
        title = FIGURES[name]
        lines += [f"## {title}", "", f"![{title}](figures/{name}.png)", ""]
    return "\n".join(lines)


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}"
    "h1{margin:0 0 .2em}h2{margin:1.2em 0 .4em}.meta{color:#555;font-size:12px;margin:0}"
    "#headline li{margin:.25em 0}.rules{color:#444;font-size:13px}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;"
    "text-align:right;white-space:nowrap}td:first-child,th:first-child{text-align:left}"
    "th{cursor:pointer;background:#f4f4f4}th[aria-sort=ascending]::after{content:' ▲'}"
    "th[aria-sort=descending]::after{content:' ▼'}.notes{font-size:12px;color:#444}"
    ".compact{font-size:12px}.compact td,.compact th{padding:3px 5px}"
    "figure{margin:1em 0}img{max-width:100%;height:auto;display:block}figcaption{font-weight:bold;margin:.3em 0}"
)

# Sorting by a column: numbers as numbers, empty cells last; click again to reverse. No library, no server.
SORT_SCRIPT = """
document.querySelectorAll("#results th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
  th.parentNode.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
  const key = tr => { const v = tr.cells[col].dataset.v; return v === undefined ? null : isNaN(+v) ? v : +v; };
  const rows = [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    return x === null ? 1 : y === null ? -1 : (x < y ? -1 : x > y ? 1 : 0) * dir;
  });
  rows.forEach(r => body.appendChild(r));
}));
"""


def _html(head: dict[str, Any], table: Table, headline: Headline, pngs: dict[str, bytes]) -> str:
    cols, rows = table_cells(table)
    e = html.escape
    experiment, versions = _header_lines(head)
    answers = [f"<li>{q.sentence(lambda s: f'<strong>{e(s)}</strong>', e)}</li>" for q in headline.questions]
    if headline.left_out:
        answers.append(f"<li>Not counted (no complete run): {e(', '.join(headline.left_out))}.</li>")
    bottom = f'<p class="bottom-line"><strong>{e(headline.bottom_line)}</strong></p>' if headline.bottom_line else ""
    # One column more with a network model: narrower cell padding keeps the table within a laptop's window.
    compact = ' class="compact"' if table.simulated else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>fedcomp report</title>',
        f"<style>{STYLE}</style>",
        "</head><body>",
        "<h1>fedcomp report</h1>",
        f'<p class="experiment">{e(experiment)}</p><p class="meta">{e(versions)}</p>',
        '<section id="headline"><h2>Answer</h2>'
        + bottom
        + "<ul>"
        + ("".join(answers) or "<li>no evaluated rounds</li>")
        + "</ul>",
        f'<p class="rules">{e(_rules(headline))}</p></section>',
        "<h2>Results</h2>",
        f'<table id="results"{compact}><thead><tr>'
        + "".join(f"<th>{e(c)}</th>" for c in cols)
        + "</tr></thead><tbody>",
    ]
    for r in rows:
        tds = "".join(f"<td{_sort_attr(c.sort)}>{e(c.text)}</td>" for c in r)
        parts.append(f"<tr>{tds}</tr>")
    parts += ["</tbody></table>", '<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in _notes(table)) + "</ul>"]
    if table.warnings:
        parts += [
            '<h2 id="warnings">Warnings</h2>',
            "<p>Damaged run files; the report uses every intact row.</p>",
            "<ul>" + "".join(f"<li>⚠ {e(w)}</li>" for w in table.warnings) + "</ul>",
        ]
    for name, png in pngs.items():
        title = FIGURES[name]
        data = base64.b64encode(png).decode("ascii")
        parts += [
            f"<figure><figcaption>{e(title)}</figcaption>",
            f'<img alt="{e(title)}" id="{name}" src="data:image/png;base64,{data}"></figure>',
        ]
    parts += [f"<script>{SORT_SCRIPT}</script>", "</body></html>", ""]
    return "\n".join(parts)


def _sort_attr(value: float | str | None) -> str:
    return "" if value is None else f' data-v="{html.escape(str(value))}"'


def _json(head: dict[str, Any], table: Table, headline: Headline) -> dict[str, Any]:
    return {
        "header": head,
        "target_accuracy": table.target_accuracy,
        "target_source": table.target_source,
        "identity_bytes_per_client_round": table.identity_bytes,
        "identity_source": table.identity_source,
        "headline": headline.as_dict(),
        "warnings": table.warnings,
        "groups": [r.as_dict() for r in table.rows],
    }


def _write_csv(path: Path, table: Table) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        metrics = (f"{k}_{s}" for k in METRICS for s in ("mean", "std"))
        w.writerow(["label", "uplink", "seeds", "status", *metrics, "failed_runs", "warnings"])
        for row in table.rows:
            stats = [v for k in METRICS for v in (row.metrics[k].mean, row.metrics[k].std)]
            cells = ["" if v is None else v for v in stats]
            w.writerow(
                [row.label, row.uplink, len(row.seeds), row.status, *cells, row.failed_runs, " | ".join(row.warnings)]
            )
