"""The inner Flower strategy's own state between rounds, read and written through one adapter.

Flower keeps a strategy's state in private attributes (FedAdam's moments ``m_t`` and ``v_t``, FedAvgM's
``momentum_vector``) and has no API for them. fedcomp needs them twice: in a checkpoint (a resumed FedAdam
continues with its moments) and when a model compressor changes the model's architecture (the old shapes
would fail every aggregation, so they start again from zero). :data:`KNOWN` lists, per Flower class, what
fedcomp reads; :class:`InnerState` checks, when the wrapper is built, that the strategy instance really has
those attributes, so a Flower upgrade that renames one fails at once, naming it, instead of checkpoints
silently losing the state. ``tests/test_inner_state.py`` runs the check on every registered strategy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import flwr
import numpy as np
import torch
from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy.fedopt import FedOpt

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownState:
    """What fedcomp reads of one Flower strategy class."""

    state: tuple[str, ...] = ()
    """Its state between rounds: checkpointed, reset on a changed architecture."""
    model_copy: str | None = None
    """Its copy of the model: FedOpt's sets it in every configure_train, FedAvgM's only while it is None and then
    keeps its own aggregate in it. Not checkpointed (a resumed FedAvgM takes the resumed model, which is that
    aggregate), but a changed architecture must clear it: its old shapes fail every aggregation."""

    @property
    def attributes(self) -> tuple[str, ...]:
        return self.state + ((self.model_copy,) if self.model_copy else ())


_FEDOPT = KnownState(state=("m_t", "v_t"), model_copy="current_arrays")
KNOWN: dict[type, KnownState] = {
    flower_strategies.FedAdam: _FEDOPT,
    flower_strategies.FedYogi: _FEDOPT,
    flower_strategies.FedAdagrad: _FEDOPT,
    FedOpt: _FEDOPT,  # their base: a subclass of it keeps the same state
    flower_strategies.FedAvgM: KnownState(state=("momentum_vector",), model_copy="current_arrays"),
    flower_strategies.QFedAvg: KnownState(model_copy="current_arrays"),
}
"""Flower class → the attributes fedcomp reads (checked in Flower's sources); a subclass gets its nearest known
base's entry, a strategy with none (FedAvg, FedProx, Krum, ...) keeps no state fedcomp touches."""

NO_STATE = KnownState()


class InnerStateError(RuntimeError):
    """The inner strategy lacks an attribute fedcomp reads: Flower renamed or dropped it."""


def known_state(strategy: Any) -> KnownState:
    """The entry of :data:`KNOWN` for ``strategy``'s class or its nearest known base."""
    for cls in type(strategy).__mro__:
        if cls in KNOWN:
            return KNOWN[cls]
    return NO_STATE


class InnerState:
    """Save, load and reset the inner strategy's state; built with the wrapper, it checks the attributes exist."""

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy
        self.known = known_state(strategy)
        missing = [a for a in self.known.attributes if not hasattr(strategy, a)]
        if missing:
            raise InnerStateError(
                f"{type(strategy).__name__} has no attribute {', '.join(repr(a) for a in missing)} under Flower "
                f"{flwr.__version__}: fedcomp checkpoints and resets the inner strategy's state through it "
                "(fedcomp/flower/inner_state.py, KNOWN); this Flower version renamed or dropped it, so "
                "update KNOWN to the new name"
            )

    def state_dict(self) -> dict[str, Any]:
        """The state for a checkpoint: attribute → tensors (as nested as Flower keeps them), set ones only."""
        return {a: _to_torch(v) for a in self.known.state if (v := getattr(self.strategy, a)) is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; attributes this strategy does not keep are ignored."""
        for attr, value in state.items():
            if attr in self.known.state:
                setattr(self.strategy, attr, _to_numpy(value))

    def reset(self) -> list[str]:
        """Clear the state and the model copy (a changed architecture); returns the state attributes that were set."""
        reset = [a for a in self.known.state if getattr(self.strategy, a) is not None]
        for attr in reset:
            setattr(self.strategy, attr, None)
        copy_attr = self.known.model_copy
        if copy_attr is not None and getattr(self.strategy, copy_attr) is not None:
            setattr(self.strategy, copy_attr, None)
        return reset


def _to_torch(value: Any) -> Any:
    """Flower keeps strategy state as numpy arrays in dicts or lists; checkpoints hold tensors."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, dict):
        return {k: _to_torch(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_torch(v) for v in value]
    return value


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_numpy(v) for v in value]
    return value
