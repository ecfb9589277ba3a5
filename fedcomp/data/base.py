"""In-memory image data and the dataset registry.

Images stay uint8 in memory (CIFAR-10 is 150 MB that way, 600 MB as
floats) and are normalized batch by batch; batches are drawn by index
without a DataLoader, whose worker start-up costs more than these small
sets take to train on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fedcomp.registry import Registry


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the config says, and download is off."""


@dataclass(frozen=True)
class ImageData:
    """Images (N, C, H, W) as uint8, labels (N,) as int64, normalization constants."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("one label per image is needed")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: np.ndarray) -> ImageData:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageData(self.images[idx], self.labels[idx], self.mean, self.std)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float().div_(255.0) - mean) / std

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalized (x, y) batches; shuffled when a generator is given."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield self.normalize(self.images[idx].to(device)), self.labels[idx].to(device)


@dataclass(frozen=True)
class SplitData:
    """A dataset's train and test parts and what a model needs to know of it."""

    name: str
    train: ImageData
    test: ImageData
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)


Loader = Callable[[str, bool, int, int], SplitData]
"""(data_dir, download, test_size, seed) -> SplitData"""

DATASETS: Registry[Loader] = Registry("dataset")


@functools.lru_cache(maxsize=4)
def load_dataset(
    name: str, data_dir: str = "", download: bool = False, test_size: int = 1000, seed: int = 0
) -> SplitData:
    """Load a registered dataset (cached per process: clients call it every round)."""
    return DATASETS.get(name)(data_dir, download, test_size, seed)
