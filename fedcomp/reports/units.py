"""Byte counts as people read them: B, kB, MB, GB in steps of 1000, as :func:`fedcomp.servers.app.human_bytes`.

``tick_labels`` writes a set of axis ticks with the fewest decimals that tell
them apart exactly (``10 MB``, ``20 MB``; ``130.10 kB``, ``130.12 kB``);
``parse_bytes`` reads a budget given on the command line (``10MB``, ``2.5 kB``, ``1e6``).

Simulated seconds (``[network]``) read the same way: ``human_seconds`` writes one value in s, min or h;
``time_unit`` picks one unit for a whole axis and ``number_labels`` writes its ticks.
"""

from __future__ import annotations

import math
import re

UNITS = (("B", 1.0), ("kB", 1e3), ("MB", 1e6), ("GB", 1e9))
MAX_DECIMALS = 9  # a tick one byte from its neighbour in MB: exact at 6


def unit_of(value: float) -> tuple[str, float]:
    """The largest unit in which ``value`` is at least 1 (B below 1 kB, GB from 1 GB on)."""
    name, scale = UNITS[0]
    for unit, size in UNITS:
        if abs(value) >= size:
            name, scale = unit, size
    return name, scale


def tick_labels(values: list[float]) -> list[str]:
    """Labels for axis ticks, each in its own unit; ticks of one unit share the fewest decimals that
    write all of them exactly, so neighbours always differ (``1.00 kB``, ``1.05 kB``; ``900 B``)."""
    scaled = []
    for v in values:
        unit, size = unit_of(v)
        scaled.append((v / size, unit))
    decimals = {unit: _decimals([x for x, u in scaled if u == unit]) for _, unit in scaled}
    return [f"{x:.{decimals[unit]}f} {unit}" for x, unit in scaled]


def _decimals(numbers: list[float]) -> int:
    for decimals in range(MAX_DECIMALS + 1):
        if all(math.isclose(round(x, decimals), x, rel_tol=1e-9, abs_tol=1e-12) for x in numbers):
            return decimals
    return MAX_DECIMALS


def short_bytes(value: float) -> str:
    """One value in its unit with three significant digits: ``1.3 kB``, ``20.7 MB``."""
    unit, size = unit_of(value)
    return f"{value / size:.3g} {unit}"


_BYTES = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kMG]?B)?\s*$")


def parse_bytes(text: str) -> float:
    """``"10MB"`` → 1e7; a plain number is bytes. Units are case-sensitive, as printed (kB, MB, GB)."""
    match = _BYTES.match(text)
    if not match:
        raise ValueError(f"not a byte count: {text!r} (write e.g. 250kB, 10MB, 1.5GB or 1e6)")
    number, unit = match.groups()
    value = float(number) * dict(UNITS)[unit or "B"]
    if value <= 0:
        raise ValueError(f"a byte budget must be positive, not {text!r}")
    return value


TIME_UNITS = (("s", 1.0), ("min", 60.0), ("h", 3600.0))


def time_unit(value: float) -> tuple[str, float]:
    """Seconds below two minutes, minutes below two hours, hours from there on (a value reads as 90 s, not 1.5 min)."""
    if abs(value) < 120:
        return TIME_UNITS[0]
    return TIME_UNITS[1] if abs(value) < 7200 else TIME_UNITS[2]


def human_seconds(value: float) -> str:
    """A duration with three significant digits in its unit (:func:`time_unit`): ``20.4 s``, ``3.5 min``, ``2.25 h``."""
    unit, size = time_unit(value)
    return f"{value / size:.3g} {unit}"


def number_labels(values: list[float]) -> list[str]:
    """Plain numbers, each with the fewest decimals that write it exactly (``0.5``, ``2``, ``20``)."""
    return [f"{v:.{_decimals([v])}f}" for v in values]
