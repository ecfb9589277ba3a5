"""Your own data: a loader named by import path (``[data] dataset = "module:load"``).

The loader is called with ``[data.params]`` as keyword arguments (plus
``seed`` if it takes one) and returns the train and test parts, as a dict
``{"train": (x, y), "test": (x, y)}`` or a tuple ``(x_train, y_train,
x_test, y_test)``; numpy arrays or torch tensors. Data already split per
client: ``{"clients": [(x, y), ...], "test": (x, y)}``, client i trains on
the i-th pair (``federation.num_clients`` must match). Inputs: uint8 images
(N, C, H, W), or floats of any shape (tabular features, sequences) used as
given. Targets: integer class labels (classification: cross-entropy,
accuracy; the number of classes is the largest label + 1 unless the dict
says ``"num_classes"``) or floats (regression: MSE; the model has one
output per target column). A uint8 image set may give ``"mean"`` and
``"std"`` per channel; by default they are measured on the train part.

The whole set is split across clients by ``[data] partition`` like the
registered sets (class-based partitions need class labels). Token
sequences (integer ids, (N, L)) are inputs too, for an embedding model.

Natural clients: a dict may say which client each training sample belongs
to, ``"client_keys"``: a column (one key per training sample: a user id, a
writer, the folder a file lies in) or a callable ``key(i)`` of the sample's
index. ``partition = "natural"`` then gives each distinct key its own
client (ordered by key; ``federation.num_clients`` must be their number);
the other partitioners ignore the keys. A ``"clients"`` list is a natural
split as well.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
import torch

from fedcomp.data.base import ImageData, SplitData
from fedcomp.data.partition import partition_by_key
from fedcomp.imports import accepts, resolve


class DataLoaderError(ValueError):
    """The user's loader returned something fedcomp cannot use (the message says what)."""


@functools.lru_cache(maxsize=4)
def load_custom(spec: str, params_json: str, seed: int, data_dir: str = "") -> SplitData:
    """Call the loader ``spec`` names and check what it returns (cached per process, like registered sets)."""
    loader = resolve(spec, "data.dataset")
    kwargs = json.loads(params_json) if params_json else {}
    if "seed" not in kwargs and accepts(loader, "seed"):
        kwargs["seed"] = seed
    if data_dir and accepts(loader, "data_dir"):  # data.data_dir, or a SuperNode's own data-dir
        kwargs["data_dir"] = data_dir
    out = loader(**kwargs)
    extra: dict[str, Any] = {}
    partitions = None
    if isinstance(out, dict) and "clients" in out:
        out, partitions = _pre_split(out, spec)
    if isinstance(out, dict):
        try:
            (x_train, y_train), (x_test, y_test) = out["train"], out["test"]
        except (KeyError, TypeError, ValueError):
            raise DataLoaderError(
                f"loader {spec!r} returned a dict without 'train': (x, y) and 'test': (x, y)"
            ) from None
        extra = out
    elif isinstance(out, (tuple, list)) and len(out) == 4:
        x_train, y_train, x_test, y_test = out
    else:
        raise DataLoaderError(
            f"loader {spec!r} returned {type(out).__name__}; expected {{'train': (x, y), 'test': (x, y)}} "
            "or (x_train, y_train, x_test, y_test)"
        )
    train_x, train_y = _tensor(x_train, "x_train"), _targets(y_train, "y_train")
    test_x, test_y = _tensor(x_test, "x_test"), _targets(y_test, "y_test")
    if (train_y.dtype == torch.int64) != (test_y.dtype == torch.int64):
        raise DataLoaderError(f"loader {spec!r}: train targets are {train_y.dtype}, test targets {test_y.dtype}")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataLoaderError(
            f"loader {spec!r}: train inputs {tuple(train_x.shape[1:])}, test {tuple(test_x.shape[1:])}"
        )
    mean, std = _normalization(train_x, extra)
    try:
        train, test = ImageData(train_x, train_y, mean, std), ImageData(test_x, test_y, mean, std)
    except ValueError as exc:
        raise DataLoaderError(f"loader {spec!r}: {exc}") from None
    if train.is_classification:
        if int(train_y.min()) < 0:
            raise DataLoaderError(f"loader {spec!r}: class labels must be >= 0")
        classes = int(extra.get("num_classes", max(int(train_y.max()), int(test_y.max())) + 1))
    else:
        classes = 1 if train_y.ndim == 1 else int(train_y.shape[1])
    natural, names = partitions, ()
    if isinstance(extra, dict) and extra.get("client_keys") is not None:
        if partitions is not None:
            raise DataLoaderError(f"loader {spec!r}: give 'clients' or 'client_keys', not both")
        try:
            groups, keys = partition_by_key(extra["client_keys"], len(train))
        except ValueError as exc:
            raise DataLoaderError(f"loader {spec!r}: 'client_keys': {exc}") from None
        natural, names = tuple(groups), tuple(keys)
    return SplitData(
        name=spec,
        train=train,
        test=test,
        num_classes=classes,
        partitions=partitions,
        natural=natural,
        natural_names=names,
    )


def _pre_split(out: dict[str, Any], spec: str) -> tuple[dict[str, Any], tuple[np.ndarray, ...]]:
    """Per-client pairs → one train set and each client's index range in it."""
    clients = out["clients"]
    if not isinstance(clients, (list, tuple)) or not clients:
        raise DataLoaderError(f"loader {spec!r}: 'clients' must be a non-empty list of (x, y) pairs")
    xs, ys, parts, start = [], [], [], 0
    for i, pair in enumerate(clients):
        try:
            x, y = pair
        except (TypeError, ValueError):
            raise DataLoaderError(f"loader {spec!r}: clients[{i}] is not an (x, y) pair") from None
        x, y = _tensor(x, f"clients[{i}] x"), _targets(y, f"clients[{i}] y")
        if len(x) == 0 or len(x) != len(y):
            raise DataLoaderError(f"loader {spec!r}: clients[{i}] has {len(x)} inputs and {len(y)} targets")
        xs.append(x)
        ys.append(y)
        parts.append(np.arange(start, start + len(x)))
        start += len(x)
    try:
        merged = {**out, "train": (torch.cat(xs), torch.cat(ys))}
    except RuntimeError as exc:
        raise DataLoaderError(f"loader {spec!r}: the clients' data do not stack: {exc}") from None
    return merged, tuple(parts)


def _tensor(value: Any, what: str) -> torch.Tensor:
    t = torch.from_numpy(np.array(value)) if not isinstance(value, torch.Tensor) else value.detach().cpu()  # a copy
    if t.dtype == torch.float64:
        t = t.float()  # models train in float32
    return t.contiguous()


def _targets(value: Any, what: str) -> torch.Tensor:
    t = _tensor(value, what)
    if not t.is_floating_point():
        t = t.long()
    return t


def _normalization(x: torch.Tensor, extra: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if x.dtype != torch.uint8:
        return (), ()
    if "mean" in extra and "std" in extra:
        return tuple(float(v) for v in extra["mean"]), tuple(float(v) for v in extra["std"])
    scaled = x.float().div_(255.0)
    dims = [d for d in range(scaled.ndim) if d != 1]
    return tuple(scaled.mean(dims).tolist()), tuple(scaled.std(dims).clamp_min(1e-6).tolist())
