"""The sparse update format shared by top-k, random-k, rTop-k and DGC.

Body: one bit stream holding, tensor after tensor (in spec order), the set
of selected indices (count by Elias-δ, then Golomb-coded gaps with M from
k/n: :func:`fedcomp.coding.encode_indices`), padded to a byte; then the
selected values of every tensor, in the same order, as fp32, fp16 or bf16.
A tensor whose selection is everything costs only its count.

**Byte budgets** (``max_bytes``, every sparsifier): the whole payload,
container framing included, never exceeds ``max_bytes``. If the selection
at ``density`` does not fit, the density is lowered by bisection over whole
encodes (each tensor then gets ⌊d·n⌋ coordinates, zero allowed) and the
densest encode that fits is sent; a budget below the payload of an empty
selection is a ValueError at encode time.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from fedcomp.coding import (
    BitReader,
    BitWriter,
    DecodeError,
    TensorSpec,
    check_values,
    decode_indices,
    encode_indices,
    pack,
    unpack_values,
    values_within,
)
from fedcomp.coding.values import BYTES_PER_VALUE, VALUE_FORMATS, pack_values
from fedcomp.config import require

Selection = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""name → (flat int64 indices, sorted ascending; the values at them)."""


@dataclass
class SparseParams:
    """Parameters every sparsifier shares."""

    density: float = 0.01
    """Fraction of each tensor's coordinates sent (k = ⌈density·n⌉, at least 1)."""
    values: str = "fp32"
    """Value format: fp32, fp16 or bf16."""
    error_feedback: bool | None = None
    """Keep what was not sent and add it next round (default: the method's own)."""
    max_bytes: int = 0
    """Largest payload in bytes, container included (0 = none): the density is lowered until it fits."""

    def validate(self, path: str) -> None:
        require(0 < self.density <= 1, f"{path}.density", f"a number in (0, 1], got {self.density}")
        require(self.max_bytes >= 0, f"{path}.max_bytes", "an integer >= 0 (0 = no budget)")
        require(self.values in VALUE_FORMATS, f"{path}.values", f"one of {sorted(VALUE_FORMATS)}, got {self.values!r}")


def k_for(n: int, density: float) -> int:
    return max(1, min(n, int(np.ceil(density * n))))


def k_within(n: int, density: float) -> int:
    """k under a byte budget: ⌊density·n⌋, zero allowed (so the payload shrinks smoothly with the density)."""
    return max(0, min(n, int(np.floor(density * n))))


Attempt = TypeVar("Attempt", bound=tuple)


def fit_bytes(attempt: Callable[[float, bool], Attempt], density: float, max_bytes: int, largest: int) -> Attempt:
    """The densest ``attempt(d, budgeted)`` whose payload (its first item) has at most ``max_bytes`` bytes.

    ``attempt(density, False)`` is the encode without a budget; if it does
    not fit, d is bisected in [0, density] with ``budgeted`` True (k =
    :func:`k_within`) until it no longer changes any k (``largest`` is the
    largest tensor's size). Only attempts that fit are kept, so the result
    fits even where the size is not monotone in d.
    """
    first = attempt(density, False)
    if not max_bytes or len(first[0]) <= max_bytes:
        return first
    best = attempt(0.0, True)
    if len(best[0]) > max_bytes:
        raise ValueError(f"max_bytes = {max_bytes} is below the {len(best[0])}-byte payload of an empty selection")
    lo, hi = 0.0, density
    while (hi - lo) * max(largest, 1) >= 0.5:
        mid = (lo + hi) / 2
        trial = attempt(mid, True)
        if len(trial[0]) <= max_bytes:
            lo, best = mid, trial
        else:
            hi = mid
    return best


def encode_sparse(
    codec: str, update: dict[str, torch.Tensor], selection: Selection, value_format: str
) -> tuple[bytes, dict[str, torch.Tensor]]:
    """Frame the selection as a payload; also return the dense update it decodes to."""
    writer = BitWriter()
    chunks, sent = [], OrderedDict()
    for name, tensor in update.items():
        idx, vals = selection[name]
        n = tensor.numel()
        encode_indices(idx.cpu().numpy(), n, writer)
        packed = pack_values(vals, value_format)
        chunks.append(packed)
        dense = torch.zeros(n, dtype=torch.float32)
        if idx.numel():
            dense[idx.cpu()] = unpack_values(packed, value_format, idx.numel())
        sent[name] = dense.view(tensor.shape)
    body = writer.getvalue() + b"".join(chunks)
    specs = [TensorSpec(name, tuple(t.shape), torch.float32) for name, t in update.items()]
    return pack(codec, {"values": value_format}, specs, body, by_digest=True), sent


def decode_sparse(
    params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes, max_abs: float = math.inf
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`encode_sparse`; every value read must be finite with |x| ≤ ``max_abs`` (else DecodeError).

    The rest of each tensor is zero, so checking the k values read (all of
    them at once: they lie back to back) bounds the whole decoded update
    (``UpdateCompressor.bounds_own_values``).
    """
    fmt = params.get("values")
    if fmt not in VALUE_FORMATS:
        raise DecodeError(f"sparse payload: unknown value format {fmt!r:.40}")
    reader = BitReader(body)
    index_sets = [decode_indices(reader, spec.numel) for spec in specs]
    offset = (reader.pos + 7) // 8
    total = sum(len(i) for i in index_sets)
    need = total * BYTES_PER_VALUE[fmt]
    if len(body) - offset != need:
        raise DecodeError(f"sparse payload: {len(body) - offset} value bytes after the indices, {need} expected")
    values = unpack_values(body[offset:], fmt, total)
    bounds = np.cumsum([0, *(len(i) for i in index_sets)])
    if not values_within(values, max_abs):  # name the first tensor whose values fail
        for spec, start, stop in zip(specs, bounds[:-1], bounds[1:], strict=True):
            check_values(spec.name, values[start:stop], max_abs)
    out = OrderedDict()
    for spec, idx, start, stop in zip(specs, index_sets, bounds[:-1], bounds[1:], strict=True):
        dense = torch.zeros(spec.numel, dtype=torch.float32)
        dense[torch.from_numpy(idx)] = values[start:stop]
        out[spec.name] = dense.view(spec.shape)
    return out


def top_magnitude(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (sorted) of the k largest-magnitude entries."""
    if k >= flat.numel():
        return torch.arange(flat.numel())
    return torch.topk(flat.abs(), k, sorted=False).indices.sort().values
