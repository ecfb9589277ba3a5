"""The report's figures (matplotlib, no display needed): PNG bytes, one function each.

Measured bytes are solid lines and markers; formula-based budgets are grey
dashed lines labelled as references, never mixed with measurements.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedcomp.reports.runs import RunGroup  # noqa: E402
from fedcomp.reports.table import Table, accuracy_curve  # noqa: E402


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _mean_curve(group: RunGroup, x_of: Callable[[tuple[int, float, int]], float]) -> tuple[list[float], list[float]]:
    """Accuracy against x, averaged over the group's seeds round by round."""
    by_round: dict[int, list[tuple[float, float]]] = {}
    for run in group.runs:
        for point in accuracy_curve(run):
            by_round.setdefault(point[0], []).append((x_of(point), point[1]))
    xs, ys = [], []
    for rnd in sorted(by_round):
        pts = by_round[rnd]
        xs.append(sum(p[0] for p in pts) / len(pts))
        ys.append(sum(p[1] for p in pts) / len(pts))
    return xs, ys


def accuracy_vs_uplink(groups: list[RunGroup]) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g in groups:
        xs, ys = _mean_curve(g, lambda p: max(p[2], 1))
        ax.plot(xs, ys, marker="o", markersize=3, label=g.label)
    ax.set_xscale("log")
    ax.set(xlabel="cumulative uplink bytes (all clients, log scale)", ylabel="test accuracy")
    ax.set_title("Accuracy against uplink bytes")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def accuracy_vs_rounds(groups: list[RunGroup]) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g in groups:
        xs, ys = _mean_curve(g, lambda p: p[0])
        ax.plot(xs, ys, marker="o", markersize=3, label=g.label)
    ax.set(xlabel="round", ylabel="test accuracy", title="Accuracy against rounds")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


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
    from fedcomp.compressors.update import UPDATE_COMPRESSORS

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


def bytes_per_round(groups: list[RunGroup], n_params: int | None) -> bytes:
    fig, (up, down) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for g in groups:
        for ax, key, count in ((up, "uplink_bytes", "clients"), (down, "downlink_bytes", "sampled_clients")):
            per_round: dict[int, list[float]] = {}
            for run in g.runs:
                for r in run.rows:
                    m = len(r[count]) if isinstance(r[count], list) else int(r[count])
                    if m:
                        per_round.setdefault(int(r["round"]), []).append(int(r[key]) / m)
            rounds = sorted(per_round)
            ax.plot(
                rounds, [sum(per_round[t]) / len(per_round[t]) for t in rounds], marker="o", markersize=3, label=g.label
            )
    for label, value in reference_budgets(groups, n_params):
        for ax in (up, down):
            ax.axhline(value, color="grey", linestyle="--", linewidth=1)
        up.annotate(f"reference — {label}", (0.01, value), xycoords=("axes fraction", "data"), fontsize=7,
                    color="dimgrey", va="bottom")  # fmt: skip
    up.set(yscale="log", xlabel="round", ylabel="bytes per client (log scale)", title="Uplink per client per round")
    down.set(xlabel="round", title="Downlink per client per round")
    for ax in (up, down):
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    up.legend(fontsize=8)
    return _png(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (fewer or equal bytes and higher or equal accuracy, one strictly)."""
    front = []
    for i, (b, a) in enumerate(points):
        dominated = any((b2 <= b and a2 >= a) and (b2 < b or a2 > a) for j, (b2, a2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def frontier(table: Table) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [r for r in table.rows if r.metrics["final_accuracy"].mean is not None and r.metrics["uplink_bytes"].mean]
    points = [(r.metrics["uplink_bytes"].mean or 0.0, r.metrics["final_accuracy"].mean or 0.0) for r in rows]
    front = set(pareto_front(points))
    for i, (row, (x, y)) in enumerate(zip(rows, points, strict=True)):
        err = row.metrics["final_accuracy"].std or 0.0
        ax.errorbar(x, y, yerr=err, fmt="*" if i in front else "o", markersize=12 if i in front else 6, capsize=3)
        ax.annotate(row.label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if front:
        fx, fy = zip(*sorted(points[i] for i in front), strict=True)
        ax.plot(fx, fy, color="black", linewidth=1, linestyle=":", label="Pareto front (★)")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="total uplink bytes (log scale)", ylabel="final test accuracy", title="Accuracy–bytes frontier")
    ax.grid(True, which="both", alpha=0.3)
    return _png(fig)
