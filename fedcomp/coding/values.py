"""Value packing: float arrays as fp32, fp16 or bf16 bytes, and sign bits.

Little-endian, element after element. fp16 saturates outside ±65504 (the
encoder clamps, so an overflowing update degrades instead of turning into
inf); bf16 keeps fp32's range with 8 bits of mantissa (round to nearest
even, as torch casts).
"""

from __future__ import annotations

import numpy as np
import torch

from fedcomp.coding.errors import DecodeError

VALUE_FORMATS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "bf16": 2}
FP16_MAX = 65504.0


def pack_values(values: torch.Tensor | np.ndarray, fmt: str = "fp32") -> bytes:
    """The values, flattened, as ``fmt`` bytes."""
    if fmt not in VALUE_FORMATS:
        raise ValueError(f"value format must be one of {sorted(VALUE_FORMATS)}, got {fmt!r}")
    t = torch.as_tensor(values).detach().to("cpu", torch.float32).reshape(-1)
    if fmt == "fp16":
        t = t.clamp(-FP16_MAX, FP16_MAX)
    t = t.to(VALUE_FORMATS[fmt]).contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def unpack_values(data: bytes, fmt: str, count: int) -> torch.Tensor:
    """``count`` values of format ``fmt`` from ``data``, as float32."""
    if fmt not in VALUE_FORMATS:
        raise DecodeError(f"unknown value format {fmt!r}")
    need = count * BYTES_PER_VALUE[fmt]
    if count < 0 or len(data) != need:
        raise DecodeError(f"{count} {fmt} values need {need} bytes, got {len(data)}")
    if count == 0:
        return torch.zeros(0)
    return torch.frombuffer(bytearray(data), dtype=VALUE_FORMATS[fmt]).to(torch.float32)


def pack_signs(negative: np.ndarray) -> bytes:
    """One bit per value, 1 for negative, MSB first, zero-padded to a byte."""
    return np.packbits(np.asarray(negative, dtype=bool).reshape(-1)).tobytes()


def unpack_signs(data: bytes, count: int) -> np.ndarray:
    """Inverse of :func:`pack_signs`: ``count`` booleans (True = negative)."""
    if count < 0 or len(data) != (count + 7) // 8:
        raise DecodeError(f"{count} sign bits need {(count + 7) // 8} bytes, got {len(data)}")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count).astype(bool)
