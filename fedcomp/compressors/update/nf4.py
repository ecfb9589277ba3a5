"""NF4: 4-bit NormalFloat, blockwise absmax with blocks of 64 (QLoRA; Dettmers et al. 2023), on the CPU.

QLoRA's NormalFloat code book holds the quantiles of N(0, 1), normalized to
[−1, 1], so that each of the 2^k values gets an equal share of a normal
tensor: q_i = ½(Q_X(i/(2^k + 1)) + Q_X((i + 1)/(2^k + 1))) (QLoRA eq. 4),
made asymmetric to have an exact zero — 2^{k−1} quantiles for the negative
half, 2^{k−1} + 1 for the positive half, one of the two zeros dropped. As
bitsandbytes builds it (``create_normal_map``, offset δ = ½(1 − 1/30 +
1 − 1/32) = 0.9677083): the positive values Φ⁻¹ of 8 points linspace(δ, ½, 9)
(the last, ½, dropped), the negative values −Φ⁻¹ of linspace(δ, ½, 8)
(½ dropped), 0, all divided by the largest. :data:`NF4` is the table
bitsandbytes ships; the tests rebuild it from the normal quantiles.

Each tensor is quantized by blocks (:mod:`.blockwise`: T̂ = N_b·NF4[q]): 4
bits an element and 32 bits of absmax per block, 4.5 bits an element at
the default ``blocksize`` = 64 (bitsandbytes' ``quantize_4bit`` default,
which NVIDIA FLARE's ``ModelQuantizer`` uses for "normfloat4"). QLoRA's
double quantization (the absmax values themselves in 8 bits, blocks of
256) is not applied: FLARE's filter does not apply it either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedcomp.compressors.update.base import UPDATE_COMPRESSORS
from fedcomp.compressors.update.blockwise import BLOCK_SIZES, BlockwiseCompressor
from fedcomp.params import require

NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
"""The 16 NormalFloat values, as bitsandbytes ships them (``functional.get_4bit_type("nf4")``)."""


@dataclass
class NF4Params:
    blocksize: int = 64
    """Elements per absmax block (32..4096, a power of two; QLoRA's and bitsandbytes' 64)."""
    error_feedback: bool | str | None = None
    """Keep what was not sent and add it next round (default off, as FLARE's filter)."""
    lossless: str = "none"
    """A lossless stage after the codec: "none" or "zstd" (the body as one zstd frame, when that is shorter)."""

    def validate(self, path: str) -> None:
        require(self.blocksize in BLOCK_SIZES, f"{path}.blocksize", f"one of {list(BLOCK_SIZES)}")


@UPDATE_COMPRESSORS.register("nf4", "NF4: 4-bit NormalFloat, absmax blocks of 64 (QLoRA, bitsandbytes; NVIDIA FLARE)")
class NF4Compressor(BlockwiseCompressor):
    name = "nf4"
    Params = NF4Params
    bits = 4
    CODES = ("nf4",)

    def code_name(self) -> str:
        return "nf4"

    def code(self, name: str) -> torch.Tensor:
        return torch.tensor(NF4, dtype=torch.float32)
