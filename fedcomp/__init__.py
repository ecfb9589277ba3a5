"""fedcomp: federated learning with compressed communication, every byte measured."""

from fedcomp.config import ConfigError, ExperimentConfig, config_from_dict, load_config

__all__ = ["ConfigError", "ExperimentConfig", "config_from_dict", "load_config", "run"]


def run(config, **kwargs):  # noqa: ANN001, ANN201 - re-exported, documented in fedcomp.simulation.run
    """Run one experiment; see :func:`fedcomp.simulation.run`."""
    from fedcomp.simulation import run as _run

    return _run(config, **kwargs)
