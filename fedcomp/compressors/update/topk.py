"""Reference sparsifiers: plain top-k and random-k.

top-k sends the k = ⌈density·n⌉ largest-magnitude coordinates of each
tensor (or, with ``allocation = "global"``, of the whole update); random-k
a uniformly random k (seeded per round and client), with the optional
unbiased rescaling by n/k. Both use the shared sparse format and its value
codes (:mod:`.sparse`). STC is top-k with global allocation and the sign
code: Sattler et al. 2019, "Robust and Communication-Efficient Federated
Learning from Non-IID Data", Algorithm 1 (sparse ternary compression: the
top-k of the whole update, each sent as ±μ with μ their mean magnitude,
positions Golomb-coded) with error accumulation (their eq. 9).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedcomp.coding import TensorSpec
from fedcomp.compressors.update.base import (
    UPDATE_COMPRESSORS,
    EncodeContext,
    Encoded,
    State,
    Update,
    UpdateCompressor,
    float32_update,
)
from fedcomp.compressors.update.sparse import (
    SparseParams,
    decode_sparse,
    encode_sparse,
    fit_bytes,
    k_for,
    k_within,
    split_selection,
    top_magnitude,
)
from fedcomp.seeding import torch_generator

UPLINK_SELECTION = 11  # seeding purpose for the compressors' own randomness


class SparseCompressor(UpdateCompressor):
    """Shared encode/decode around a per-tensor ``select``."""

    Params = SparseParams
    error_feedback_default = True
    bounds_own_values = True  # decode_sparse checks the k values it reads

    def select(self, name: str, flat: torch.Tensor, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def encode(self, update: Update, state: State | None = None, ctx: EncodeContext | None = None) -> Encoded:
        ctx = ctx or EncodeContext()
        tensors = float32_update(update)
        total = sum(t.numel() for t in tensors.values())

        def attempt(density: float, budgeted: bool) -> tuple[bytes, dict[str, torch.Tensor], int]:
            gen = torch_generator(self.seed, UPLINK_SELECTION, ctx.server_round, ctx.client_id)
            size = k_within if budgeted else k_for
            if self.params.allocation == "global":  # one selection over the whole update
                flat = torch.cat([t.reshape(-1) for t in tensors.values()]) if tensors else torch.zeros(0)
                selection = split_selection(tensors, *self.select("*", flat, size(flat.numel(), density), gen))
            else:
                selection = {}
                for name, t in tensors.items():
                    flat = t.reshape(-1)
                    selection[name] = self.select(name, flat, size(flat.numel(), density), gen)
            payload, sent = encode_sparse(self.name, tensors, selection, self.params.values)
            return payload, sent, sum(idx.numel() for idx, _ in selection.values())

        global_ = self.params.allocation == "global"
        largest = total if global_ else max((t.numel() for t in tensors.values()), default=0)
        payload, sent, chosen = fit_bytes(attempt, self.params.density, self.params.max_bytes, largest)
        return Encoded(payload, sent, {"density": chosen / max(total, 1)}, dict(state or {}))

    def decode_body(
        self, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes, max_abs: float = math.inf
    ) -> dict[str, torch.Tensor]:
        return decode_sparse(params, specs, body, max_abs)


@UPDATE_COMPRESSORS.register("topk", "top-k by magnitude per tensor (reference point)")
class TopKCompressor(SparseCompressor):
    name = "topk"

    def select(self, name: str, flat: torch.Tensor, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = top_magnitude(flat, k)
        return idx, flat[idx]


@dataclass
class RandomKParams(SparseParams):
    rescale: bool = False
    """Multiply the sent values by n/k (unbiased; usually off with error feedback)."""


@UPDATE_COMPRESSORS.register("randomk", "uniformly random k per tensor, optional n/k rescaling (reference point)")
class RandomKCompressor(SparseCompressor):
    name = "randomk"
    Params = RandomKParams

    def select(self, name: str, flat: torch.Tensor, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = flat.numel()
        idx = torch.randperm(n, generator=gen)[:k].sort().values
        vals = flat[idx]
        return idx, vals * (n / k) if self.params.rescale and k else vals


@dataclass
class STCParams(SparseParams):
    """STC's defaults: one selection over the whole update, each value sent as ±μ."""

    allocation: str = "global"
    values: str = "sign"


@UPDATE_COMPRESSORS.register(
    "stc", "sparse ternary compression (Sattler et al. 2019): global top-k sent as ±mean magnitude, Golomb positions"
)
class STCCompressor(TopKCompressor):
    name = "stc"
    Params = STCParams
