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
