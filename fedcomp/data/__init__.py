"""Datasets (the embedded default, torchvision's, Fashion-MNIST from Debian, LEAF's Shakespeare) and partitioners."""

from fedcomp.data import embedded, shakespeare, torchvision_sets  # noqa: E402,F401  (register)
from fedcomp.data.base import DATASETS, DatasetNotFoundError, ImageData, SplitData, load_dataset
from fedcomp.data.partition import client_sizes, experiment_partitions, partition_by_key, partition_indices


def load_experiment_data(cfg, data_dir: str | None = None) -> SplitData:  # noqa: ANN001 - an ExperimentConfig
    """The experiment's ``[data]``: a registered set, or the user's own loader by import path.

    ``data_dir``: read from there instead of ``data.data_dir`` (a SuperNode's own data, node config
    ``data-dir``); a loader of your own gets it as its ``data_dir`` argument if it takes one.
    """
    import json

    from fedcomp.imports import is_import_spec

    d = cfg.data
    folder = d.data_dir if data_dir is None else data_dir
    if is_import_spec(d.dataset):
        from fedcomp.data.custom import load_custom

        return load_custom(d.dataset, json.dumps(d.params, sort_keys=True) if d.params else "", cfg.seed, folder)
    params = json.dumps(d.params, sort_keys=True) if d.params else ""
    return load_dataset(d.dataset, folder, d.download, d.test_size, cfg.seed, params)


__all__ = [
    "DATASETS",
    "client_sizes",
    "partition_by_key",
    "DatasetNotFoundError",
    "ImageData",
    "SplitData",
    "experiment_partitions",
    "load_experiment_data",
    "load_dataset",
    "partition_indices",
]
