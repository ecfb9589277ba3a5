"""Split a dataset's training part across clients, by Flower's partitioners.

``flwr-datasets`` partitioners run on an in-memory table of labels and
sample indices, so nothing touches the network. IID shuffles the indices
with the seed first (Flower's IidPartitioner cuts contiguous shards);
Dirichlet(α) and pathological (c classes per client) take the seed
directly. The result is cached per process: every client of a simulation
asks for the same split.

``natural`` is no partitioner: it keeps the clients the data comes with —
one per speaking role of each play in LEAF's Shakespeare (Caldas et al.,
"LEAF: A Benchmark for Federated Settings", 2018), one per writer in
FEMNIST — whatever key the samples carry (a column, a folder per client, a
callable: :func:`partition_by_key`). Such a split is non-IID by nature (each
client's own style and vocabulary) and unbalanced (a lead role speaks a
hundred times more than a messenger); :func:`client_sizes` summarizes it.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedcomp.params import ConfigError

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


POOLED: set[str] = set()
"""Registered sets whose training part holds samples no client may get (:attr:`SplitData.pool`): the
partitioners spread only the pool over clients, so :func:`fedcomp.data.experiment.experiment_partitions` loads the set (cached)."""


def partition_by_key(keys: Any, num_samples: int | None = None) -> tuple[list[np.ndarray], list[str]]:
    """The natural split of samples that carry a client key: each distinct key's sample indices.

    ``keys``: one key per sample (a column: a writer id, a user name, the
    folder a file lies in), or a callable ``key(i)`` for sample ``i`` (then
    ``num_samples`` says how many there are). Clients are ordered by key
    (as strings), so the split does not depend on the samples' order;
    returns the index arrays and the keys, as strings.
    """
    if callable(keys):
        if num_samples is None:
            raise ValueError("a client-key callable needs num_samples (it is called once per sample index)")
        keys = [keys(i) for i in range(num_samples)]
    column = np.asarray([str(k) for k in keys])
    if num_samples is not None and len(column) != num_samples:
        raise ValueError(f"{len(column)} client keys for {num_samples} samples: one key per sample is needed")
    if len(column) == 0:
        raise ValueError("no client keys: the data has no samples")
    names, inverse = np.unique(column, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(names)))[:-1]
    return [np.sort(p) for p in np.split(order, bounds)], [str(k) for k in names]


def folder_keys(paths: Any, root: str | Path) -> list[str]:
    """The client key of data stored as a folder per client: each file's first folder under ``root``.

    ``root/alice/0001.png`` → ``"alice"``; for a loader's ``"client_keys"``
    (:mod:`fedcomp.data.custom`). A file directly in ``root`` is an error.
    """
    base = Path(root).resolve()
    keys = []
    for path in paths:
        rel = Path(path).resolve().relative_to(base)
        if len(rel.parts) < 2:
            raise ValueError(f"{path} is not inside a client's folder under {root}")
        keys.append(rel.parts[0])
    return keys


def client_sizes(parts: Any) -> dict[str, float]:
    """How the samples spread over clients: count, total, min / median / mean / max, sd and the Gini index.

    What a report shows next to a natural split (a few lead roles hold most
    of the text) or a Dirichlet one; the Gini index is 0 for equal sizes and
    approaches 1 when one client holds everything.
    """
    sizes = np.sort(np.asarray([len(p) for p in parts], dtype=np.float64))
    if len(sizes) == 0:
        return {"clients": 0, "samples": 0}
    cum = np.cumsum(sizes)
    gini = float((len(sizes) + 1 - 2 * (cum / cum[-1]).sum()) / len(sizes)) if cum[-1] > 0 else 0.0
    return {
        "clients": len(sizes),
        "samples": int(sizes.sum()),
        "min": int(sizes[0]),
        "median": float(np.median(sizes)),
        "mean": float(sizes.mean()),
        "max": int(sizes[-1]),
        "sd": float(sizes.std()),
        "gini": gini,
    }


@functools.lru_cache(maxsize=8)
def _cached(key: tuple) -> tuple[np.ndarray, ...]:
    raw, num_clients, scheme, alpha, classes_per_client, seed = key
    labels = np.frombuffer(raw, dtype=np.int64)
    return tuple(_partition(labels, num_clients, scheme, alpha, classes_per_client, seed))


def _partition(
    labels: np.ndarray, num_clients: int, scheme: str, alpha: float, classes_per_client: int, seed: int
) -> list[np.ndarray]:
    n = len(labels)
    if num_clients > n:
        raise ConfigError(f"config key 'federation.num_clients': {num_clients} clients but only {n} training samples")
    if scheme == "iid":
        # flwr-datasets' IidPartitioner cuts the shuffled indices into contiguous shards (Hugging Face
        # datasets' shard(contiguous=True)), which is np.array_split: done here without importing `datasets`,
        # 1.3-1.7 CPU-s in every process that partitions, and Flower's deployment runtime starts one for every
        # message. Tested equal to IidPartitioner (tests/test_data.py).
        order = np.random.default_rng(seed).permutation(n)
        return _checked([np.sort(p) for p in np.array_split(order, num_clients)], scheme, n)
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, PathologicalPartitioner

    order = np.arange(n)
    if scheme == "dirichlet":
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
    elif scheme == "natural":
        raise ConfigError(
            "config key 'data.partition': 'natural' keeps the data's own clients; it needs the data set "
            "(experiment_partitions), not labels alone"
        )
    else:
        raise ConfigError(f"config key 'data.partition': unknown scheme {scheme!r}")

    partitioner.dataset = Dataset.from_dict({"label": labels[order], "idx": order})
    try:
        parts = [np.sort(np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64)) for i in range(num_clients)]
    except ValueError as exc:  # e.g. Dirichlet cannot meet the minimum size
        raise ConfigError(f"cannot partition {n} samples over {num_clients} clients with '{scheme}': {exc}") from exc
    return _checked(parts, scheme, n)


def _checked(parts: list[np.ndarray], scheme: str, n: int) -> list[np.ndarray]:
    """``parts`` if every client has data; warns when samples are left unused (classes no client holds)."""
    used = sum(len(p) for p in parts)
    if used < n:
        logger.warning("partition '%s' leaves %d of %d samples unused (classes no client holds)", scheme, n - used, n)
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ConfigError(f"partition '{scheme}' leaves clients {empty} without data; use fewer clients")
    return parts
