"""Split a dataset's training part across clients, by Flower's partitioners.

``flwr-datasets`` partitioners run on an in-memory table of labels and
sample indices, so nothing touches the network. IID shuffles the indices
with the seed first (Flower's IidPartitioner cuts contiguous shards);
Dirichlet(α) and pathological (c classes per client) take the seed
directly. The result is cached per process: every client of a simulation
asks for the same split.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from fedcomp.config import ConfigError, ExperimentConfig

logger = logging.getLogger(__name__)


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    scheme: str = "iid",
    *,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Indices into ``labels`` for each client (sorted, disjoint)."""
    labels = np.asarray(labels, dtype=np.int64)
    key = (labels.tobytes(), num_clients, scheme, float(alpha), classes_per_client, seed)
    return [p.copy() for p in _cached(key)]


def experiment_partitions(cfg: ExperimentConfig, labels: np.ndarray, given: Any = None) -> list[np.ndarray]:
    """Each client's indices as an experiment config splits ``labels`` (``[data]`` and ``federation.num_clients``).

    The one place the driver's checks, the clients and the benchmarks derive
    the partitions from a config, so they can never split differently.
    ``given``: the split the data came with (a loader's ``"clients"``), used
    as it is; ``federation.num_clients`` must then be its length.
    """
    if given is not None:
        if len(given) != cfg.federation.num_clients:
            raise ValueError(
                f"the data comes split across {len(given)} clients, federation.num_clients is {cfg.federation.num_clients}"
            )
        return [np.asarray(p) for p in given]
    d = cfg.data
    return partition_indices(
        labels,
        cfg.federation.num_clients,
        d.partition,
        alpha=d.alpha,
        classes_per_client=d.classes_per_client,
        seed=cfg.seed,
    )


@functools.lru_cache(maxsize=8)
def _cached(key: tuple) -> tuple[np.ndarray, ...]:
    raw, num_clients, scheme, alpha, classes_per_client, seed = key
    labels = np.frombuffer(raw, dtype=np.int64)
    return tuple(_partition(labels, num_clients, scheme, alpha, classes_per_client, seed))


def _partition(
    labels: np.ndarray, num_clients: int, scheme: str, alpha: float, classes_per_client: int, seed: int
) -> list[np.ndarray]:
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    n = len(labels)
    if num_clients > n:
        raise ConfigError(f"config key 'federation.num_clients': {num_clients} clients but only {n} training samples")
    order = np.arange(n)
    if scheme == "iid":
        order = np.random.default_rng(seed).permutation(n)
        partitioner = IidPartitioner(num_partitions=num_clients)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min(10, n // (2 * num_clients)),
            self_balancing=False,
            seed=seed,
        )
    elif scheme == "pathological":
        num_classes = len(np.unique(labels))
        if not 1 <= classes_per_client <= num_classes:
            raise ConfigError(
                f"config key 'data.classes_per_client': expected 1..{num_classes}, got {classes_per_client}"
            )
        partitioner = PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_classes_per_partition=classes_per_client,
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    else:
        raise ConfigError(f"config key 'data.partition': unknown scheme {scheme!r}")

    partitioner.dataset = Dataset.from_dict({"label": labels[order], "idx": order})
    try:
        parts = [np.sort(np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64)) for i in range(num_clients)]
    except ValueError as exc:  # e.g. Dirichlet cannot meet the minimum size
        raise ConfigError(f"cannot partition {n} samples over {num_clients} clients with '{scheme}': {exc}") from exc
    used = sum(len(p) for p in parts)
    if used < n:
        logger.warning("partition '%s' leaves %d of %d samples unused (classes no client holds)", scheme, n - used, n)
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ConfigError(f"partition '{scheme}' leaves clients {empty} without data; use fewer clients")
    return parts
