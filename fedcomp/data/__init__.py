"""Datasets (the embedded default and torchvision's) and partitioners."""

from fedcomp.data import embedded, torchvision_sets  # noqa: E402,F401  (register)
from fedcomp.data.base import DATASETS, DatasetNotFoundError, ImageData, SplitData, load_dataset
from fedcomp.data.partition import experiment_partitions, partition_indices

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "ImageData",
    "SplitData",
    "experiment_partitions",
    "load_dataset",
    "partition_indices",
]
