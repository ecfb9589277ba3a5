"""Aggregate feedback's predictor (``[uplink] error_feedback = "aggregate"``): kept and sent by the server, read by
the clients.

CAFe (Ortega et al., arXiv 2512.22623; the algorithm is in :mod:`fedcomp.compressors.update.feedback`): every
client encodes its update minus the previous round's aggregate Δ̄, and the server adds Δ̄ back. Clients keep
nothing between rounds. The two ends:

- **The server** (:class:`AggregatePredictor`, held by the uplink's server end
  :class:`~fedcomp.flower.uplink.UplinkReceiver`) keeps *one* predictor for every client, zero before the first
  aggregate. Every train message carries it in a record of its own (:data:`PREDICTOR_KEY`), encoded by the
  identity update codec: dense fp32 in fedcomp's container (tensor-list digest, CRC32), its body
  zstd-compressed when that is shorter: round 1's zero predictor is a few hundred bytes, and as the aggregates of
  sparse updates add up it fills in towards four bytes a value, the dense model's size. Every sampled client
  gets the same payload. These are real bytes on
  the wire, so they are counted as such: the wrapper adds them to each client's downlink bytes
  (``downlink_bytes_sent_per_client``, hence ``downlink_bytes``; the row's ``predictor_downlink_bytes`` says how
  much of ``downlink_bytes`` they were) and the client adds them to the ``downlink-bytes`` it reports, so what
  the server counts and what the clients measured still agree. Wire bytes (:mod:`.wire`) include them anyway.
- **Reconstruction.** The receiver adds Δ̄ to every payload it decodes (:meth:`AggregatePredictor.reconstruct`,
  called by :meth:`~fedcomp.flower.uplink.UplinkReceiver.decode`), so everything after the decode sees the
  reconstructed update Δ̂_i = D(p_i) + Δ̄, never the difference: the reply's judging, the update norm bound
  (``federation.update_norm_bound`` clips or refuses Δ̂_i, the update the client made), the deadline and the
  inner strategy's aggregate. A reconstruction beyond ±``max_abs_value`` is refused as the client's failure,
  like a payload that decodes beyond it.
- **Learning.** After a round that aggregated, Δ̄ becomes the example-weighted mean of the Δ̂_i that went into the
  aggregate (judged usable, within the norm bound and the deadline), in partition order, accumulated in fp64.
- **Checkpoints.** Δ̄ is part of the strategy's state (``uplink_predictor`` in
  :meth:`~fedcomp.flower.strategy.CompressedStrategy.state_dict`), so a resumed run sends the same predictor
  as the run that did not stop.
- **The client** (:func:`read_predictor`, run by the mod before training) treats the predictor as the untrusted
  input it is: the record must be there, a uint8 array of fedcomp's type; the payload is decoded by the identity
  codec within limits that admit exactly the model's floating-point tensors (names, order, shapes, fp32), every
  value finite and within ±``max_abs_value``; never unpickled. Anything else is a :class:`PredictorError`
  naming what is wrong, and the round fails for that client (its reply carries the error).

**Where this departs from the paper, and why.** The paper analyses Distributed Gradient Descent: every client,
one gradient, plain averaging, a model step that is the aggregate times the step size.

1. Δ_i is the client's model change after its local training (``w_local − w_received``, several steps), the
   update every fedcomp compressor encodes, not one gradient.
2. Partial participation: Δ̄ is the mean over the previous round's usable replies, not over all clients; the
   server has nothing else (a client not sampled then still gets that Δ̄).
3. The mean is weighted by each reply's examples (FedAvg's weights), not 1/n: with unequal clients it is the
   aggregate FedAvg applies, the prediction of an average client update.
4. Δ̄ is the aggregate of the reconstructed updates, not the model's change. With a server optimizer (FedAdam's
   m/√v step, FedAvgM's momentum, a server learning rate) ``w_{t+1} − w_t`` is not a prediction of next round's
   client updates; in the paper's DGD the two differ only by the step size. With a robust inner strategy
   (Krum, the median) Δ̄ is still this mean: it predicts the clients' updates, whatever rule the server applies.
5. A round that keeps its model (quorum not reached, the inner strategy refused, a non-finite aggregate) leaves
   Δ̄ as it was: nothing was aggregated, the next round starts from the same model, and the last aggregate is
   still the best prediction of the clients' updates; zero would make that round pay the whole compression
   error again.
6. A model compressor that changes the architecture (ALDS's factorization, channel pruning) resets Δ̄ to zero:
   its tensors no longer exist.
7. The predictor costs downlink bytes. A client that kept the previous model could compute Δ̄ from two
   consecutive broadcasts (under DGD), but that is state, which this mode does without; so the server sends
   Δ̄ and the bytes are counted. The uplink is what shrinks; ``docs/uplink.md`` says what the downlink pays.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

import torch
from flwr.app import Array, ArrayRecord, RecordDict

from fedcomp.coding import DecodeError, DecodeLimits, TensorSpec, values_within
from fedcomp.compressors.update.base import NoParams
from fedcomp.compressors.update.feedback import plus_predictor
from fedcomp.compressors.update.identity import IdentityCompressor

PREDICTOR_KEY = "fedcomp.predictor"
"""The train message's record (and its one array) that carries the predictor."""
STYPE = "fedcomp.predictor"

Tensors = OrderedDict[str, torch.Tensor]


class PredictorError(DecodeError):
    """A train message's predictor is missing, malformed, not finite, beyond ``max_abs_value`` or not the model's
    shape: the client cannot encode against it (``error_feedback = "aggregate"``)."""


def _codec() -> IdentityCompressor:
    """Dense fp32 in fedcomp's container, the body zstd-compressed when that is shorter."""
    return IdentityCompressor(NoParams(lossless="zstd"))


def predictor_specs(model: Mapping[str, torch.Tensor]) -> tuple[TensorSpec, ...]:
    """The predictor's tensors for ``model``: its floating-point tensors, in order, as fp32 (as updates are)."""
    return tuple(TensorSpec(k, tuple(v.shape), torch.float32) for k, v in model.items() if v.is_floating_point())


def predictor_record(payload: bytes) -> ArrayRecord:
    """The predictor's payload as a message record: one uint8 array."""
    return ArrayRecord({PREDICTOR_KEY: Array(dtype="uint8", shape=(len(payload),), stype=STYPE, data=payload)})


# ------------------------------------------------------------------ client
def read_predictor(content: RecordDict, specs: Sequence[TensorSpec], max_abs: float) -> tuple[Tensors, int]:
    """The predictor a train message carries, and its payload's bytes; :class:`PredictorError` naming what is wrong.

    ``specs``: the model's floating-point tensors as fp32 (:func:`predictor_specs`), exactly what it must hold."""
    try:
        array = content.array_records[PREDICTOR_KEY][PREDICTOR_KEY]
    except KeyError:
        raise PredictorError(
            f'error_feedback = "aggregate", but the train message carries no predictor (record {PREDICTOR_KEY!r}): '
            "the server sends the previous round's aggregate with every train message"
        ) from None
    if array.stype != STYPE or array.dtype != "uint8":
        raise PredictorError(
            f"the predictor array has stype {str(array.stype)[:40]!r} / dtype {str(array.dtype)[:20]!r}, "
            f"expected {STYPE!r} / 'uint8'"
        )
    payload = bytes(array.data)
    try:
        tensors = _codec().decode(payload, DecodeLimits.for_specs(list(specs), max_abs=max_abs))
    except DecodeError as exc:
        raise PredictorError(f"the predictor in the train message is unusable: {exc}") from None
    return OrderedDict(tensors), len(payload)


# ------------------------------------------------------------------ server
class AggregatePredictor:
    """The server's one predictor Δ̄ (see the module docstring): zero until a round aggregates."""

    def __init__(self, specs: Iterable[TensorSpec], max_abs: float = math.inf) -> None:
        self.max_abs = max_abs
        self.specs: tuple[TensorSpec, ...] = ()
        self.tensors: Tensors = OrderedDict()
        self._payload: bytes | None = None
        self.follow(specs)

    def follow(self, specs: Iterable[TensorSpec]) -> None:
        """The updates now cover ``specs`` (the model's floating-point tensors): Δ̄ starts again from zero."""
        self.specs = tuple(TensorSpec(s.name, tuple(s.shape), torch.float32) for s in specs)
        self.tensors = OrderedDict((s.name, torch.zeros(s.shape, dtype=torch.float32)) for s in self.specs)
        self._payload = None

    def payload(self) -> bytes:
        """Δ̄ as sent: the identity codec's dense fp32, zstd'd when shorter (encoded once per value of Δ̄)."""
        if self._payload is None:
            self._payload = _codec().encode(self.tensors).payload
        return self._payload

    def reconstruct(self, decoded: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Δ̂ = D(p) + Δ̄; DecodeError if a value leaves ±``max_abs`` (each part was within it, their sum need not be)."""
        out = plus_predictor(decoded, self.tensors)
        for name, value in out.items():
            if not values_within(value, self.max_abs):
                raise DecodeError(
                    f"the update reconstructed with the predictor has values beyond ±{self.max_abs:g} in {name!r} "
                    "(federation.max_abs_value)"
                )
        return out

    def learn(self, updates: Sequence[tuple[float, Mapping[str, torch.Tensor]]]) -> None:
        """Δ̄ ← the ``weight``-weighted mean of the round's aggregated updates (``(weight, Δ̂)``, in the order given);
        nothing changes when there are none."""
        total = float(sum(w for w, _ in updates))
        if not updates or total <= 0:
            return
        mean: Tensors = OrderedDict()
        for spec in self.specs:
            acc = torch.zeros(spec.shape, dtype=torch.float64)
            for weight, update in updates:
                acc += float(weight) * update[spec.name].to(torch.float64)
            mean[spec.name] = (acc / total).to(torch.float32)
        self.tensors = mean
        self._payload = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Δ̄ for a checkpoint."""
        return {k: v.clone() for k, v in self.tensors.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Continue from :meth:`state_dict`; ValueError unless it holds exactly this model's tensors, finite."""
        names = [s.name for s in self.specs]
        if list(state) != names:
            raise ValueError(f"the checkpoint's predictor has tensors {list(state)[:5]}, the model {names[:5]}")
        for spec in self.specs:
            value = state[spec.name]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(spec.shape):
                raise ValueError(f"the checkpoint's predictor {spec.name!r} does not have shape {tuple(spec.shape)}")
            if not values_within(value.float(), self.max_abs):
                raise ValueError(f"the checkpoint's predictor {spec.name!r} is not finite or beyond ±{self.max_abs:g}")
        self.tensors = OrderedDict((s.name, state[s.name].to(torch.float32).clone()) for s in self.specs)
        self._payload = None
