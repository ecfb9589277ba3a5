"""fedcomp: federated learning with compressed communication, every byte measured."""

from fedcomp.config import ConfigError, ExperimentConfig, config_from_dict, load_config
from fedcomp.engine import shared_engine
from fedcomp.errors import RunFailedError, RunInterruptedError

__all__ = [
    "CompressedStrategy",
    "CompressionMod",
    "ConfigError",
    "ExperimentConfig",
    "RunFailedError",
    "RunInterruptedError",
    "config_from_dict",
    "load_config",
    "load_model",
    "make_report",
    "resume",
    "run",
    "run_sweep",
    "shared_engine",
]


# The functions below import their module when called: ``import fedcomp`` (and the command line's start) stays
# free of torch, Flower and Ray, which those modules import.


def run(config, **kwargs):  # noqa: ANN001, ANN201 - re-exported, documented in fedcomp.simulation.run
    """Run one experiment; see :func:`fedcomp.simulation.run`."""
    from fedcomp.simulation import run as _run

    return _run(config, **kwargs)


def run_sweep(config, grid=None, **kwargs):  # noqa: ANN001, ANN201 - documented in fedcomp.sweep.run_sweep
    """Run a grid of configs × seeds; see :func:`fedcomp.sweep.run_sweep`."""
    from fedcomp.sweep import run_sweep as _run_sweep

    return _run_sweep(config, grid, **kwargs)


def make_report(paths, out_dir, **kwargs):  # noqa: ANN001, ANN201 - documented in fedcomp.reports.render
    """Write a report comparing runs; see :func:`fedcomp.reports.make_report`."""
    from fedcomp.reports import make_report as _make_report

    return _make_report(paths, out_dir, **kwargs)


def resume(run_dir, **kwargs):  # noqa: ANN001, ANN201 - documented in fedcomp.simulation.resume
    """Continue an interrupted run from its last checkpoint; see :func:`fedcomp.simulation.resume`."""
    from fedcomp.simulation import resume as _resume

    return _resume(run_dir, **kwargs)


def load_model(run_dir, *, trust_code=False):  # noqa: ANN001, ANN201 - documented in fedcomp.servers.recorder.load_model
    """The final model of a run as a runnable module; ``trust_code=True`` lets the run's config import
    the model it names by import path. See :func:`fedcomp.servers.recorder.load_model`."""
    from fedcomp.servers.recorder import load_model as _load_model

    return _load_model(run_dir, trust_code=trust_code)


def __getattr__(name):  # noqa: ANN001, ANN202 - lazy: the Flower building blocks import torch and flwr
    """``fedcomp.CompressionMod`` and ``fedcomp.CompressedStrategy`` (see :mod:`fedcomp.flower`)."""
    if name in ("CompressionMod", "CompressedStrategy"):
        import fedcomp.flower

        return getattr(fedcomp.flower, name)
    raise AttributeError(f"module 'fedcomp' has no attribute {name!r}")
