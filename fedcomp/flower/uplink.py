"""The uplink, both ends of one transmission: a client's update to the server.

Client (the mod, :mod:`.mod`): :func:`encode_update` adds the node's
error-feedback residual to the update ``w_local − w_received`` (or, with
``error_feedback = "aggregate"``, subtracts the predictor the server sent:
:mod:`.predictor`), refuses what is not finite
(:class:`~fedcomp.compressors.update.base.NonFiniteUpdateError`)
and encodes it with the update compressor; :func:`with_payload` puts the
payload in the reply in place of the arrays.

Server (the wrapper, :mod:`.strategy`): :class:`UplinkReceiver` decodes a
reply's payload within the limits the current model's tensors imply (their
names and shapes, values within ``max_abs_value``) and counts its bytes,
``len(payload)``: what the client sent, counted once, at the wire. With
``error_feedback = "aggregate"`` it holds the predictor
(:class:`~fedcomp.flower.predictor.AggregatePredictor`) and adds it to every
decoded payload, so what leaves :meth:`UplinkReceiver.decode` is the
client's update as reconstructed, before anything judges, bounds or
aggregates it. Judging the rest of the reply is :mod:`fedcomp.strategies.replies`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from flwr.app import RecordDict

from fedcomp.coding import DecodeError, DecodeLimits, TensorSpec, check_all_values
from fedcomp.compressors.model.structure import Architecture, Structure
from fedcomp.compressors.update.base import EncodeContext, Encoded, NonFiniteUpdateError, State, UpdateCompressor
from fedcomp.compressors.update.feedback import encode_with_feedback
from fedcomp.flower.predictor import AggregatePredictor
from fedcomp.flower.state import fit_state
from fedcomp.messages import PAYLOAD_KEY, payload_record


def count(payload: bytes) -> int:
    """The bytes a payload costs on the wire (both ends count the same way)."""
    return len(payload)


# ------------------------------------------------------------------ client
def encode_update(
    compressor: UpdateCompressor,
    update: dict[str, torch.Tensor],
    stored: State,
    ctx: EncodeContext,
    drop_state: Callable[[], None],
    predictor: Mapping[str, torch.Tensor] | None = None,
) -> Encoded:
    """The update plus the stored residual (``stored``, fitted to the update), encoded with error feedback; or,
    with ``error_feedback = "aggregate"``, the update minus ``predictor`` (the previous round's aggregate).

    NonFiniteUpdateError unless the update and the stored state are finite; a non-finite state (the residual)
    is dropped first (``drop_state`` stores the node's state without it), so the next round heals."""
    state = fit_state(stored, update)
    _check_finite(update, state, drop_state)
    return encode_with_feedback(compressor, update, state, ctx, predictor)


def with_payload(content: RecordDict, payload: bytes) -> RecordDict:
    """The reply's content with its arrays replaced by the payload (metrics and configs kept)."""
    return RecordDict(
        {
            PAYLOAD_KEY: payload_record(payload),
            **{k: v for k, v in content.metric_records.items()},
            **{k: v for k, v in content.config_records.items()},
        }
    )


def _check_finite(update: dict[str, torch.Tensor], state: State, reset: Callable[[], None]) -> None:
    try:
        check_all_values(list(update.items()))
    except DecodeError as exc:
        raise NonFiniteUpdateError(f"the update is not finite ({exc}): nothing sent") from None
    try:
        check_all_values([(k, v) for k, v in state.items() if v.is_floating_point()])
    except DecodeError as exc:
        reset()
        raise NonFiniteUpdateError(
            f"the stored compressor state (error-feedback residual) is not finite ({exc}): reset, this round's "
            "update is not sent; the next round starts from a zero residual"
        ) from None


# ------------------------------------------------------------------ server
def update_limits(specs: Iterable[TensorSpec], max_abs_value: float) -> DecodeLimits:
    """Updates cover the model's floating-point tensors."""
    return DecodeLimits.for_specs([s for s in specs if s.dtype.is_floating_point], max_abs=max_abs_value)


class UplinkReceiver:
    """The server's end: decodes replies' payloads within the current model's limits and counts their bytes."""

    def __init__(self, compressor: UpdateCompressor, arch: Architecture, max_abs_value: float) -> None:
        self.compressor = compressor
        self.arch = arch
        self.max_abs_value = max_abs_value
        self.limits = update_limits(arch.specs(()), max_abs_value)
        """What a payload may decode to: the model's floating-point tensors, values within ±max_abs_value."""
        self.predictor = (
            AggregatePredictor(self.limits.expected or (), max_abs_value) if compressor.aggregate_feedback else None
        )
        """``error_feedback = "aggregate"``: the previous round's aggregate, added to every decoded payload and sent
        with every train message (:mod:`.predictor`); None in the other modes."""

    def follow(self, structure: Structure) -> None:
        """The model's architecture changed (a model compressor's edits): updates now come in its shapes (and the
        predictor, whose tensors are gone, starts again from zero)."""
        self.limits = update_limits(self.arch.specs(structure), self.max_abs_value)
        if self.predictor is not None:
            self.predictor.follow(self.limits.expected or ())

    def decode(self, payload: bytes) -> dict[str, torch.Tensor]:
        """The update a payload carries; DecodeError if it is malformed or breaks the limits. With a predictor,
        the update as reconstructed: the decoded difference plus the predictor."""
        update = self.compressor.decode(payload, self.limits)
        return update if self.predictor is None else self.predictor.reconstruct(update)

    count = staticmethod(count)
