"""Bit-level wire format: the payload container and its typed errors."""

from fedcomp.coding.container import (
    DecodeLimits,
    Payload,
    TensorSpec,
    pack,
    specs_of,
    tensor_from_bytes,
    tensor_to_bytes,
    unpack,
)
from fedcomp.coding.errors import (
    ChecksumError,
    DecodeError,
    LimitExceededError,
    SpecMismatchError,
    TruncatedPayloadError,
)

__all__ = [
    "ChecksumError",
    "DecodeError",
    "DecodeLimits",
    "LimitExceededError",
    "Payload",
    "SpecMismatchError",
    "TensorSpec",
    "TruncatedPayloadError",
    "pack",
    "specs_of",
    "tensor_from_bytes",
    "tensor_to_bytes",
    "unpack",
]
