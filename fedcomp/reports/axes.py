"""Byte axes that read for any range: a handful of ticks in kB/MB/GB that never overlap.

Matplotlib's log axis labels only powers of ten, and over less than a decade
it labels its minor ticks in scientific notation, which run into each other
(``1.301×10⁵1.3015×10⁵``). :class:`ByteLocator` picks, among a few kinds of
round values, the richest set whose labels fit side by side on the axis as
drawn, and :class:`ByteFormatter` writes them in human units. Simulated time
(:func:`time_axis`) uses the same locator over plain numbers in one unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import Formatter, Locator, MaxNLocator, NullFormatter, NullLocator

from fedcomp.reports.units import number_labels, short_bytes, tick_labels

MAX_TICKS = 7
MIN_LOG_TICKS = 3  # fewer round values per decade than this: the range is narrow, space ticks evenly
GAP = 2.0  # free space between neighbouring labels, in characters (x) or lines (y)
EM_WIDTH = 0.62  # a digit's width in DejaVu Sans, in em (a little more, for "MB")
LINE_HEIGHT = 1.2


class ByteFormatter(Formatter):
    """Human byte units, with the decimals the closest pair of ticks needs."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return short_bytes(x)  # one value alone (the cursor's readout): ticks go through format_ticks

    def format_ticks(self, values: list[float]) -> list[str]:
        return tick_labels(list(values))


class NumberFormatter(Formatter):
    """Plain numbers, each with the decimals it needs (the axis label names the unit)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return number_labels([x])[0]

    def format_ticks(self, values: list[float]) -> list[str]:
        return number_labels(list(values))


class ByteLocator(Locator):
    """Round byte values on a log (or linear) axis: 1-2-5 or 1-3 per decade, decades, every k-th decade,
    or evenly spaced round values inside a narrow range: the set with the most ticks whose labels fit.

    ``labels`` writes a set of ticks as the formatter will (their length decides what fits)."""

    def __init__(self, labels: Callable[[list[float]], list[str]] = tick_labels) -> None:
        self.labels = labels

    def __call__(self) -> list[float]:
        vmin, vmax = self.axis.get_view_interval()
        return self.tick_values(vmin, vmax)

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        lo, hi = sorted((float(vmin), float(vmax)))
        log = self.axis is not None and self.axis.get_scale() == "log"
        if log:
            lo = max(lo, 1e-9)
        if hi <= lo:
            return [lo]
        position = _positions(lo, hi, log)
        best: list[float] = []
        for kind, candidate in _candidates(lo, hi, log):
            if kind == "linear" and log and len(best) >= MIN_LOG_TICKS:
                break  # a decade or more: round values per decade read better than an even spread
            inside = [v for v in candidate if lo <= v <= hi]
            room = _room(self.axis, max((len(t) for t in self.labels(inside)), default=0))
            if len(best) < len(inside) <= MAX_TICKS and _fits(inside, position, room):
                best = inside
        return best or [lo, hi]


def _positions(lo: float, hi: float, log: bool) -> Callable[[float], float]:
    """Where a value lies along the axis, from 0 to 1."""
    if log:
        span = math.log10(hi) - math.log10(lo)
        return lambda v: (math.log10(v) - math.log10(lo)) / span
    return lambda v: (v - lo) / (hi - lo)


def _room(axis: Axis | None, chars: int) -> float:
    """The fraction of the axis one label of ``chars`` characters takes, with the gap to its neighbour.

    Estimated from the font size (a digit is about 0.6 em wide, a line 1.2 em high): the locator runs
    before the labels are drawn, so their real extents are not known yet.
    """
    if axis is None or axis.axes is None or axis.axes.figure is None:
        return 1.0 / MAX_TICKS
    box = axis.axes.get_window_extent()
    if box.width <= 1 or box.height <= 1:
        return 1.0 / MAX_TICKS
    size_pt = FontProperties(size=mpl.rcParams[f"{axis.axis_name}tick.labelsize"]).get_size_in_points()
    points = 72 / axis.axes.figure.dpi
    if axis.axis_name == "x":
        length_pt, label_pt = box.width * points, (chars + GAP) * EM_WIDTH * size_pt
    else:
        length_pt, label_pt = box.height * points, (1 + GAP) * LINE_HEIGHT * size_pt
    return min(1.0, label_pt / max(length_pt, 1.0))


def _fits(values: list[float], position: Callable[[float], float], room: float) -> bool:
    """Whether every pair of neighbours is at least ``room`` apart (a regular set is kept whole or not at all)."""
    return all(position(b) - position(a) >= room for a, b in zip(values, values[1:], strict=False))


def _candidates(lo: float, hi: float, log: bool) -> list[tuple[str, list[float]]]:
    """Sets of round values over [lo, hi]: per decade first (log axes), then evenly spaced ones."""
    out: list[tuple[str, list[float]]] = []
    if log:
        first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        for mantissas in ((1, 2, 5), (1, 3)):
            out.append(("log", [10.0**e * m for e in range(first, last + 1) for m in mantissas]))
        for every in (1, 2, 3, 4, 5, 10):
            out.append(("log", [10.0**e for e in range(first, last + 1) if e % every == 0]))
    # Inside a narrow range (or on a linear axis): evenly spaced round numbers, 1-2-2.5-5 steps.
    for nbins in range(MAX_TICKS, 1, -1):
        values = MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
        out.append(("linear", [float(v) for v in np.asarray(values) if v > 0 or not log]))
    return out


def byte_axis(ax: Axes, which: str = "x") -> None:
    """Make ``ax``'s x (or y) axis a byte axis: human units, ticks that fit, no labelled minor ticks."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(ByteLocator())
    axis.set_major_formatter(ByteFormatter())
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def time_axis(ax: Axes, which: str = "x") -> None:
    """Make ``ax``'s x (or y) axis one of plain numbers in one unit (simulated time): the byte axes' round
    values and spacing, labelled as numbers; the axis label names the unit."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(ByteLocator(number_labels))
    axis.set_major_formatter(NumberFormatter())
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())
