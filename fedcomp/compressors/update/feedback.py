"""Error feedback, one mechanism for every compressor.

Before compressing, a client adds the residual it kept from earlier rounds
(``corrected = update + residual``); after compressing, the residual
becomes what was not sent (``corrected − sent``), where ``sent`` is the
update exactly as the server will decode it (the memory of rTop-k,
Barnes et al. 2020, and of EF-SGD, Karimireddy et al. 2019). It is switched per compressor
(``error_feedback = true/false`` in ``[uplink]``), on by default for the
sparsifiers and SuRP, off for DGC, whose own accumulation plays that role.
"""

from __future__ import annotations

from collections import OrderedDict

from fedcomp.compressors.update.base import EncodeContext, Encoded, State, Update, UpdateCompressor

RESIDUAL_PREFIX = "ef/"


def encode_with_feedback(
    compressor: UpdateCompressor, update: Update, state: State | None, ctx: EncodeContext
) -> Encoded:
    """Encode ``update`` through ``compressor``, with error feedback if it is on.

    ``state`` holds both the residual (keys ``ef/<name>``) and the
    compressor's own state; the returned state holds both, updated.
    """
    state = dict(state or {})
    residual = {k[len(RESIDUAL_PREFIX) :]: v for k, v in state.items() if k.startswith(RESIDUAL_PREFIX)}
    own = {k: v for k, v in state.items() if not k.startswith(RESIDUAL_PREFIX)}
    if not compressor.error_feedback:
        return compressor.encode(update, own, ctx)
    corrected = OrderedDict((k, v + residual[k] if k in residual else v.clone()) for k, v in update.items())
    encoded = compressor.encode(corrected, own, ctx)
    for k, v in corrected.items():
        encoded.state[RESIDUAL_PREFIX + k] = v - encoded.sent[k]
    return encoded
