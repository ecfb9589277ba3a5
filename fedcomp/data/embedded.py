"""The embedded default: 5,000 MNIST digits shipped inside the package.

Provenance and licenses: ``assets/PROVENANCE.md``. The train/test split
is class-stratified and fixed by the seed.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from fedcomp.data.base import DATASETS, ImageData, SplitData
from fedcomp.params import ConfigError

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def read_embedded_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 images (uint8, 5000×28×28) and labels shipped with fedcomp."""
    with resources.files("fedcomp.data.assets").joinpath("mnist5k.npz").open("rb") as fh:
        with np.load(fh) as npz:
            return npz["images"], npz["labels"].astype(np.int64)


def stratified_split(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices with each class's share of the test set equal (±1)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = np.full(len(classes), test_size // len(classes))
    per_class[: test_size % len(classes)] += 1
    train, test = [], []
    for c, k in zip(classes, per_class, strict=True):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@DATASETS.register("mnist5k", "5,000 MNIST digits embedded in the package (offline default)")
def load_mnist5k(data_dir: str, download: bool, test_size: int, seed: int) -> SplitData:
    images, labels = read_embedded_mnist()
    if not 10 <= test_size <= len(labels) - 100:
        raise ConfigError(f"config key 'data.test_size': expected 10..{len(labels) - 100} for mnist5k, got {test_size}")
    train_idx, test_idx = stratified_split(labels, test_size, seed)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)
    return SplitData(
        "mnist5k",
        ImageData(x[train_idx], y[train_idx], MNIST_MEAN, MNIST_STD),
        ImageData(x[test_idx], y[test_idx], MNIST_MEAN, MNIST_STD),
        num_classes=10,
    )
