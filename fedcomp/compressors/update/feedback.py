"""Error feedback, one mechanism for every compressor, in two forms.

**A residual per client** (``error_feedback = true``): before compressing,
a client adds the residual it kept from earlier rounds
(``corrected = update + residual``); after compressing, the residual
becomes what was not sent (``corrected − sent``), where ``sent`` is the
update exactly as the server will decode it (the memory of rTop-k,
Barnes et al. 2020, and of EF-SGD, Karimireddy et al. 2019). It is switched per compressor
(``error_feedback = true/false`` in ``[uplink]``), on by default for the
sparsifiers and SuRP, off for DGC, whose own accumulation plays that role.

**The previous round's aggregate as every client's predictor**
(``error_feedback = "aggregate"``): Compressed Aggregate Feedback, CAFe
(Ortega, Huang, Li & Jafarkhani, "Communication Compression for Distributed
Learning with Aggregate and Server-Guided Feedback", arXiv 2512.22623; first
as arXiv 2412.04538). With Δ_i^t client i's update in round t and Δ̄^{t−1}
the aggregate of round t−1's reconstructed updates (zero in round 1), CAFe's
client sends

    p_i^t = C(Δ_i^t − Δ̄^{t−1})

and the server reconstructs and aggregates

    Δ̂_i^t = D(p_i^t) + Δ̄^{t−1},    Δ̄^t = (1/n) Σ_i Δ̂_i^t,

Δ̄^t being next round's predictor (fedcomp weights the mean by examples). The client keeps nothing between rounds
(no residual, no control variate of its own): what a biased C leaves out of
Δ_i − Δ̄^{t−1} is not fed back later, but it is small wherever the clients'
updates are close to each other and to last round's (the paper's
bounded-gradient-dissimilarity argument, under which CAFe's bound improves on
compressed gradient descent without feedback). Here :func:`encode_with_feedback`
is the client's half (``predictor``: Δ̄^{t−1}, read from the train message);
the server's half, which keeps, sends and adds back Δ̄, is
:mod:`fedcomp.flower.predictor`. (The formulas are CAFe as the paper's
abstract states it, "uses the globally aggregated update from the previous
round as a shared control variate for all clients", in the notation used
here; they were not checked against the paper's numbered equations, which
are not cited for that reason.) Where fedcomp departs from the paper's
Distributed Gradient Descent, and why, is in :mod:`fedcomp.flower.predictor`.

A codec's own state (PowerSGD's warm-start Q) is kept under either form;
DGC refuses ``"aggregate"`` (its accumulator is per-client state).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch

from fedcomp.compressors.update.base import EncodeContext, Encoded, State, Update, UpdateCompressor

RESIDUAL_PREFIX = "ef/"


def encode_with_feedback(
    compressor: UpdateCompressor,
    update: Update,
    state: State | None,
    ctx: EncodeContext,
    predictor: Mapping[str, torch.Tensor] | None = None,
) -> Encoded:
    """Encode ``update`` through ``compressor``, with error feedback in the form its params ask for.

    ``state`` holds both the residual (keys ``ef/<name>``) and the
    compressor's own state; the returned state holds both, updated. Under
    ``error_feedback = "aggregate"`` the payload is ``C(update − predictor)``
    (``predictor``: the previous round's aggregate, one tensor per update
    tensor; ValueError if it is missing or does not fit), and the returned
    state is the compressor's own alone: no residual is kept, a stale one is
    dropped. ``sent`` is then the difference as the server decodes it (the
    server adds the predictor back).
    """
    state = dict(state or {})
    residual = {k[len(RESIDUAL_PREFIX) :]: v for k, v in state.items() if k.startswith(RESIDUAL_PREFIX)}
    own = {k: v for k, v in state.items() if not k.startswith(RESIDUAL_PREFIX)}
    if compressor.aggregate_feedback:
        return compressor.encode(minus_predictor(update, predictor), own, ctx)
    if not compressor.error_feedback:
        return compressor.encode(update, own, ctx)
    corrected = OrderedDict((k, v + residual[k] if k in residual else v.clone()) for k, v in update.items())
    encoded = compressor.encode(corrected, own, ctx)
    for k, v in corrected.items():
        encoded.state[RESIDUAL_PREFIX + k] = v - encoded.sent[k]
    return encoded


def minus_predictor(update: Update, predictor: Mapping[str, torch.Tensor] | None) -> OrderedDict[str, torch.Tensor]:
    """``Δ − Δ̄`` in fp32, tensor by tensor in the update's order; ValueError unless ``predictor`` has exactly the
    update's tensors in their shapes."""
    if predictor is None:
        raise ValueError('error_feedback = "aggregate" needs the predictor (the previous round\'s aggregate)')
    if list(predictor) != list(update):
        raise ValueError(f"the predictor has tensors {list(predictor)[:5]}, the update {list(update)[:5]}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, value in update.items():
        p = predictor[name]
        if tuple(p.shape) != tuple(value.shape):
            raise ValueError(f"the predictor's {name!r} has shape {tuple(p.shape)}, the update's {tuple(value.shape)}")
        out[name] = value.to(torch.float32) - p.to(torch.float32)
    return out


def plus_predictor(
    decoded: Mapping[str, torch.Tensor], predictor: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``D(p) + Δ̄`` in fp32: the server's reconstruction of a client's update (the one formula, both halves)."""
    return {name: value + predictor[name] for name, value in decoded.items()}
