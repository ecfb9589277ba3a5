"""Errors a run raises to its caller (configuration errors are :class:`fedcomp.config.ConfigError`)."""

from __future__ import annotations


class RunFailedError(RuntimeError):
    """The federation ran but did not do what a run must: no round aggregated an update, or every
    client failed at warm-up. The message carries the first client's reason; the run directory
    records the rest (``summary.json`` says ``failed``)."""
