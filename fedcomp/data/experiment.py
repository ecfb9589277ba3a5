"""An experiment's data: its ``[data]`` loaded, and split across its ``federation.num_clients`` clients."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from fedcomp.data.base import SplitData, load_dataset
from fedcomp.data.custom import load_custom
from fedcomp.data.partition import POOLED, partition_indices
from fedcomp.imports import is_import_spec
from fedcomp.params import ConfigError
from fedcomp.schema import ExperimentConfig
from fedcomp.seeding import LOCAL_TEST, numpy_rng


def load_experiment_data(cfg: ExperimentConfig, data_dir: str | None = None) -> SplitData:
    """The experiment's ``[data]``: a registered set, or the user's own loader by import path.

    ``data_dir``: read from there instead of ``data.data_dir`` (a SuperNode's own data, node config
    ``data-dir``); a loader of your own gets it as its ``data_dir`` argument if it takes one.
    """
    d = cfg.data
    folder = d.data_dir if data_dir is None else data_dir
    if is_import_spec(d.dataset):
        return load_custom(d.dataset, json.dumps(d.params, sort_keys=True) if d.params else "", cfg.seed, folder)
    params = json.dumps(d.params, sort_keys=True) if d.params else ""
    return load_dataset(d.dataset, folder, d.download, d.test_size, cfg.seed, params)


def experiment_partitions(
    cfg: ExperimentConfig, labels: np.ndarray, given: Any = None, split: Any = None
) -> list[np.ndarray]:
    """Each client's indices as an experiment config splits ``labels`` (``[data]`` and ``federation.num_clients``).

    The one place the driver's checks, the clients and the benchmarks derive
    the partitions from a config, so they can never split differently.
    ``given``: the split the data came with (a loader's ``"clients"``), used
    as it is; ``federation.num_clients`` must then be its length.
    ``split``: the loaded :class:`~fedcomp.data.SplitData`, for its natural
    split and pool; loaded from the config (cached per process) when it is
    needed and not passed.
    """
    d = cfg.data
    n = cfg.federation.num_clients
    if given is not None:
        if len(given) != n:
            raise ValueError(f"the data comes split across {len(given)} clients, federation.num_clients is {n}")
        return [np.asarray(p) for p in given]
    if split is None and (d.partition == "natural" or (not is_import_spec(d.dataset) and d.dataset in POOLED)):
        split = load_experiment_data(cfg)
    if d.partition == "natural":
        natural = getattr(split, "natural", None)
        if natural is None:
            raise ConfigError(
                f"config key 'data.partition': 'natural' keeps the clients the data comes with, but {d.dataset!r} "
                "carries no client key (a loader returns one as 'client_keys': a column or a callable; "
                "see docs/configuration.md); use iid, dirichlet or pathological"
            )
        if len(natural) != n:
            raise ConfigError(
                f"config key 'federation.num_clients': the natural split of {d.dataset!r} has {len(natural)} "
                f"clients, federation.num_clients is {n}"
            )
        return [np.asarray(p).copy() for p in natural]
    pool = getattr(split, "pool", None)
    if pool is not None:
        pool = np.asarray(pool, dtype=np.int64)
        inner = partition_indices(
            np.asarray(labels)[pool],
            n,
            d.partition,
            alpha=d.alpha,
            classes_per_client=d.classes_per_client,
            seed=cfg.seed,
        )
        return [pool[p] for p in inner]
    return partition_indices(
        labels,
        n,
        d.partition,
        alpha=d.alpha,
        classes_per_client=d.classes_per_client,
        seed=cfg.seed,
    )


def held_out(indices: np.ndarray, fraction: float, seed: int, partition: int) -> tuple[np.ndarray, np.ndarray]:
    """A client's (train, test) indices: a seeded ``fraction`` of its partition held out, at least one each way."""
    order = numpy_rng(seed, LOCAL_TEST, partition).permutation(len(indices))
    n_test = min(max(1, round(fraction * len(indices))), len(indices) - 1)
    return np.sort(indices[order[n_test:]]), np.sort(indices[order[:n_test]])


def local_split(
    cfg: ExperimentConfig, split: SplitData, partition: int, mine: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """What client ``partition`` trains on and what it evaluates on (None: it does not evaluate).

    Clients evaluate when ``federation.evaluate_on`` is "clients" or "both". Under ``data.partition =
    "natural"``, on the data's own per-client test part where it has one (LEAF's split of each role's
    lines: :attr:`SplitData.natural_test`), so every line a client trains on stays its training data;
    otherwise on a seeded ``data.client_test_fraction`` of its partition. The client and the server (which
    checks the size a client reports) both call this, so they never disagree.
    """
    if cfg.federation.evaluate_on == "server":
        return mine, None
    natural_test = getattr(split, "natural_test", None)
    if cfg.data.partition == "natural" and natural_test is not None and len(natural_test[partition]):
        return mine, np.asarray(natural_test[partition])
    if len(mine) < 2:
        return mine, None
    return held_out(mine, cfg.data.client_test_fraction, cfg.seed, partition)
