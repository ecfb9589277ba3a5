"""blockwise8: 8-bit blockwise quantization with bitsandbytes' dynamic code (Dettmers et al. 2022), on the CPU.

Each tensor is quantized by blocks of ``blocksize`` elements to one of 256
values times the block's fp32 absmax (:mod:`.blockwise`: T̂ = N_b·C[q]), 8
bits an element plus 32 bits a block. The default code book is
bitsandbytes' *dynamic* data type (``create_dynamic_map(signed=True)``,
"8-bit Optimizers via Block-wise Quantization" §2.2, after Dettmers 2016):
a sign, then an exponent written as a run of zero bits (10⁰ … 10⁻⁶) and a
fraction that gets the bits the exponent leaves, so it resolves magnitudes
from 1 down to about 10⁻⁶ with a relative step that grows as they shrink:
for e = 0..6, 2^e values 10^{e−6}·(m_j), m_j the midpoints of
linspace(0.1, 1, 2^e + 1), each with both signs, plus 0 and 1 (256 in all;
the most negative is −0.993, not −1). :func:`dynamic_map` rebuilds it
exactly as bitsandbytes does (float32 arithmetic, then sorted).
``code = "linear"`` is the plain absmax int8 code instead: 255 levels k/127,
k = −127..127 (bitsandbytes' ``create_linear_map`` without its duplicate zero).

The default ``blocksize`` is 4096, bitsandbytes' ``quantize_blockwise``
default, which NVIDIA FLARE's ``ModelQuantizer`` uses for "blockwise8":
8.008 bits an element. Smaller blocks (256, 2048) follow outliers more
closely at 8.125 and 8.016 bits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from fedcomp.compressors.update.base import UPDATE_COMPRESSORS
from fedcomp.compressors.update.blockwise import BLOCK_SIZES, BlockwiseCompressor
from fedcomp.params import require

CODES = ("dynamic", "linear")


@functools.cache
def dynamic_map(max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """bitsandbytes' signed dynamic map, value for value (its ``create_dynamic_map(signed=True)``)."""
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:  # pragma: no cover - not for the signed 8-bit map
        boundaries = torch.linspace(0.1, 1, additional_items + 1)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)) * means).tolist()
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float32)


@functools.cache
def linear_map() -> torch.Tensor:
    """The 255 absmax int8 levels k/127, k = −127..127."""
    return torch.arange(-127, 128, dtype=torch.float32) / 127


@dataclass
class Blockwise8Params:
    blocksize: int = 4096
    """Elements per absmax block (32..4096, a power of two; bitsandbytes' and FLARE's default 4096)."""
    code: str = "dynamic"
    """"dynamic": bitsandbytes' dynamic exponent code (the default); "linear": absmax int8, 255 levels."""
    error_feedback: bool | str | None = None
    """Keep what was not sent and add it next round (default off, as FLARE's filter)."""
    lossless: str = "none"
    """A lossless stage after the codec: "none" or "zstd" (the body as one zstd frame, when that is shorter)."""

    def validate(self, path: str) -> None:
        require(self.blocksize in BLOCK_SIZES, f"{path}.blocksize", f"one of {list(BLOCK_SIZES)}")
        require(self.code in CODES, f"{path}.code", f"one of {list(CODES)}, got {self.code!r}")


@UPDATE_COMPRESSORS.register(
    "blockwise8", "8-bit blockwise absmax quantization, bitsandbytes' dynamic code (Dettmers 2022; NVIDIA FLARE)"
)
class Blockwise8Compressor(BlockwiseCompressor):
    name = "blockwise8"
    Params = Blockwise8Params
    bits = 8
    CODES = CODES

    def code(self, name: str) -> torch.Tensor:
        return dynamic_map() if name == "dynamic" else linear_map()
