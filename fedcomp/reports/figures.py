"""The report's figures (matplotlib, no display needed): one function each, returning the Figure.

Every group keeps one colour, marker and line style in every figure. Curves
are the mean over seeds, round by round, with a band of ± one standard
deviation of accuracy. Byte axes read in kB/MB/GB for any range
(:mod:`fedcomp.reports.axes`). Measured bytes are solid lines and markers;
formula-based budgets are dark dashed lines named "reference" in the legend,
never mixed with measurements. Legends sit below the axes, so they cover no data.
Simulated time (``[network]``, :func:`accuracy_vs_time`) is drawn like bytes,
on a log axis in one unit (s, min or h) for the whole axis.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedcomp.reports.axes import byte_axis, time_axis  # noqa: E402
from fedcomp.reports.compare import Entry, pareto_front  # noqa: E402
from fedcomp.reports.curves import Direction, curve  # noqa: E402
from fedcomp.reports.runs import RunGroup  # noqa: E402
from fedcomp.reports.table import Table  # noqa: E402
from fedcomp.reports.units import time_unit  # noqa: E402

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LINES = ("-", "--", "-.", ":")
REFERENCE = {"color": "#444444", "linestyle": (0, (6, 3)), "linewidth": 1.2}
LEGEND = {"fontsize": 9, "loc": "upper center", "bbox_to_anchor": (0.5, -0.16), "frameon": False}
DIRECTION_LABEL = {"total": "both directions", "uplink": "uplink", "downlink": "downlink"}


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15)  # legends below the axes too
    plt.close(fig)
    return buf.getvalue()


def style(i: int) -> dict[str, object]:
    """Group i's colour, marker and line style: lines that lie on top of each other stay distinguishable."""
    return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "linestyle": LINES[i % len(LINES)]}


def _legend(ax: Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    # Groups first, then what explains them (the Pareto front, references); long names one per line.
    order = sorted(range(len(labels)), key=lambda k: labels[k].startswith(("Pareto", "reference")))
    if handles:
        ncol = 1 if max(len(lab) for lab in labels) > 36 or len(handles) < 2 else 2
        ax.legend([handles[k] for k in order], [labels[k] for k in order], ncol=ncol, **LEGEND)


def _seed_curve(group: RunGroup, x_of: str) -> tuple[list[float], list[float], list[float]]:
    """Mean x, mean accuracy and accuracy's standard deviation over the seeds, round by round.

    ``x_of``: ``round``, a byte direction, or ``sim_s`` (the simulated clock; rounds without one are left out)."""
    by_round: dict[int, list[tuple[float, float]]] = {}
    for run in group.counted or group.runs:  # a group of partial runs only is drawn over those
        for p in curve(run):
            if x_of == "sim_s":
                if p.sim_s is None:
                    continue
                x = p.sim_s
            else:
                x = float(p.round) if x_of == "round" else float(max(p.spent(x_of), 1))
            by_round.setdefault(p.round, []).append((x, p.accuracy))
    xs, ys, sds = [], [], []
    for rnd in sorted(by_round):
        pts = by_round[rnd]
        mean = sum(a for _, a in pts) / len(pts)
        xs.append(sum(x for x, _ in pts) / len(pts))
        ys.append(mean)
        sds.append(math.sqrt(sum((a - mean) ** 2 for _, a in pts) / (len(pts) - 1)) if len(pts) > 1 else 0.0)
    return xs, ys, sds


def _curves(ax: Axes, groups: list[RunGroup], x_of: str, scale: float = 1.0) -> None:
    """Each group's mean curve and its band; x divided by ``scale`` (a time unit's seconds)."""
    for i, g in enumerate(groups):
        xs, ys, sds = _seed_curve(g, x_of)
        if not xs:
            continue
        xs = [x / scale for x in xs]
        st = style(i)
        ax.plot(xs, ys, markersize=4, label=f"{g.label} ({len(g.counted)} seeds)", **st)
        if any(sds):
            lo = [y - s for y, s in zip(ys, sds, strict=True)]
            hi = [y + s for y, s in zip(ys, sds, strict=True)]
            ax.fill_between(xs, lo, hi, color=st["color"], alpha=0.18, linewidth=0)


def _log_bytes_panel(ax: Axes, xlabel: str, title: str) -> None:
    """A panel whose x axis is bytes on a log scale, in human units (both accuracy-against-bytes figures)."""
    ax.set_xscale("log")
    byte_axis(ax)
    ax.set(xlabel=xlabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend(ax)


def accuracy_vs_bytes(groups: list[RunGroup]) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True, layout="constrained")
    for ax, direction in zip(axes, ("total", "uplink"), strict=True):
        _curves(ax, groups, direction)
        _log_bytes_panel(
            ax,
            f"cumulative bytes, {DIRECTION_LABEL[direction]} (all clients, log scale)",
            f"Accuracy against bytes sent, {DIRECTION_LABEL[direction]}",
        )
    axes[0].set_ylabel("test accuracy (mean ± sd over seeds)")
    return fig


def has_clock(groups: list[RunGroup]) -> bool:
    """Whether any evaluated round of any run carries a simulated clock (``[network]``)."""
    return any(p.sim_s is not None for g in groups for run in g.runs for p in curve(run))


def accuracy_vs_time(groups: list[RunGroup]) -> Figure:
    """Accuracy against the simulated clock (``[network]``: ``sim_clock_s`` at the end of each evaluated round),
    mean ± sd over seeds; the x axis on a log scale, in one unit for the whole axis. Groups without a clock are
    left out and named in the title."""
    clocks = [p.sim_s for g in groups for run in g.runs for p in curve(run) if p.sim_s is not None]
    unit, scale = time_unit(max(clocks, default=1.0))
    fig, ax = plt.subplots(figsize=(7, 4.8), layout="constrained")
    _curves(ax, groups, "sim_s", scale)
    ax.set_xscale("log")
    time_axis(ax)
    missing = [g.label for g in groups if not any(p.sim_s is not None for r in g.runs for p in curve(r))]
    title = "Accuracy against simulated time"
    if missing:
        title += f"\n(no simulated clock: {', '.join(missing)})"
    ax.set(xlabel=f"simulated time, {unit} ([network] model, log scale)", ylabel="test accuracy (mean ± sd over seeds)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend(ax)
    return fig


def accuracy_vs_rounds(groups: list[RunGroup]) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4.8), layout="constrained")
    _curves(ax, groups, "round")
    ax.set(xlabel="round", ylabel="test accuracy (mean ± sd over seeds)", title="Accuracy against rounds")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    _legend(ax)
    return fig


def reference_budgets(groups: list[RunGroup], n_params: int | None) -> list[tuple[str, float]]:
    """Formula-based bytes per client per round: dense fp32, and naive sparse k·(⌈log₂ n⌉ + 32) bits."""
    if not n_params:
        return []
    refs = [(f"dense fp32: 32·n bits (n = {n_params:,})", 4.0 * n_params)]
    densities = sorted({d for g in groups if (d := _density(g)) is not None})
    for d in densities:
        k = math.ceil(d * n_params)
        bits = k * (math.ceil(math.log2(n_params)) + 32)
        refs.append((f"naive sparse, density {d:g}: k·(⌈log₂n⌉+32) bits", bits / 8))
    return refs


def _density(group: RunGroup) -> float | None:
    """The group's uplink density, its compressor's default included (None for dense codecs)."""
    from fedcomp.compressors.update import UPDATE_COMPRESSORS  # the codecs (and numba) only for a density axis

    section = group.config.get("uplink", {})
    uplink = dict(section) if isinstance(section, dict) else {}
    name = uplink.pop("name", "identity")
    if not isinstance(name, str) or name not in UPDATE_COMPRESSORS:
        return None
    try:
        params = UPDATE_COMPRESSORS.get(name).parse_params(uplink, "uplink")
    except (ValueError, TypeError):
        return None
    density = getattr(params, "density", None)
    return float(density) if density is not None else None


def _per_client(group: RunGroup, key: str, count: str) -> tuple[list[int], list[float]]:
    per_round: dict[int, list[float]] = {}
    for run in group.counted or group.runs:
        for r in run.rows:
            m = len(r[count]) if isinstance(r[count], list) else int(r[count])
            if m:
                per_round.setdefault(int(r["round"]), []).append(int(r[key]) / m)
    rounds = sorted(per_round)
    return rounds, [sum(per_round[t]) / len(per_round[t]) for t in rounds]


def bytes_per_round(groups: list[RunGroup], n_params: int | None) -> Figure:
    refs = reference_budgets(groups, n_params)
    # Room for a legend of one line per group and reference below each panel.
    fig, (up, down) = plt.subplots(1, 2, figsize=(11, 4.2 + 0.2 * (len(groups) + len(refs))), layout="constrained")
    panels = ((up, "uplink_bytes", "clients", "Uplink"), (down, "downlink_bytes", "sampled_clients", "Downlink"))
    for ax, key, count, title in panels:
        series = [_per_client(g, key, count) for g in groups]
        for i, (g, (rounds, values)) in enumerate(zip(groups, series, strict=True)):
            if rounds:
                ax.plot(rounds, values, markersize=5, label=g.label, **style(i))
        for label, value in refs if ax is up else refs[:1]:  # a sparse budget is the uplink's alone
            ax.axhline(value, label=f"reference — {label}", **REFERENCE)
        same = len(groups) > 1 and _coincide([v for _, vs in series for v in vs])  # lines on top of each other
        ax.set_yscale("log")
        byte_axis(ax, "y")
        ax.set(xlabel="round", title=f"{title} per client per round" + (" (the same for every group)" if same else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        _legend(ax)
    up.set_ylabel("bytes per client (log scale)")
    return fig


def _coincide(values: list[float]) -> bool:
    """Whether every value is within 0.5% of the others (the lines lie on top of each other)."""
    return bool(values) and max(values) <= min(values) * 1.005


def frontier(table: Table) -> Figure:
    """Final accuracy against total bytes and against uplink bytes; ★ where no group is better beyond noise."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True, layout="constrained")
    for ax, direction in zip(axes, ("total", "uplink"), strict=True):
        _frontier_panel(ax, table, direction)
    axes[0].set_ylabel("final test accuracy (mean ± sd over seeds)")
    return fig


def _entry(label: str, values: list[float | None], seeds: list[int]) -> Entry | None:
    known = [(v, s) for v, s in zip(values, seeds, strict=True) if v is not None]
    return Entry(label, tuple(v for v, _ in known), tuple(s for _, s in known)) if known else None


def _frontier_panel(ax: Axes, table: Table, direction: Direction) -> None:
    key = f"{direction}_bytes"
    points: list[tuple[Entry, Entry]] = []
    index = []
    for i, row in enumerate(table.rows):
        if not row.counted:  # partial runs only: shown in the table, never on the frontier
            continue
        b = _entry(row.label, row.metrics[key].values, row.seeds)
        a = _entry(row.label, row.metrics["final_accuracy"].values, row.seeds)
        if b is not None and a is not None and b.mean > 0:
            points.append((b, a))
            index.append(i)
    front = set(pareto_front(points))
    for k, ((b, a), i) in enumerate(zip(points, index, strict=True)):
        st = style(i)
        on_front = k in front
        ax.errorbar(
            b.mean,
            a.mean,
            xerr=b.std or None,
            yerr=a.std or None,
            fmt="*" if on_front else str(st["marker"]),
            markersize=14 if on_front else 7,
            color=st["color"],
            capsize=3,
            label=f"{b.label}{' ★' if on_front else ''}",
        )
    if len(front) > 1:
        fx, fy = zip(*sorted((points[k][0].mean, points[k][1].mean) for k in front), strict=True)
        ax.plot(fx, fy, color="black", linewidth=1, linestyle=":", label="Pareto front (★: none better beyond noise)")
    _log_bytes_panel(
        ax,
        f"bytes, {DIRECTION_LABEL[direction]}, whole run (log scale)",
        f"Accuracy–bytes frontier, {DIRECTION_LABEL[direction]}",
    )
