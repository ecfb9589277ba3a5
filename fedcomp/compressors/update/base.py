"""The update-compressor interface (client → server).

An update compressor turns a client's update, an ordered mapping
``name → tensor`` (``w_local − w_global``), into a container payload and
back. It is built from its parameter dataclass and the experiment seed;
per-client state (DGC's momentum, say) is an explicit dict of tensors the
caller keeps between rounds, so a compressor object holds none. Every
encode also returns ``sent``: the update exactly as the receiver will
decode it, which is what error feedback (:mod:`.feedback`, shared by all
compressors) subtracts to get the residual. Bytes are never counted here:
the strategy counts ``len(payload)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from fedcomp.coding import DecodeError, DecodeLimits, TensorSpec, unpack
from fedcomp.config import params_from_dict

Update = Mapping[str, torch.Tensor]
State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class EncodeContext:
    """Where an encode happens: which round, which client, how many clients."""

    server_round: int = 1
    client_id: int = 0
    num_clients: int = 1


@dataclass
class Encoded:
    """What a client sends, what the receiver will rebuild from it, and the new state."""

    payload: bytes
    sent: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)
    state: State = field(default_factory=dict)


@dataclass
class NoParams:
    """For compressors without parameters."""


class UpdateCompressor(ABC):
    """Base class; subclasses set ``name``, ``Params`` and the two codecs."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    error_feedback_default: ClassVar[bool] = False
    """Whether error feedback is on unless the config says otherwise."""

    def __init__(self, params: Any = None, seed: int = 0) -> None:
        self.params = params if params is not None else self.Params()
        self.seed = seed

    @classmethod
    def parse_params(cls, data: dict[str, Any], path: str) -> Any:
        """Typed, validated parameters from a config section."""
        return params_from_dict(cls.Params, data, path)

    @property
    def error_feedback(self) -> bool:
        value = getattr(self.params, "error_feedback", None)
        return self.error_feedback_default if value is None else bool(value)

    @abstractmethod
    def encode(self, update: Update, state: State | None = None, ctx: EncodeContext | None = None) -> Encoded:
        """Compress ``update`` (given this client's state) into a payload."""

    @abstractmethod
    def decode_body(self, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes) -> dict[str, torch.Tensor]:
        """Rebuild the update from the container's parts."""

    def decode(self, payload: bytes, limits: DecodeLimits) -> dict[str, torch.Tensor]:
        """Check the container, then decode its body; only DecodeError escapes."""
        parsed = unpack(payload, limits)
        if parsed.codec != self.name:
            raise DecodeError(f"payload was made by codec {parsed.codec!r}, expected {self.name!r}")
        try:
            return self.decode_body(parsed.params, parsed.specs, parsed.body)
        except DecodeError:
            raise
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError, OverflowError, MemoryError) as exc:
            raise DecodeError(f"{self.name}: malformed body: {exc}") from exc
