"""No downlink compression: the global model broadcast dense, in its own dtypes.

The same bytes as the identity update codec on the model's state (codec
``identity``, tensors named by digest), so a run without server compression
is byte-for-byte what it always was.
"""

from __future__ import annotations

from typing import Any

from fedcomp.coding import Payload
from fedcomp.compressors.model.base import (
    MODEL_COMPRESSORS,
    Broadcast,
    ModelCompressor,
    Received,
    State,
    dense_payload,
    read_whole,
)
from fedcomp.compressors.model.structure import Structure


@MODEL_COMPRESSORS.register("identity", "no compression: the global model dense (the reference)")
class IdentityModelCompressor(ModelCompressor):
    name = "identity"

    def broadcast(self, server_round: int, state: State, structure: Structure) -> Broadcast:
        return Broadcast(dense_payload(self.name, state, structure), state, structure)

    @classmethod
    def broadcasts_dense_model(cls, params: Any) -> bool:
        return True

    def decode_body(self, parsed: Payload, structure: Structure) -> Received:
        return Received(read_whole(parsed), structure)
