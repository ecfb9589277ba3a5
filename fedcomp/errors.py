"""Errors fedcomp raises to its caller (configuration errors are :class:`fedcomp.params.ConfigError`).

Kept free of heavy imports: the command line loads this module to name its exit statuses."""

from __future__ import annotations


class RunFailedError(RuntimeError):
    """The federation ran but did not do what a run must: no round aggregated an update, or every
    client failed at warm-up. The message carries the first client's reason; the run directory
    records the rest (``summary.json`` says ``failed``)."""


class ReportError(ValueError):
    """A report or sweep input is not usable: not a run, mixed experiments, an unknown key."""


class RunInterruptedError(RuntimeError):
    """The run was stopped by Ctrl-C (SIGINT) before its last round. Every finished round and its
    checkpoint are in the run directory (``summary.json`` says ``interrupted``); ``fedcomp run
    --resume RUN_DIR`` (or :func:`fedcomp.resume`) continues it."""
