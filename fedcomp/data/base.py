"""In-memory data and the dataset registry.

Images stay uint8 in memory (CIFAR-10 is 150 MB that way, 600 MB as
floats) and are normalized batch by batch; batches are drawn by index
without a DataLoader, whose worker start-up costs more than these small
sets take to train on. Token sequences (characters or words as integer ids,
e.g. LEAF's Shakespeare) are integer tensors (N, L), handed to the model as
int64 (an ``nn.Embedding`` takes them); they may be a strided view of one
text stream, so a window per position costs no memory until a batch or a
client's subset is drawn. Any other inputs (tabular features, float images)
are floating-point tensors of any shape, used as given; targets are class
labels (integers: classification) or floats (regression).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fedcomp.params import ConfigError
from fedcomp.registry import Registry


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the config says, and download is off."""


@dataclass(frozen=True)
class ImageData:
    """Inputs and targets in memory.

    ``images``: uint8 images (N, C, H, W), normalized with ``mean``/``std``
    batch by batch; integer token ids (N, L) of any integer dtype (uint8 to
    int64), given to the model as int64; or floating-point inputs of any
    shape (N, ...), used as they are. ``labels``: int64 class labels (N,), or float regression
    targets (N,) or (N, k).
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if x.ndim < 1 or not (x.dtype == torch.uint8 and x.ndim == 4 or x.is_floating_point() or _is_tokens(x)):
            raise ValueError(
                "inputs must be uint8 images (N, C, H, W), integer token ids (N, L) or floating-point (N, ...), "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
            raise ValueError(f"one target per input is needed: {tuple(x.shape)} inputs, {tuple(y.shape)} targets")
        if not (y.dtype == torch.int64 or y.is_floating_point()):
            raise ValueError(f"targets must be int64 class labels or floats, got {y.dtype}")
        if y.dtype == torch.int64 and y.ndim != 1:
            raise ValueError(f"class labels must be one per input (N,), got {tuple(y.shape)}")

    @property
    def is_classification(self) -> bool:
        return self.labels.dtype == torch.int64

    @property
    def is_tokens(self) -> bool:
        """Inputs are integer token ids (N, L) (a character or word model's), not images or floats."""
        return _is_tokens(self.images)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: np.ndarray) -> ImageData:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageData(self.images[idx], self.labels[idx], self.mean, self.std)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if _is_tokens(images):
            return images.long()
        if images.dtype != torch.uint8:
            return images.float()
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


_TOKEN_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _is_tokens(x: torch.Tensor) -> bool:
    """Integer ids (N, L); a uint8 tensor is tokens only in 2-D (4-D uint8 is images)."""
    return x.dtype in _TOKEN_DTYPES and x.ndim == 2


@dataclass(frozen=True)
class SplitData:
    """A dataset's train and test parts and what a model needs to know of it."""

    name: str
    train: ImageData
    test: ImageData
    num_classes: int
    partitions: tuple[np.ndarray, ...] | None = None
    """Each client's indices into ``train`` when the data comes split per client and only so (your loader's
    ``"clients"`` list): used whatever ``data.partition`` says."""
    natural: tuple[np.ndarray, ...] | None = None
    """The data's own clients (a speaking role, a writer, a folder, a key column): each one's indices into
    ``train``, used when ``data.partition = "natural"``; the other partitioners ignore it."""
    natural_names: tuple[str, ...] = ()
    """The natural clients' names (client i of the natural split is ``natural_names[i]``), where the data has them."""
    natural_test: tuple[np.ndarray, ...] | None = None
    """Each natural client's own held-out samples, indices into ``train`` (LEAF's per-client test split: never
    in ``natural`` or ``pool``)."""
    pool: np.ndarray | None = None
    """The indices of ``train`` that partitioners spread over clients; None: all of it. A text set stored as
    one strided stream has windows that straddle two clients' texts, or lie in a client's test part: those
    are never trained on."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.train.images.shape[1:])

    @property
    def is_classification(self) -> bool:
        """Class labels (cross-entropy, accuracy); else float targets (MSE; ``num_classes`` = outputs)."""
        return self.train.is_classification


Loader = Callable[[str, bool, int, int], SplitData]
"""(data_dir, download, test_size, seed) -> SplitData"""

DATASETS: Registry[Loader] = Registry("dataset")


@functools.lru_cache(maxsize=4)
def load_dataset(
    name: str, data_dir: str = "", download: bool = False, test_size: int = 1000, seed: int = 0, params_json: str = ""
) -> SplitData:
    """Load a registered dataset (cached per process: clients call it every round).

    ``params_json``: ``[data.params]`` as JSON, for the sets that take parameters (keyword arguments of
    their loader, e.g. Shakespeare's ``roles``); a set that takes none refuses them.
    """
    import inspect
    import json

    loader = DATASETS.get(name)
    params = json.loads(params_json) if params_json else {}
    if not params:
        return loader(data_dir, download, test_size, seed)
    accepted = [p for p in inspect.signature(loader).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(params) - {p.name for p in accepted})
    if unknown:
        takes = ", ".join(p.name for p in accepted) or "none"
        raise ConfigError(f"config key 'data.params': dataset {name!r} takes no {unknown} (its parameters: {takes})")
    return loader(data_dir, download, test_size, seed, **params)
