"""Checks that run before the engine starts: everything that can be known wrong is a ConfigError.

A mistake found after Ray has started costs the engine's start-up, leaves a
failed run directory and shows up as one traceback per client. What can be
checked in the driver is checked here, with the config key named:

- the data exists (``data.data_dir``), can be fetched if ``data.download``
  asks for it, and is large enough (``data.test_size``, every client's
  partition non-empty);
- the model builds on the data's shape and runs a forward pass;
- the model compressor applies to the model (LC groups, ALDS exclusions,
  BWCP's conv–BN layers) and every round its schedule names exists.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fedcomp.config import ConfigError, ExperimentConfig

SCHEDULE_FIELDS = ("start_round", "compress_at", "prune_at")
"""Model-compressor parameters that name federated rounds."""


def check_experiment(cfg: ExperimentConfig) -> None:
    """Raise :class:`ConfigError` naming the key if ``cfg`` cannot run; cheap (one dataset load, one forward)."""
    split = _check_data(cfg)
    _check_model(cfg, split)
    _check_model_compressor(cfg, split)


def _check_data(cfg: ExperimentConfig) -> Any:
    from fedcomp.data import experiment_partitions, load_dataset
    from fedcomp.data.base import DatasetNotFoundError

    d = cfg.data
    try:
        split = load_dataset(d.dataset, d.data_dir, d.download, d.test_size, cfg.seed)
    except ConfigError:
        raise
    except DatasetNotFoundError as exc:
        raise ConfigError(f"config key 'data.data_dir': {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a download or a damaged file: name it, whatever it is
        key = "data.download" if d.download else "data.data_dir"
        raise ConfigError(f"config key '{key}': dataset {d.dataset!r} could not be loaded: {_why(exc)}") from None
    parts = experiment_partitions(cfg, split.train.labels.numpy())
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ConfigError(
            f"config key 'data.partition': {len(empty)} of {len(parts)} clients get no training data "
            f"(first: client {empty[0]}); use fewer clients or another partition"
        )
    return split


def _check_model(cfg: ExperimentConfig, split: Any) -> torch.nn.Module:
    from fedcomp.servers.app import initial_model

    try:
        model = initial_model(cfg, split.input_shape, split.num_classes)
        model.eval()
        x = split.test.normalize(split.test.images[:2])
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - the user's model may raise anything
        raise ConfigError(
            f"config key 'model.name': model {cfg.model.name!r} does not run on {split.input_shape} inputs "
            f"of {cfg.data.dataset!r}: {_why(exc)}"
        ) from None
    if out.ndim != 2 or out.shape[1] != split.num_classes:
        raise ConfigError(
            f"config key 'model.name': model {cfg.model.name!r} gives outputs of shape {tuple(out.shape)}, "
            f"expected (batch, {split.num_classes}) for {cfg.data.dataset!r}"
        )
    return model


def _check_model_compressor(cfg: ExperimentConfig, split: Any) -> None:
    from fedcomp.compressors.model.base import build_model_compressor
    from fedcomp.compressors.model.structure import Architecture

    section = cfg.server_compression
    try:
        compressor = build_model_compressor(cfg, Architecture(cfg.model.name, split.input_shape, split.num_classes))
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ConfigError(
            f"config key 'server_compression': {section.name!r} does not apply to model {cfg.model.name!r}: {_why(exc)}"
        ) from None
    rounds = cfg.federation.rounds
    for f in dataclasses.fields(compressor.params):
        if f.name not in SCHEDULE_FIELDS:
            continue
        value = getattr(compressor.params, f.name)
        named = value if isinstance(value, list) else [value]
        beyond = [r for r in named if not 1 <= r <= rounds]
        if beyond:
            raise ConfigError(
                f"config key 'server_compression.{f.name}': round(s) {beyond} do not exist "
                f"(federation.rounds = {rounds})"
            )


def _why(exc: BaseException) -> str:
    text = str(exc).removeprefix("server_compression: ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
