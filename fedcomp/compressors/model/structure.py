"""Architectures that change under compression: the base model plus a list of edits.

A model compressor may broadcast a model whose architecture is not the
configured one (ALDS factorizes layers; channel pruning makes them thinner).
The receiver rebuilds it from the configured model and a :data:`Structure`:
an ordered tuple of :class:`Edit` (``op``, ``layer``, integer ``args``), each
replacing one submodule. The structure travels in the payload's params as
JSON and is checked like any other untrusted field: an edit naming a layer
that is not there, or arguments the layer cannot take, is a
:class:`~fedcomp.coding.DecodeError`.

An op is one function registered in :data:`STRUCTURE_OPS` that returns the
replacement module (an empty shell; the weights come from the payload).
Layers that must know each other after the edits (BWCP's shared residual
masks) are connected by a function registered with :func:`after_build`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedcomp.coding import DecodeError, TensorSpec, specs_of
from fedcomp.models import build_model

MAX_EDITS = 10_000


@dataclass(frozen=True)
class Edit:
    """Replace submodule ``layer`` by what ``op`` makes of it with ``args``."""

    op: str
    layer: str
    args: tuple[int, ...]


Structure = tuple[Edit, ...]
StructureOp = Callable[[nn.Module, tuple[int, ...]], nn.Module]
STRUCTURE_OPS: dict[str, StructureOp] = {}


AFTER_BUILD: list[Callable[[nn.Module], None]] = []


def after_build(fn: Callable[[nn.Module], None]) -> Callable[[nn.Module], None]:
    """Register a function called with every model :meth:`Architecture.build` makes (ValueError if it does not fit)."""
    AFTER_BUILD.append(fn)
    return fn


WRAPPING_OPS: set[str] = set()
"""Ops that wrap a layer as it is (BWCP's modules): one may follow another edit of the same layer."""


def structure_op(name: str, wraps: bool = False) -> Callable[[StructureOp], StructureOp]:
    """Register a structure edit (an op raises ValueError for arguments its layer cannot take).

    ``wraps``: the op wraps the layer as built so far, so it may come second on a layer another edit
    replaced (a BatchNorm resized by a pruning, then made a BWCP module again).
    """

    def decorator(fn: StructureOp) -> StructureOp:
        STRUCTURE_OPS[name] = fn
        if wraps:
            WRAPPING_OPS.add(name)
        return fn

    return decorator


def structure_to_json(structure: Structure) -> list[list[Any]]:
    return [[e.op, e.layer, list(e.args)] for e in structure]


def structure_from_json(data: Any) -> Structure:
    """Parse a payload's structure list; DecodeError for anything malformed."""
    if not isinstance(data, list) or len(data) > MAX_EDITS:
        raise DecodeError(f"structure must be a list of at most {MAX_EDITS} edits")
    edits = []
    for i, item in enumerate(data):
        ok = isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and isinstance(item[1], str)
        args = item[2] if ok else None
        if not ok or not isinstance(args, list) or not all(type(a) is int and 0 <= a < 1 << 31 for a in args):
            raise DecodeError(f"structure edit #{i} is not [op, layer, [non-negative integers]]: {item!r:.80}")
        if item[0] not in STRUCTURE_OPS:
            raise DecodeError(f"structure edit #{i}: unknown op {item[0]!r}; known: {sorted(STRUCTURE_OPS)}")
        edits.append(Edit(item[0], item[1], tuple(args)))
    by_layer: dict[str, list[str]] = {}
    for e in edits:
        by_layer.setdefault(e.layer, []).append(e.op)
    for layer, ops in by_layer.items():  # one edit per layer, or one and then one that wraps it
        if len(ops) > 2 or (len(ops) == 2 and (ops[0] in WRAPPING_OPS or ops[1] not in WRAPPING_OPS)):
            raise DecodeError(f"structure edits name layer {layer!r:.60} twice ({ops[:3]})")
    return tuple(edits)


@dataclass(frozen=True)
class Architecture:
    """The configured model (name, input shape, classes) and how to build it with a structure.

    ``factory``: a function building the base model instead of fedcomp's
    model registry (a Flower user's own ``Net``); ``model_name`` then only
    names it in messages.
    """

    model_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    factory: Callable[[], nn.Module] | None = None
    params_json: str = ""
    """``[model] params`` as JSON (hashable): keyword arguments of the model's factory."""

    @classmethod
    def of_config(cls, cfg: Any, input_shape: Sequence[int], num_classes: int) -> Architecture:
        """The experiment's ``[model]`` (a registry name or an import path, with its params) on this data."""
        params = json.dumps(cfg.model.params, sort_keys=True) if cfg.model.params else ""
        return cls(cfg.model.name, tuple(int(d) for d in input_shape), int(num_classes), params_json=params)

    @classmethod
    def of(cls, factory: Callable[[], nn.Module], input_shape: Sequence[int] = ()) -> Architecture:
        """The architecture a model function builds (``input_shape`` is needed by channel pruning only)."""
        if not callable(factory):
            raise TypeError(f"model_fn must be a function returning a torch.nn.Module, got {type(factory).__name__}")
        name = getattr(factory, "__qualname__", type(factory).__name__)
        return cls(name, tuple(int(d) for d in input_shape), 0, factory)

    def build(self, structure: Structure = ()) -> nn.Module:
        """A fresh module: the base model with every edit applied (ValueError if one does not fit)."""
        if self.factory is not None:
            model = self.factory()
            if not isinstance(model, nn.Module):
                raise TypeError(f"model_fn {self.model_name} returned {type(model).__name__}, not a torch.nn.Module")
        else:
            params = json.loads(self.params_json) if self.params_json else None
            model = build_model(self.model_name, self.input_shape, self.num_classes, params)
        for edit in structure:
            parent, _, leaf = edit.layer.rpartition(".")
            try:
                owner = model.get_submodule(parent) if parent else model
                old = getattr(owner, leaf)
            except AttributeError:
                raise ValueError(f"structure edit {edit.op!r}: the model has no layer {edit.layer!r}") from None
            if not isinstance(old, nn.Module):
                raise ValueError(f"structure edit {edit.op!r}: {edit.layer!r} is not a layer")
            try:
                setattr(owner, leaf, STRUCTURE_OPS[edit.op](old, edit.args))
            except ValueError as exc:
                raise ValueError(f"structure edit {edit.op!r} on {edit.layer!r}: {exc}") from None
        if structure:
            for connect in AFTER_BUILD:
                connect(model)
        return model

    def specs(self, structure: Structure = ()) -> tuple[TensorSpec, ...]:
        """The state-dict specs of the structured model; DecodeError if the structure does not fit."""
        return _specs(self, structure)

    def base_layers(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of every ungrouped Conv2d and Linear of the base model, in order."""
        model = self.build()
        return [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
        ]


@functools.lru_cache(maxsize=64)
def _specs(arch: Architecture, structure: Structure) -> tuple[TensorSpec, ...]:
    try:
        try:
            with torch.device("meta"):  # shapes only: no memory for weights, however large the claim
                model = arch.build(structure)
        except (RuntimeError, NotImplementedError):  # a user's model that computes with tensors as it builds
            model = arch.build(structure)
    except ValueError as exc:
        raise DecodeError(str(exc)) from None
    return tuple(TensorSpec(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items())


def load_structured(arch: Architecture, structure: Structure, state: dict[str, torch.Tensor]) -> nn.Module:
    """The runnable module for ``state`` in ``structure``."""
    model = arch.build(structure)
    model.load_state_dict(state)
    return model


def same_specs(state: dict[str, torch.Tensor], specs: Sequence[TensorSpec]) -> bool:
    return tuple(specs_of(state)) == tuple(specs)
