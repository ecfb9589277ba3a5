"""The identity codec: every tensor sent dense, in its own dtype.

The uncompressed reference point every compression ratio is measured
against. Updates are fp32, so four bytes a coordinate, framed in the
standard container (header, tensor-list digest, CRC32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedcomp.coding import DecodeError, TensorSpec, pack, specs_of, tensor_from_bytes, tensor_to_bytes
from fedcomp.compressors.update.base import UPDATE_COMPRESSORS, EncodeContext, Encoded, State, Update, UpdateCompressor


@UPDATE_COMPRESSORS.register("identity", "no compression: dense fp32 (the reference)")
class IdentityCompressor(UpdateCompressor):
    name = "identity"

    def encode(self, update: Update, state: State | None = None, ctx: EncodeContext | None = None) -> Encoded:
        tensors = {k: v.detach().to("cpu") for k, v in update.items()}
        body = b"".join(tensor_to_bytes(t) for t in tensors.values())
        payload = pack(self.name, {}, specs_of(tensors), body, by_digest=True)
        return Encoded(payload, tensors, {"density": 1.0}, dict(state or {}))

    def decode_body(self, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes) -> dict[str, torch.Tensor]:
        need = sum(s.nbytes for s in specs)
        if len(body) != need:
            raise DecodeError(f"identity: body is {len(body)} bytes, the specs need {need}")
        out, pos = {}, 0
        for spec in specs:
            out[spec.name] = tensor_from_bytes(body[pos : pos + spec.nbytes], spec)
            pos += spec.nbytes
        return out
