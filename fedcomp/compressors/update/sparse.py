"""The sparse update format shared by top-k, random-k, rTop-k and DGC.

Body: one bit stream holding, tensor after tensor (in spec order), the set
of selected indices (count by Elias-δ, then Golomb-coded gaps with M from
k/n: :func:`fedcomp.coding.encode_indices`), padded to a byte; then the
selected values of every tensor, back to back in the same order, in the
value code (:func:`pack_selected`): fp32, fp16 or bf16 per value; ``int8``,
one fp32 scale max|v|/127 for the whole update and a rounded int8 per value;
or ``sign``, one fp32 magnitude μ = mean |v| for the whole update and one
sign bit per value (the ternary code of STC, Sattler et al. 2019, Alg. 1).
A tensor whose selection is everything costs only its count.

**Allocation** (``allocation``): ``per_tensor`` gives every tensor its own
k = ⌈density·n_tensor⌉; ``global`` selects k = ⌈density·n⌉ over the whole
update at once (the selection rule applied to all tensors concatenated), so
a small tensor with large entries (a bias, the output layer) is not starved
by a per-tensor share of zero or one, and a large flat tensor does not take
coordinates it does not need.

**Byte budgets** (``max_bytes``, every sparsifier): the whole payload,
container framing included, never exceeds ``max_bytes``. If the selection
at ``density`` does not fit, the density is lowered by bisection over whole
encodes (each tensor then gets ⌊d·n⌋ coordinates, zero allowed) and the
densest encode that fits is sent; a budget below the payload of an empty
selection is a ValueError at encode time.
"""

from __future__ import annotations

import math
import struct
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
from fedcomp.coding.values import BYTES_PER_VALUE, VALUE_FORMATS, pack_signs, pack_values, unpack_signs
from fedcomp.params import require

Selection = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""name → (flat int64 indices, sorted ascending; the values at them)."""


@dataclass
class SparseParams:
    """Parameters every sparsifier shares."""

    density: float = 0.01
    """Fraction of the coordinates sent (k = ⌈density·n⌉ per tensor, at least 1; with ``global``, of the update)."""
    values: str = "fp32"
    """Value code: fp32, fp16, bf16, int8 (one scale per update) or sign (one mean magnitude per update)."""
    allocation: str = "per_tensor"
    """How k is shared: ``per_tensor`` (each tensor its density·n) or ``global`` (one selection over all)."""
    error_feedback: bool | str | None = None
    """Keep what was not sent and add it next round (default: the method's own)."""
    max_bytes: int = 0
    """Largest payload in bytes, container included (0 = none): the density is lowered until it fits."""
    lossless: str = "none"
    """A lossless stage after the codec: "none" or "zstd" (the body as one zstd frame, when that is shorter)."""

    def validate(self, path: str) -> None:
        require(0 < self.density <= 1, f"{path}.density", f"a number in (0, 1], got {self.density}")
        require(self.max_bytes >= 0, f"{path}.max_bytes", "an integer >= 0 (0 = no budget)")
        require(self.values in VALUE_CODES, f"{path}.values", f"one of {list(VALUE_CODES)}, got {self.values!r}")
        require(
            self.allocation in ALLOCATIONS, f"{path}.allocation", f"one of {list(ALLOCATIONS)}, got {self.allocation!r}"
        )


VALUE_CODES = (*VALUE_FORMATS, "int8", "sign")
ALLOCATIONS = ("per_tensor", "global")
_SCALE = struct.Struct("<f")


def _as_fp32(x: float) -> float:
    """``x`` as the fp32 the payload carries (encoder and decoder must scale by the very same number)."""
    return _SCALE.unpack(_SCALE.pack(x))[0]


def pack_selected(values: torch.Tensor, code: str) -> bytes:
    """Every tensor's selected values, back to back, in the value ``code`` (module docstring)."""
    v = values.detach().to("cpu", torch.float32).reshape(-1)
    if code in VALUE_FORMATS:
        return pack_values(v, code)
    if not v.numel():
        return b""
    if code == "int8":
        scale = _as_fp32(float(v.abs().max()) / 127)
        q = torch.round(v / scale).clamp(-127, 127) if scale > 0 else torch.zeros_like(v)
        return _SCALE.pack(scale) + q.to(torch.int8).numpy().tobytes()
    mu = _as_fp32(float(v.abs().mean()))  # STC: μ = (1/k) Σ |v| over the sent values
    return _SCALE.pack(mu) + pack_signs((v < 0).numpy())


def selected_bytes(code: str, count: int) -> int:
    """The length :func:`pack_selected` gives ``count`` values."""
    if code in VALUE_FORMATS:
        return count * BYTES_PER_VALUE[code]
    if not count:
        return 0
    return _SCALE.size + (count if code == "int8" else (count + 7) // 8)


def unpack_selected(data: bytes, code: str, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_selected`: ``count`` float32 values; DecodeError when the length or scale is off."""
    if code in VALUE_FORMATS:
        return unpack_values(data, code, count)
    if len(data) != selected_bytes(code, count):
        raise DecodeError(f"{count} {code} values need {selected_bytes(code, count)} bytes, got {len(data)}")
    if not count:
        return torch.zeros(0)
    (scale,) = _SCALE.unpack_from(data)
    if not math.isfinite(scale) or scale < 0:
        raise DecodeError(f"{code} values: the scale is not finite or is negative ({scale})")
    if code == "int8":
        q = torch.frombuffer(bytearray(data[_SCALE.size :]), dtype=torch.int8).to(torch.float32)
        return q * scale
    negative = torch.from_numpy(unpack_signs(data[_SCALE.size :], count))
    return torch.where(negative, -scale, scale).to(torch.float32)


def split_selection(update: dict[str, torch.Tensor], idx: torch.Tensor, vals: torch.Tensor) -> Selection:
    """A selection over all tensors concatenated (``global`` allocation; ``idx`` sorted) as each tensor's own."""
    out: Selection = {}
    start = 0
    for name, t in update.items():
        stop = start + t.numel()
        lo, hi = (int(i) for i in torch.searchsorted(idx, torch.tensor([start, stop])))
        out[name] = (idx[lo:hi] - start, vals[lo:hi])
        start = stop
    return out


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
    for name, tensor in update.items():
        encode_indices(selection[name][0].cpu().numpy(), tensor.numel(), writer)
    chosen = [selection[name][1].reshape(-1) for name in update]
    values = torch.cat(chosen) if chosen else torch.zeros(0)
    packed = pack_selected(values, value_format)
    decoded = unpack_selected(packed, value_format, values.numel())  # what the receiver adds: exactly this
    sent, start = OrderedDict(), 0
    for name, tensor in update.items():
        idx = selection[name][0].cpu()
        dense = torch.zeros(tensor.numel(), dtype=torch.float32)
        if idx.numel():
            dense[idx] = decoded[start : start + idx.numel()]
        start += idx.numel()
        sent[name] = dense.view(tensor.shape)
    body = writer.getvalue() + packed
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
    if fmt not in VALUE_CODES:
        raise DecodeError(f"sparse payload: unknown value format {fmt!r:.40}")
    reader = BitReader(body)
    index_sets = [decode_indices(reader, spec.numel) for spec in specs]
    offset = (reader.pos + 7) // 8
    total = sum(len(i) for i in index_sets)
    need = selected_bytes(fmt, total)
    if len(body) - offset != need:
        raise DecodeError(f"sparse payload: {len(body) - offset} value bytes after the indices, {need} expected")
    values = unpack_selected(body[offset:], fmt, total)
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
