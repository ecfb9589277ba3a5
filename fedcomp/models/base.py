"""The model registry and the two ways a model is built: by name (or import path), and seeded for round 0."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fedcomp.imports import accepts, is_import_spec, resolve
from fedcomp.registry import Registry
from fedcomp.schema import ExperimentConfig
from fedcomp.seeding import MODEL_INIT, derive_seed

ModelFactory = Callable[[tuple[int, int, int], int], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")
"""Every model by name; each registers itself in its own module (imported by the package)."""


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, params: Mapping[str, Any] | None = None
) -> nn.Module:
    """A fresh model: the registered architecture ``name``, or the user's factory an import path names.

    A user's factory (function or class, ``"module:Net"`` / ``"file.py:Net"``)
    is called with ``params`` as keyword arguments, plus ``input_shape`` and
    ``num_classes`` if it takes them; it must return a ``torch.nn.Module``.
    """
    kwargs = dict(params or {})
    if not is_import_spec(name):
        return MODELS.get(name)(input_shape, num_classes, **kwargs)
    factory = resolve(name, "model.name")
    for key, value in (("input_shape", tuple(input_shape)), ("num_classes", num_classes)):
        if key not in kwargs and accepts(factory, key):
            kwargs[key] = value
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def initial_model(cfg: ExperimentConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The round-0 global model, initialized from the experiment seed (the server's, and any client's).

    torch modules initialize from the global generator; it is forked so the
    caller's random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, MODEL_INIT))
        return build_model(cfg.model.name, input_shape, num_classes, cfg.model.params)


def checked_width(width: object) -> float:
    """``[model.params] width``, the factor a model's channel and unit counts scale by, checked."""
    if not (isinstance(width, int | float) and not isinstance(width, bool) and 0 < width <= 4):
        raise ValueError(f"model.params.width must be a number in (0, 4], got {width!r}")
    return float(width)


def matching_width(
    name: str, target_params: int, input_shape: tuple[int, ...], num_classes: int, low: float = 0.01, high: float = 1.0
) -> float:
    """The ``width`` (a model param, e.g. LeNet-5-Caffe's) whose model has the parameter count nearest
    ``target_params``: the small dense model that a compressed model of that size is compared with.

    Bisection on the width (the count grows with it), then the nearer of the two last widths; the result is
    rounded to 4 decimals, so it reads as it is written in a config. Raises ValueError if the model takes
    no ``width`` or the target is outside what ``[low, high]`` reaches.
    """

    def count(width: float) -> int:
        return sum(p.numel() for p in build_model(name, input_shape, num_classes, {"width": width}).parameters())

    try:
        smallest, largest = count(low), count(high)
    except TypeError as exc:
        raise ValueError(f"model {name!r} takes no width parameter ({exc})") from None
    if not smallest <= target_params <= largest:
        raise ValueError(
            f"{target_params:,} parameters is outside what {name!r} reaches with width in [{low}, {high}] "
            f"({smallest:,} to {largest:,})"
        )
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if count(mid) < target_params else (low, mid)
    best = min((low, high), key=lambda w: abs(count(w) - target_params))
    return round(best, 4)
