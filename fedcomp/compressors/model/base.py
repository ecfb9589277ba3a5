"""The model-compressor interface (server → client).

A model compressor decides what the global model looks like on the wire.
At the server, before each round, :meth:`ModelCompressor.broadcast` turns
the global model (and the compressor's own state: LC's Θ and λ, say) into
a :class:`Broadcast`: the payload every sampled client receives, and the
model the clients will start from exactly as they decode it (the server
aggregates their updates onto that). After each round,
:meth:`ModelCompressor.end_of_round` gives the :class:`Snapshot` the
server evaluates (LC: Δ(Θ), not the dense w), and after the last round
the payload of the final model as it would be shipped. At a client,
:meth:`ModelCompressor.decode` turns the payload into a :class:`Received`:
the state to load, the :data:`Structure` to build the runnable module with
(factorized or thinner layers travel as a list of edits, see
:mod:`.structure`), and an optional loss term to add during local
training (LC's μ/2‖w − t‖²).

When it acts (every round, from round R on, on a schedule, or only on the
final model) is each compressor's own parameter; the identity compressor
never acts. Bytes are not counted here: the strategy counts
``len(payload)``. A compressor's server state goes into checkpoints through
:meth:`state_dict` / :meth:`load_state_dict`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fedcomp.coding import (
    DecodeError,
    DecodeLimits,
    Payload,
    TensorSpec,
    check_decoded,
    check_values,
    pack,
    peek,
    specs_of,
    tensor_from_bytes,
    tensor_to_bytes,
    unpack,
)
from fedcomp.compressors.model.structure import (
    Architecture,
    Structure,
    structure_from_json,
    structure_to_json,
)
from fedcomp.compressors.update.base import MALFORMED, NoParams
from fedcomp.params import params_from_dict
from fedcomp.registry import Registry
from fedcomp.schema import ExperimentConfig

State = OrderedDict[str, torch.Tensor]
LossTerm = Callable[[nn.Module], torch.Tensor]

MODEL_COMPRESSORS: Registry = Registry("model compressor")
"""Every model compressor by name; each registers itself in its own module (imported by the package)."""


@dataclass
class Broadcast:
    """One round's downlink: the payload, and the model clients start from as they decode it."""

    payload: bytes
    start: State
    structure: Structure = ()
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Snapshot:
    """The model the server evaluates after a round (and saves after the last)."""

    state: State
    structure: Structure = ()
    metrics: dict[str, float] = field(default_factory=dict)
    payload: bytes | None = None
    """The model as it would be shipped; set after the last round."""
    is_global: bool = True
    """False when it differs from the aggregated model (LC's Δ(Θ)): the server evaluates both."""


@dataclass
class Received:
    """What a client makes of a broadcast."""

    state: State
    structure: Structure = ()
    loss_term: LossTerm | None = None


class ProximalTerm:
    """μ/2 Σ ‖w − t‖² over the named parameters (LC's L-step penalty, eq. of the L step)."""

    def __init__(self, centre: Mapping[str, torch.Tensor], mu: float) -> None:
        self.centre = dict(centre)
        self.mu = float(mu)
        self._on: torch.device | None = None

    def __call__(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        first = next(iter(params.values()))
        if self._on != first.device:
            self.centre = {k: v.to(first.device, torch.float32) for k, v in self.centre.items()}
            self._on = first.device
        total = first.new_zeros(())
        for name, t in self.centre.items():
            total = total + (params[name] - t).pow(2).sum()
        return 0.5 * self.mu * total

    @torch.no_grad()
    def proximal_step(self, model: nn.Module, lr: float) -> None:
        """w ← (w + lr·μ·t) / (1 + lr·μ): the exact proximal step of μ/2‖w − t‖² with step ``lr``.

        Departure from LC's L step as written (the penalty's gradient added to
        the data loss's): that SGD step contracts w − t by (1 − lr·μ) and
        diverges once lr·μ > 2, which LC's growing μ schedule reaches within
        the rounds a user may set (measured: docs/server_compression.md,
        departures). The proximal step contracts by
        1/(1 + lr·μ) for every μ and agrees with the gradient step to first
        order in lr·μ, so short schedules are unchanged.
        """
        params = dict(model.named_parameters())
        if self._on != next(iter(params.values())).device:
            self(model)  # moves the centre to the model's device
        scale = 1.0 / (1.0 + lr * self.mu)
        for name, t in self.centre.items():
            p = params[name]
            p.add_(t, alpha=lr * self.mu).mul_(scale)


class ModelCompressor(ABC):
    """Base class; subclasses set ``name``, ``Params``, :meth:`broadcast` and :meth:`decode_body`."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    payload_factor: ClassVar[float] = 1.0
    """How many dense copies of the model one payload may hold (LC's augmented Lagrangian: 2)."""
    max_abs: float = math.inf
    """Largest magnitude a decoded float may have (NaN and ±inf are refused always).

    Set it on the client's instance (or pass ``max_abs=`` to :meth:`decode`)
    from ``federation.max_abs_value``: a broadcast is as untrusted as any
    payload that crossed a network.
    """

    def __init__(self, params: Any, arch: Architecture, seed: int = 0) -> None:
        self.params = params if params is not None else self.Params()
        self.arch = arch
        self.seed = seed

    @classmethod
    def parse_params(cls, data: dict[str, Any], path: str) -> Any:
        """Typed, validated parameters from the ``[server_compression]`` section."""
        return params_from_dict(cls.Params, data, path)

    # ------------------------------------------------------------------ server
    @abstractmethod
    def broadcast(self, server_round: int, state: State, structure: Structure) -> Broadcast:
        """The downlink of ``server_round`` for the global model ``state`` (in ``structure``)."""

    def end_of_round(self, server_round: int, state: State, structure: Structure, last: bool) -> Snapshot:
        """The model to evaluate after ``server_round``; by default the aggregated one, shipped dense.

        The final payload is the aggregated model as it is, not a new
        :meth:`broadcast` (which may compress again when the last round is
        one it acts in). Compressors whose decoder does not read a dense body
        override this.
        """
        return Snapshot(state, structure, payload=dense_payload(self.name, state, structure) if last else None)

    def statistics_wanted(self, server_round: int, structure: Structure, last: bool, evaluating: bool = False) -> int:
        """Examples per client whose normalization statistics the server should gather before acting in this round
        (before :meth:`broadcast`, or with ``last`` before the final :meth:`end_of_round`), or with
        ``evaluating`` before the round's model is evaluated; 0: none.

        The server then asks the round's clients for them and sets the model's
        running statistics from the combined moments (:mod:`.statistics`).
        For an evaluation the measured statistics serve that evaluation only:
        the next round trains from the aggregated model as it was.
        """
        return 0

    @classmethod
    def schedule_problem(cls, params: Any, rounds: int) -> str:
        """Why the compressor's schedule does not fit a run of ``rounds`` rounds ("" if it does).

        A round it would act in after the last one is a setting that does
        nothing, silently: the config refuses it before the engine starts.
        The parameter class says (its own ``schedule_problem(rounds)``, if it has one).
        """
        check = getattr(params, "schedule_problem", None)
        return check(rounds) if callable(check) else ""

    @classmethod
    def broadcasts_dense_model(cls, params: Any) -> bool:
        """True if every broadcast during training is the global model, dense: the compressor acts on the final model only.

        Only then may the downlink carry the model's change instead
        (``[downlink]``, :mod:`fedcomp.flower.downlink`): the change of a
        model whose broadcast is compressed, pruned or factorized is not defined.
        """
        return False

    def state_dict(self) -> dict[str, Any]:
        """Server-side state for a checkpoint (tensors, numbers and strings only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - stateless by default
        """Restore :meth:`state_dict` (a resumed run)."""

    # ------------------------------------------------------------------ client
    def decode(self, payload: bytes, *, max_abs: float | None = None) -> Received:
        """Check the container (the structure first, then the tensors it implies), decode, check what came out.

        Only DecodeError escapes: any other exception the structure, the
        container or :meth:`decode_body` raises on malformed input is turned
        into one. The decoded state must be exactly the structure's tensors
        (names, shapes, dtypes), and every float in it, and in an LC penalty
        centre, finite with |x| ≤ ``max_abs`` (default: :attr:`max_abs`).
        """
        bound = self.max_abs if max_abs is None else max_abs
        try:
            coarse = broadcast_limits(self.arch.specs(()), self.payload_factor, bound)
            codec, params = peek(payload, coarse)
            if codec != self.name:
                raise DecodeError(f"broadcast was made by {codec!r}, this client expects {self.name!r}")
            structure = structure_from_json(params.get("structure", []))
            limits = broadcast_limits(self.arch.specs(structure), self.payload_factor, bound)
            parsed = unpack(payload, limits)
            received = self.decode_body(parsed, structure)
            check_decoded(received.state, parsed.specs, limits.max_abs, f"{self.name} broadcast")
            if isinstance(received.loss_term, ProximalTerm):
                for name, centre in received.loss_term.centre.items():
                    check_values(f"{name} (penalty centre)", centre, limits.max_abs)
        except DecodeError:
            raise
        except MALFORMED as exc:
            raise DecodeError(f"{self.name}: malformed broadcast: {type(exc).__name__}: {str(exc)[:200]}") from exc
        return received

    @abstractmethod
    def decode_body(self, parsed: Payload, structure: Structure) -> Received:
        """Rebuild the client's start model (and loss term) from a checked container."""


def build_model_compressor(cfg: ExperimentConfig, arch: Architecture) -> ModelCompressor:
    """The configured ``[server_compression]`` for ``arch`` (the server and every client build the same)."""
    section = cfg.server_compression
    cls = MODEL_COMPRESSORS.get(section.name)
    return cls(cls.parse_params(section.params, "server_compression"), arch, seed=cfg.seed)


def broadcast_limits(specs: Sequence[TensorSpec], factor: float, max_abs: float = math.inf) -> DecodeLimits:
    """What a client accepts for a model of ``specs``: ``factor`` dense copies plus 1 MiB, values within ``max_abs``."""
    dense = sum(s.nbytes for s in specs)
    return DecodeLimits(
        max_payload_bytes=math.ceil(factor * dense) + (1 << 20) + 64 * len(specs),
        max_tensors=len(specs),
        max_elements=sum(s.numel for s in specs),
        expected=tuple(specs),
        max_abs=max_abs,
    )


# ----------------------------------------------------------------------------- dense sections


def dense_bytes(tensors: Iterable[torch.Tensor]) -> bytes:
    """Tensors back to back, each in its own dtype (the identity encoding)."""
    return b"".join(tensor_to_bytes(t) for t in tensors)


def read_dense(body: bytes, pos: int, specs: Sequence[TensorSpec]) -> tuple[State, int]:
    """Inverse of :func:`dense_bytes` from offset ``pos``; returns the tensors and the new offset."""
    out: State = OrderedDict()
    for spec in specs:
        end = pos + spec.nbytes
        if end > len(body):
            raise DecodeError(f"body ends inside tensor {spec.name!r}")
        out[spec.name] = tensor_from_bytes(body[pos:end], spec)
        pos = end
    return out, pos


def dense_payload(codec: str, state: State, structure: Structure = (), params: dict[str, Any] | None = None) -> bytes:
    """The whole model dense, with its structure (if any) in the params; tensors named by digest."""
    params = dict(params or {})
    if structure:
        params["structure"] = structure_to_json(structure)
    return pack(codec, params, specs_of(state), dense_bytes(state.values()), by_digest=True)


def read_whole(parsed: Payload) -> State:
    """A body that is exactly the dense tensors of its specs."""
    state, pos = read_dense(parsed.body, 0, parsed.specs)
    if pos != len(parsed.body):
        raise DecodeError(f"{len(parsed.body) - pos} bytes after the dense tensors")
    return state
