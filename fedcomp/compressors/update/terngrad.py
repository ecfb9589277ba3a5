"""TernGrad: ternary updates, unbiased (Wen et al. 2017).

Each tensor g of the update is sent as

    g̃ = s · sign(g) ∘ b,    s = max|g|,    b_k ~ Bernoulli(|g_k| / s) independently,

so E[g̃] = g (the paper's unbiasedness), with values in {−s, 0, +s}. The
Bernoulli draws come from a generator seeded by (seed, round, client).
``clip_sigma`` = c > 0 first clips g to [−cσ, cσ], σ the tensor's standard
deviation (the paper's layer-wise gradient clipping, c = 2.5 in its
experiments): it lowers s and so the variance, at the price of a bias;
the default 0 keeps the estimate unbiased.

Coding (the paper counts 2 bits a coordinate): the nonzero coordinates'
index set (Golomb-coded gaps, as the sparse codecs) and one sign bit each.
That is below 2 bits a coordinate at every density — about 1.5 at half
nonzero, 1 + 1/8 at all nonzero (a full set costs only its count) — and
far below where b is sparse, as it is on heavy-tailed updates (s is the
maximum). Body: the scales (fp32, spec order), then one bit stream of
every tensor's index set and signs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedcomp.coding import (
    BitReader,
    BitWriter,
    DecodeError,
    TensorSpec,
    decode_indices,
    encode_indices,
    pack,
    pack_values,
    specs_of,
    unpack_values,
)
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
from fedcomp.params import require
from fedcomp.seeding import UPLINK_QUANTIZATION, torch_generator


@dataclass
class TernGradParams:
    clip_sigma: float = 0.0
    """Clip each tensor to ±clip_sigma·σ before ternarizing (0 = off, unbiased; the paper uses 2.5)."""
    error_feedback: bool | str | None = None
    """Keep what was not sent and add it next round (default off: the estimate is unbiased)."""
    lossless: str = "none"
    """A lossless stage after the codec: "none" or "zstd" (the body as one zstd frame, when that is shorter)."""

    def validate(self, path: str) -> None:
        require(self.clip_sigma >= 0 and np.isfinite(self.clip_sigma), f"{path}.clip_sigma", "a number >= 0")


@UPDATE_COMPRESSORS.register("terngrad", "TernGrad: unbiased ternary {-s, 0, s} per tensor (Wen et al. 2017)")
class TernGradCompressor(UpdateCompressor):
    name = "terngrad"
    Params = TernGradParams

    def encode(self, update: Update, state: State | None = None, ctx: EncodeContext | None = None) -> Encoded:
        ctx = ctx or EncodeContext()
        gen = torch_generator(self.seed, UPLINK_QUANTIZATION, ctx.server_round, ctx.client_id)
        tensors = float32_update(update)
        scales, ternaries = [], []
        for t in tensors.values():
            g = t.reshape(-1)
            c = self.params.clip_sigma
            if c > 0 and g.numel() > 1:
                bound = c * float(g.std())
                g = g.clamp(-bound, bound)
            s = float(g.abs().max()) if g.numel() else 0.0
            keep = torch.rand(g.numel(), generator=gen) < (g.abs() / s if s > 0 else torch.zeros_like(g))
            ternaries.append((torch.sign(g) * keep).to(torch.int8).numpy())
            scales.append(s)
        scale_t = torch.tensor(scales, dtype=torch.float32)  # as sent
        w = BitWriter()
        for tern in ternaries:
            _write_ternary(tern, w)
        specs = specs_of(tensors)
        body = pack_values(scale_t) + w.getvalue()
        sent = _expand(specs, scale_t, ternaries)
        density = sum(int(np.count_nonzero(t)) for t in ternaries) / max(sum(t.size for t in ternaries), 1)
        return Encoded(pack(self.name, {}, specs, body, by_digest=True), sent, {"density": density}, dict(state or {}))

    def decode_body(self, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes) -> dict[str, torch.Tensor]:
        if params:
            raise DecodeError(f"terngrad: unexpected params {sorted(params)[:4]}")
        head = 4 * len(specs)
        if len(body) < head:
            raise DecodeError(f"terngrad: body of {len(body)} bytes is shorter than its {len(specs)} scales")
        scales = unpack_values(body[:head], "fp32", len(specs))
        refuse_negative("terngrad", "scale", specs, scales)  # s = max|g| never is; NaN and inf: check_decoded
        r = BitReader(body[head:])
        ternaries = [_read_ternary(r, spec.numel) for spec in specs]
        r.expect_end("terngrad codes")
        return _expand(specs, scales, ternaries)


def _write_ternary(tern: np.ndarray, w: BitWriter) -> None:
    """One tensor's nonzero positions and their signs (1 = negative)."""
    nz = np.flatnonzero(tern)
    encode_indices(nz, tern.size, w)
    w.write_bits(tern[nz] < 0)


def _read_ternary(r: BitReader, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.int8)
    idx = decode_indices(r, n)
    out[idx] = np.where(r.read_bits(idx.size, "terngrad signs").astype(bool), -1, 1)
    return out


def _expand(specs: Sequence[TensorSpec], scales: torch.Tensor, ternaries: list[np.ndarray]) -> dict[str, torch.Tensor]:
    return OrderedDict(
        (spec.name, (torch.from_numpy(tern.astype(np.float32)) * s).view(spec.shape))
        for spec, s, tern in zip(specs, scales.tolist(), ternaries, strict=True)
    )
