"""Datasets (the embedded default, torchvision's, Fashion-MNIST from Debian, LEAF's Shakespeare) and partitioners."""

from fedcomp.data import embedded, shakespeare, torchvision_sets  # noqa: F401  (register)
from fedcomp.data.base import DATASETS, DatasetNotFoundError, ImageData, SplitData, load_dataset
from fedcomp.data.experiment import experiment_partitions, load_experiment_data
from fedcomp.data.partition import client_sizes, partition_by_key, partition_indices

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
