"""signSGD with the ℓ₁ scale, and EF-signSGD (Karimireddy et al. 2019, "Error Feedback Fixes SignSGD").

Each tensor p of the update is sent as its scaled sign, the compressor
of the paper's EF-signSGD:

    C(p) = (‖p‖₁ / d) · sign(p)          d = p's number of coordinates

one fp32 scale per tensor and one sign bit per coordinate (1 = negative;
a zero coordinate goes out as +scale, as one bit cannot say "zero"):
about 1 bit per coordinate, 32× below fp32. ``ef_signsgd`` keeps the
error and adds it to the next update (error feedback as in EF-SGD:
p_t = Δ_t + e_t is compressed, e_{t+1} = p_t − C(p_t)), which is what makes the scaled sign converge where
plain ``signsgd`` (the same compressor without the memory) can fail (the
paper's counter-examples). The ℓ₁ scale is what carries the step size
here: fedcomp compresses the model change of local training, which
already holds the client's learning rate, so the unscaled ±1 of Bernstein
et al. (2018) would move every coordinate by a whole unit; its majority
vote, a server-side aggregation, is not offered.

Wire format: params ``{}``; body: the tensors' scales (fp32, spec order),
then every tensor's sign bits back to back, zero-padded to a byte.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedcomp.coding import DecodeError, TensorSpec, pack, pack_signs, pack_values, specs_of, unpack_signs, unpack_values
from fedcomp.compressors.update.base import (
    UPDATE_COMPRESSORS,
    EncodeContext,
    Encoded,
    State,
    Update,
    UpdateCompressor,
    float32_update,
    refuse_negative,
)


@dataclass
class SignParams:
    error_feedback: bool | str | None = None
    """Keep what was not sent and add it next round (default: off for signsgd, on for ef_signsgd)."""
    lossless: str = "none"
    """A lossless stage after the codec: "none" or "zstd" (the body as one zstd frame, when that is shorter)."""


class ScaledSignCompressor(UpdateCompressor):
    """C(p) = (‖p‖₁/d)·sign(p) per tensor; the two registered names differ only in error feedback."""

    Params = SignParams

    def encode(self, update: Update, state: State | None = None, ctx: EncodeContext | None = None) -> Encoded:
        tensors = float32_update(update)
        means = [float(t.abs().mean()) if t.numel() else 0.0 for t in tensors.values()]
        scales = torch.tensor(means, dtype=torch.float32)  # the scales as sent
        negative = np.concatenate([t.reshape(-1).numpy() < 0 for t in tensors.values()] or [np.zeros(0, bool)])
        body = pack_values(scales) + pack_signs(negative)
        specs = specs_of(tensors)
        sent = _expand(specs, scales, negative)
        return Encoded(pack(self.name, {}, specs, body, by_digest=True), sent, {"density": 1.0}, dict(state or {}))

    def decode_body(self, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes) -> dict[str, torch.Tensor]:
        if params:
            raise DecodeError(f"{self.name}: unexpected params {sorted(params)[:4]}")
        n = sum(s.numel for s in specs)
        head = 4 * len(specs)
        if len(body) != head + (n + 7) // 8:
            raise DecodeError(f"{self.name}: body is {len(body)} bytes, {head + (n + 7) // 8} expected")
        scales = unpack_values(body[:head], "fp32", len(specs))
        refuse_negative(self.name, "scale", specs, scales)  # an ℓ₁ mean never is; NaN and inf: check_decoded
        negative = unpack_signs(body[head:], n)
        return _expand(specs, scales, negative)


def _expand(specs: Sequence[TensorSpec], scales: torch.Tensor, negative: np.ndarray) -> dict[str, torch.Tensor]:
    """Each tensor as ±scale by its sign bits."""
    out, pos = OrderedDict(), 0
    for spec, scale in zip(specs, scales.tolist(), strict=True):
        signs = torch.from_numpy(negative[pos : pos + spec.numel].copy())
        out[spec.name] = torch.where(signs, -scale, scale).to(torch.float32).view(spec.shape)
        pos += spec.numel
    return out


@UPDATE_COMPRESSORS.register("signsgd", "scaled sign (‖p‖₁/d)·sign(p) per tensor, 1 bit a coordinate, no memory")
class SignSGDCompressor(ScaledSignCompressor):
    name = "signsgd"


@UPDATE_COMPRESSORS.register("ef_signsgd", "EF-signSGD: the scaled sign with error feedback (Karimireddy et al. 2019)")
class EFSignSGDCompressor(ScaledSignCompressor):
    name = "ef_signsgd"
    error_feedback_default = True
