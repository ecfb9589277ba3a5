"""QSGD: stochastic quantization to s levels, Elias-coded (Alistarh et al. 2017).

Each bucket v of ``bucket_size`` consecutive coordinates of a tensor (the
paper's bucketing; 0 = the whole tensor) is sent as

    Q_s(v_i) = ‖v‖₂ · sign(v_i) · ξ_i(v, s),

    ξ_i = (l + 1)/s with probability |v_i|·s/‖v‖₂ − l, else l/s,   l = ⌊|v_i|·s/‖v‖₂⌋,

so E[Q_s(v)] = v and E‖Q_s(v) − v‖² ≤ min(n/s², √n/s)·‖v‖² for a bucket of
n coordinates (Lemma 3.1). The draws come from a generator seeded by
(seed, round, client). FedPAQ (Reisizadeh et al. 2020) is this quantizer
on the model change of several local steps: ``[uplink] name = "qsgd"``
with ``client.local_steps`` > 1 (docs/uplink.md).

Coding (the paper's Elias coding, one stream for the whole update): the
bucket norms as fp32 (the paper's 32 bits per bucket), then the number of
nonzero levels (Elias-δ of k + 1), then for each nonzero, in coordinate
order, the gap since the previous one + 1 (Elias-γ), its sign bit and its
integer level s·ξ_i ≥ 1 (Elias-γ): small levels and short gaps get short
codes. The three fields are written as three arrays of the same length.
"""

from __future__ import annotations

import math
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
    LimitExceededError,
    TensorSpec,
    elias_delta_decode,
    elias_delta_encode,
    elias_gamma_decode,
    elias_gamma_encode,
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
    check_finite_input,
    float32_update,
)
from fedcomp.params import require
from fedcomp.seeding import UPLINK_QUANTIZATION, torch_generator

MAX_LEVELS = 1 << 16


@dataclass
class QSGDParams:
    levels: int = 16
    """s, the number of levels of |v_i|/‖v‖ in (0, 1] (s = 1: the sign and a coin; s = √n: dense-like)."""
    bucket_size: int = 512
    """Coordinates per bucket, each with its own norm (the paper's d; 0 = one bucket per tensor)."""
    error_feedback: bool | str | None = None
    """Keep what was not sent and add it next round (default off: Q_s is unbiased)."""
    lossless: str = "none"
    """A lossless stage after the codec: "none" or "zstd" (the body as one zstd frame, when that is shorter)."""

    def validate(self, path: str) -> None:
        require(1 <= self.levels <= MAX_LEVELS, f"{path}.levels", f"an integer in 1..{MAX_LEVELS}")
        require(self.bucket_size >= 0, f"{path}.bucket_size", "an integer >= 0 (0 = whole tensors)")


@UPDATE_COMPRESSORS.register("qsgd", "QSGD: unbiased stochastic quantization to s levels, Elias-coded (Alistarh 2017)")
class QSGDCompressor(UpdateCompressor):
    name = "qsgd"
    Params = QSGDParams

    def encode(self, update: Update, state: State | None = None, ctx: EncodeContext | None = None) -> Encoded:
        ctx = ctx or EncodeContext()
        p: QSGDParams = self.params
        gen = torch_generator(self.seed, UPLINK_QUANTIZATION, ctx.server_round, ctx.client_id)
        tensors = float32_update(update)
        # a NaN norm quantizes every level to 0: the payload would be a valid all-zero update
        check_finite_input("qsgd", tensors)
        specs = specs_of(tensors)
        flat = torch.cat([t.reshape(-1) for t in tensors.values()]) if tensors else torch.zeros(0)
        buckets = bucket_ids(specs, p.bucket_size)
        norms = torch.zeros(int(buckets.max()) + 1 if buckets.size else 0, dtype=torch.float64)
        norms.index_add_(0, torch.from_numpy(buckets), flat.double() ** 2)
        norms = norms.sqrt().to(torch.float32)  # the norms as sent (fp32)
        norm_of = norms[torch.from_numpy(buckets)].double()
        ratio = torch.where(norm_of > 0, flat.abs().double() / norm_of, torch.zeros_like(norm_of)) * p.levels
        low = ratio.floor()
        level = (low + (torch.rand(flat.numel(), generator=gen, dtype=torch.float64) < ratio - low)).clamp(0, p.levels)
        level = level.to(torch.int64).numpy()
        nz = np.flatnonzero(level)
        w = BitWriter()
        elias_delta_encode([nz.size + 1], w)
        if nz.size:
            elias_gamma_encode(np.diff(nz, prepend=-1), w)  # gap + 1 ≥ 1
            w.write_bits(flat.numpy()[nz] < 0)
            elias_gamma_encode(level[nz], w)
        body = pack_values(norms) + w.getvalue()
        sent = _expand(specs, norms, buckets, nz, flat.numpy()[nz] < 0, level[nz], p.levels)
        params = {"levels": p.levels, "bucket_size": p.bucket_size}
        payload = pack(self.name, params, specs, body, by_digest=True)
        return Encoded(payload, sent, {"density": nz.size / max(flat.numel(), 1)}, dict(state or {}))

    def decode_body(self, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes) -> dict[str, torch.Tensor]:
        levels, bucket_size = params.get("levels"), params.get("bucket_size")
        if set(params) != {"levels", "bucket_size"} or not all(type(v) is int for v in (levels, bucket_size)):
            raise DecodeError(f"qsgd: params must be integers levels and bucket_size, got {str(params)[:80]}")
        if not 1 <= levels <= MAX_LEVELS or bucket_size < 0:
            raise DecodeError(f"qsgd: levels {levels} or bucket_size {bucket_size} out of range")
        n = sum(s.numel for s in specs)
        buckets = bucket_ids(specs, bucket_size)
        count = int(buckets.max()) + 1 if buckets.size else 0
        if len(body) < 4 * count:
            raise DecodeError(f"qsgd: body of {len(body)} bytes is shorter than its {count} bucket norms")
        norms = unpack_values(body[: 4 * count], "fp32", count)
        negative = np.flatnonzero(norms.numpy() < 0)  # a norm never is; NaN and inf reach check_decoded
        if negative.size:
            at = int(
                np.searchsorted(np.cumsum([s.numel for s in specs]), np.flatnonzero(buckets == negative[0])[0], "right")
            )
            raise DecodeError(f"qsgd: a bucket norm of tensor '{specs[at].name}' is negative")
        r = BitReader(body[4 * count :])
        k = int(elias_delta_decode(r)[0]) - 1
        if k > n:
            raise LimitExceededError(f"qsgd: {k} nonzero levels declared for {n} coordinates")
        nz = np.cumsum(elias_gamma_decode(r, k).astype(np.int64)) - 1 if k else np.zeros(0, np.int64)
        if k and (nz[-1] >= n or np.any(np.diff(nz) <= 0)):  # every gap ≥ 1 keeps them increasing; a wrap does not
            raise DecodeError(f"qsgd: a nonzero position lies outside the {n} coordinates")
        negative = r.read_bits(k, "qsgd signs").astype(bool)
        level = elias_gamma_decode(r, k).astype(np.int64) if k else np.zeros(0, np.int64)
        if k and not (1 <= int(level.min()) and int(level.max()) <= levels):  # a code ≥ 2^63 casts negative
            raise DecodeError(f"qsgd: a level lies outside 1..s = {levels}")
        r.expect_end("qsgd codes")
        return _expand(specs, norms, buckets, nz, negative, level, levels)


def bucket_ids(specs: Sequence[TensorSpec], bucket_size: int) -> np.ndarray:
    """The bucket of every coordinate: buckets never straddle two tensors."""
    ids, next_id = [], 0
    for spec in specs:
        size = bucket_size or max(spec.numel, 1)
        ids.append(next_id + np.arange(spec.numel, dtype=np.int64) // size)
        next_id += math.ceil(spec.numel / size) if spec.numel else 0
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)


def _expand(
    specs: Sequence[TensorSpec],
    norms: torch.Tensor,
    buckets: np.ndarray,
    nz: np.ndarray,
    negative: np.ndarray,
    level: np.ndarray,
    levels: int,
) -> dict[str, torch.Tensor]:
    """Q_s(v) in float32: ‖v‖·sign·level/s at the nonzero positions, zero elsewhere."""
    dense = torch.zeros(buckets.size, dtype=torch.float32)
    if nz.size:
        mag = norms[torch.from_numpy(buckets[nz])] * torch.from_numpy(level.astype(np.float32)) / levels
        dense[torch.from_numpy(nz)] = torch.where(torch.from_numpy(negative.copy()), -mag, mag)
    out, pos = OrderedDict(), 0
    for spec in specs:
        out[spec.name] = dense[pos : pos + spec.numel].view(spec.shape)
        pos += spec.numel
    return out
