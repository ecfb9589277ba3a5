"""Blockwise absmax quantization to a code book: what nf4 and blockwise8 share (bitsandbytes' format, on the CPU).

bitsandbytes (Dettmers et al. 2022, "8-bit Optimizers via Block-wise
Quantization"; 2023, QLoRA) quantizes a tensor T block by block: the
elements of each block b of ``blocksize`` consecutive entries are divided
by the block's absolute maximum, which is kept in fp32, and rounded to the
nearest value of a code book C ⊂ [−1, 1]:

    N_b = max_{i ∈ b} |T_i|,     q_i = argmin_j |C_j − T_i / N_b|,     T̂_i = N_b · C[q_i]

(Dettmers et al. 2022, eq. 1 and §2.2; QLoRA §3, "block-wise k-bit
quantization"). Blocks run over each tensor in its flattened order and never
straddle two tensors (bitsandbytes quantizes one tensor at a time, as NVIDIA
FLARE's quantization filter calls it); the last block of a tensor may be
short. Rounding is deterministic (nearest value), so the estimate is
biased; ``error_feedback = true`` keeps what was not sent.

Wire format (params ``{"blocksize": B, "code": name}``): the body holds the
absmax of every block of every tensor (fp32, spec order), then every
element's code index, 4 bits (two per byte, the first in the high nibble,
a zero nibble after an odd count) or 8 bits.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedcomp.coding import DecodeError, TensorSpec, pack, specs_of
from fedcomp.compressors.update.base import (
    EncodeContext,
    Encoded,
    State,
    Update,
    UpdateCompressor,
    check_finite_input,
    float32_update,
)

BLOCK_SIZES = tuple(1 << k for k in range(5, 13))
"""What bitsandbytes accepts: 32..4096."""


def block_counts(specs: Sequence[TensorSpec], blocksize: int) -> list[int]:
    return [math.ceil(s.numel / blocksize) for s in specs]


class BlockwiseCompressor(UpdateCompressor):
    """Encode and decode for a code book of at most 256 values; subclasses name it (:meth:`code`) and its width."""

    bits: int = 8
    CODES: tuple[str, ...] = ()
    """The code books this codec knows, by the name the payload carries."""

    def code(self, name: str) -> torch.Tensor:
        """The code book ``name``, sorted ascending, float32."""
        raise NotImplementedError

    def code_name(self) -> str:
        return getattr(self.params, "code", "")

    def encode(self, update: Update, state: State | None = None, ctx: EncodeContext | None = None) -> Encoded:
        tensors = float32_update(update)
        check_finite_input(self.name, tensors)  # a NaN absmax would decode its whole block to NaN
        specs = specs_of(tensors)
        code = self.code(self.code_name())
        bounds = ((code[:-1] + code[1:]) / 2).numpy()
        size = self.params.blocksize
        absmax, indices = [], []
        for t in tensors.values():
            flat = t.reshape(-1)
            blocks = torch.nn.functional.pad(flat, (0, -flat.numel() % size)).view(-1, size)
            n_b = blocks.abs().amax(1, keepdim=True)  # N_b, fp32 as sent
            scaled = torch.where(n_b > 0, blocks / torch.where(n_b > 0, n_b, 1.0), 0.0)
            q = np.searchsorted(bounds, scaled.numpy().reshape(-1))  # the nearest code value (ties to the lower)
            indices.append(q[: flat.numel()].astype(np.uint8))
            absmax.append(n_b.reshape(-1))
        scales = torch.cat(absmax) if absmax else torch.zeros(0)
        flat_idx = np.concatenate(indices) if indices else np.zeros(0, np.uint8)
        body = scales.numpy().astype("<f4").tobytes() + pack_indices(flat_idx, self.bits)
        params = {"blocksize": size, "code": self.code_name()}
        payload = pack(self.name, params, specs, body, by_digest=True)
        return Encoded(payload, dequantize(specs, scales, flat_idx, code, size), {"density": 1.0}, dict(state or {}))

    def decode_body(self, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes) -> dict[str, torch.Tensor]:
        size, name = params.get("blocksize"), params.get("code")
        if set(params) != {"blocksize", "code"} or type(size) is not int or size not in BLOCK_SIZES:
            raise DecodeError(
                f"{self.name}: params must be a blocksize in {BLOCK_SIZES} and a code, got {params!s:.80}"
            )
        if name not in self.CODES:
            raise DecodeError(f"{self.name}: unknown code {str(name)[:40]!r}, one of {list(self.CODES)} expected")
        code = self.code(name)
        blocks = sum(block_counts(specs, size))
        n = sum(s.numel for s in specs)
        need = 4 * blocks + (n * self.bits + 7) // 8
        if len(body) != need:
            raise DecodeError(f"{self.name}: body is {len(body)} bytes, {need} expected")
        scales = torch.from_numpy(np.frombuffer(body, "<f4", blocks).astype(np.float32))
        negative = np.flatnonzero(scales.numpy() < 0)  # an absmax never is; NaN and inf reach check_decoded
        if negative.size:
            raise DecodeError(f"{self.name}: the absmax of block {int(negative[0])} is negative")
        idx = unpack_indices(body[4 * blocks :], n, self.bits)
        if idx.size and int(idx.max()) >= code.numel():
            raise DecodeError(f"{self.name}: code index {int(idx.max())} beyond the {code.numel()} values of {name!r}")
        return dequantize(specs, scales, idx, code, size)


def pack_indices(idx: np.ndarray, bits: int) -> bytes:
    if bits == 8:
        return idx.astype(np.uint8).tobytes()
    padded = np.concatenate([idx, np.zeros(idx.size % 2, np.uint8)]).astype(np.uint8)
    return ((padded[0::2] << 4) | padded[1::2]).tobytes()


def unpack_indices(data: bytes, count: int, bits: int) -> np.ndarray:
    raw = np.frombuffer(data, np.uint8)
    if bits == 8:
        return raw.copy()
    out = np.empty(2 * raw.size, np.uint8)
    out[0::2], out[1::2] = raw >> 4, raw & 0x0F
    if out[count:].any():
        raise DecodeError(f"a nonzero padding nibble after {count} 4-bit codes")
    return out[:count]


def dequantize(
    specs: Sequence[TensorSpec], scales: torch.Tensor, idx: np.ndarray, code: torch.Tensor, size: int
) -> dict[str, torch.Tensor]:
    """T̂_i = N_b · C[q_i], tensor by tensor (float32, as bitsandbytes dequantizes)."""
    out, pos, block = OrderedDict(), 0, 0
    for spec, count in zip(specs, block_counts(specs, size), strict=True):
        values = code[torch.from_numpy(idx[pos : pos + spec.numel].astype(np.int64))]
        per = scales[block : block + count].repeat_interleave(size)[: spec.numel]
        out[spec.name] = (values * per).reshape(spec.shape)
        pos += spec.numel
        block += count
    return out
