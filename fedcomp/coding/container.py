"""The payload container: the framing every fedcomp payload travels in.

Layout (all integers little-endian)::

    magic      4 bytes  b"FCMP"
    version    u8       FORMAT_VERSION
    codec      u8 length + UTF-8 name
    params     u32 length + UTF-8 JSON object (the codec's parameters)
    n_tensors  u32; its top bit set means "specs by digest": then a u32
               CRC32 of the full spec list follows instead of the specs
    per tensor: u16 name length + UTF-8 name, u8 dtype code, u8 ndim, ndim × u32 dims
    body       u64 length + bytes (the codec's own encoding)
    crc32      u32 over every byte before it

The decoder checks the CRC first, then every declared length against the
bytes actually present and against :class:`DecodeLimits` before anything is
allocated; when the receiver knows which tensors to expect (the server knows
its model's specs) they are compared too (name, shape and dtype). Every
failure is a :class:`~fedcomp.coding.errors.DecodeError` naming the field.
A valid CRC only says the bytes arrived as sent, not that the sender is
honest: after a codec has decoded, :func:`check_decoded` checks what came
out (the specs' tensors, finite, within ``DecodeLimits.max_abs``).

When both sides know the tensor list (an update against the server's own
model, a broadcast against the client's), ``pack(..., by_digest=True)``
replaces the specs (about 30 bytes a tensor) by a 4-byte digest; the
receiver checks it against the specs it expects.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedcomp.coding.errors import (
    ChecksumError,
    DecodeError,
    LimitExceededError,
    SpecMismatchError,
    TruncatedPayloadError,
)

MAGIC = b"FCMP"
FORMAT_VERSION = 1

# Wire codes for tensor dtypes. Codes are part of the format: never reuse one.
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.float64: 4,
    torch.int64: 5,
    torch.int32: 6,
    torch.uint8: 7,
    torch.bool: 8,
    torch.int8: 9,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor in a payload."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> TensorSpec:
        return cls(name, tuple(tensor.shape), tensor.dtype)


def specs_of(tensors: dict[str, torch.Tensor]) -> list[TensorSpec]:
    """Specs of an ordered mapping of tensors, in its order."""
    return [TensorSpec.of(name, t) for name, t in tensors.items()]


@dataclass(frozen=True)
class DecodeLimits:
    """What a receiver is willing to accept before it allocates anything."""

    max_payload_bytes: int = 1 << 31
    max_tensors: int = 10_000
    max_elements: int = 1 << 30
    """Elements summed over all tensors."""
    max_ndim: int = 8
    max_params_bytes: int = 1 << 16
    expected: tuple[TensorSpec, ...] | None = None
    """If given, the payload must hold exactly these tensors, in this order."""
    max_abs: float = math.inf
    """Largest magnitude a decoded floating-point value may have (NaN and ±inf are refused always).

    A forged payload with a valid CRC can decode to 1e34 as easily as to
    NaN; the receiver's bound (``federation.max_abs_value``) is what turns
    that into a refused reply instead of a poisoned average.
    """

    @classmethod
    def for_specs(
        cls, specs: Sequence[TensorSpec], slack_bytes: int = 1 << 20, *, max_abs: float = math.inf
    ) -> DecodeLimits:
        """Limits that admit exactly ``specs``: the server's own model, say.

        The byte bound allows the dense size of every tensor (no codec
        should need more) plus ``slack_bytes`` of framing and side data;
        ``max_abs`` bounds every decoded value (see :attr:`max_abs`).
        """
        dense = sum(s.nbytes for s in specs)
        return cls(
            max_payload_bytes=dense + slack_bytes + 64 * len(specs),
            max_tensors=len(specs),
            max_elements=sum(s.numel for s in specs),
            expected=tuple(specs),
            max_abs=max_abs,
        )

    def __post_init__(self) -> None:
        if not self.max_abs > 0:  # NaN included
            raise ValueError(f"max_abs must be a number > 0, got {self.max_abs!r}")


@dataclass(frozen=True)
class Payload:
    """A decoded container: the codec, its parameters, the specs and the body."""

    codec: str
    params: dict[str, Any]
    specs: tuple[TensorSpec, ...]
    body: bytes


DIGEST_FLAG = 1 << 31


def _spec_bytes(specs: Sequence[TensorSpec]) -> bytes:
    parts = []
    for spec in specs:
        tname = spec.name.encode("utf-8")
        if len(tname) > 0xFFFF:
            raise ValueError(f"tensor name too long: {spec.name[:40]!r}...")
        if spec.dtype not in DTYPE_CODES:
            raise ValueError(f"tensor {spec.name!r}: dtype {spec.dtype} has no wire code")
        parts += [struct.pack("<H", len(tname)), tname, struct.pack("<BB", DTYPE_CODES[spec.dtype], len(spec.shape))]
        parts.append(struct.pack(f"<{len(spec.shape)}I", *spec.shape))
    return b"".join(parts)


def spec_digest(specs: Sequence[TensorSpec]) -> int:
    """CRC32 of the canonical encoding of a spec list."""
    return zlib.crc32(struct.pack("<I", len(specs)) + _spec_bytes(specs))


def pack(
    codec: str, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes, *, by_digest: bool = False
) -> bytes:
    """Frame ``body`` as a container (see module docstring for the layout)."""
    name = codec.encode("utf-8")
    if not 0 < len(name) < 256:
        raise ValueError(f"codec name must be 1..255 bytes, got {codec!r}")
    if by_digest:
        tensors = struct.pack("<II", DIGEST_FLAG | len(specs), spec_digest(specs))
    else:
        tensors = struct.pack("<I", len(specs)) + _spec_bytes(specs)
    return _frame(codec, params, tensors, body)


def _frame(codec: str, params: dict[str, Any], tensors: bytes, body: bytes) -> bytes:
    """The container of ``codec`` with ``params``, the tensor section ``tensors`` as given, and ``body``."""
    name = codec.encode("utf-8")
    params_json = json.dumps(params, sort_keys=True, separators=(",", ":")).encode("utf-8")
    head = [MAGIC, struct.pack("<BB", FORMAT_VERSION, len(name)), name, struct.pack("<I", len(params_json))]
    data = b"".join([*head, params_json, tensors, struct.pack("<Q", len(body)), body])
    return data + struct.pack("<I", zlib.crc32(data))


def reframe(payload: bytes, rebuild: Callable[[dict[str, Any], bytes], tuple[dict[str, Any], bytes] | None]) -> bytes:
    """``payload`` (a container this process packed) with the params and body ``rebuild(params, body)`` gives.

    The tensor list (specs or digest) is kept byte for byte. For a stage after the codec (the lossless one,
    :mod:`fedcomp.coding.lossless`) that changes the body and says so in the params; ``rebuild`` returning
    None leaves the payload as it is.
    """
    r, codec, params = _read_header(payload, DecodeLimits())
    start = r.pos
    (n_tensors,) = r.unpack("<I", "tensor count")
    if n_tensors & DIGEST_FLAG:
        r.take(4, "spec digest")
    else:
        for i in range(n_tensors):
            _read_spec(r, i, DecodeLimits())
    tensors = payload[start : r.pos]
    (body_len,) = r.unpack("<Q", "body length")
    changed = rebuild(params, r.take(body_len, "body"))
    return payload if changed is None else _frame(codec, changed[0], tensors, changed[1])


class _Reader:
    """A bounds-checked cursor over a payload; every read names its field."""

    def __init__(self, data: bytes, end: int) -> None:
        self.data = data
        self.pos = 0
        self.end = end

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise TruncatedPayloadError(
                f"payload truncated in {field}: needs {n} bytes at offset {self.pos}, {self.end - self.pos} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, field: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), field))


def peek(data: bytes, limits: DecodeLimits | None = None) -> tuple[str, dict[str, Any]]:
    """The codec name and params of a container, checked (CRC included), before its tensor list.

    For receivers whose expected tensors depend on the params (a broadcast
    that carries a changed architecture).
    """
    _, codec, params = _read_header(data, limits or DecodeLimits())
    return codec, params


def _read_header(data: bytes, limits: DecodeLimits) -> tuple[_Reader, str, dict[str, Any]]:
    """Checks size, magic, CRC, version, codec and params; the reader then stands at the tensor count."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"payload must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > limits.max_payload_bytes:
        raise LimitExceededError(f"payload is {len(data)} bytes, limit is {limits.max_payload_bytes}")
    if len(data) < len(MAGIC) + 4:
        raise TruncatedPayloadError(f"payload is only {len(data)} bytes: too short for a container")
    if data[:4] != MAGIC:
        raise DecodeError(f"bad magic {data[:4]!r} at offset 0: not a fedcomp payload")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise ChecksumError(f"CRC32 mismatch over {len(data) - 4} bytes: payload corrupted")

    r = _Reader(data, len(data) - 4)
    r.take(4, "magic")
    version, name_len = r.unpack("<BB", "version")
    if version != FORMAT_VERSION:
        raise DecodeError(f"unsupported format version {version} (this fedcomp reads {FORMAT_VERSION})")
    try:
        codec = r.take(name_len, "codec name").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"codec name is not UTF-8: {exc}") from None
    (params_len,) = r.unpack("<I", "params length")
    if params_len > limits.max_params_bytes:
        raise LimitExceededError(f"codec params declare {params_len} bytes, limit {limits.max_params_bytes}")
    params = _parse_params(r.take(params_len, "codec params"))
    return r, codec, params


def unpack(data: bytes, limits: DecodeLimits | None = None) -> Payload:
    """Parse and check a container; raise :class:`DecodeError` on any fault."""
    limits = limits or DecodeLimits()
    r, codec, params = _read_header(data, limits)
    (n_tensors,) = r.unpack("<I", "tensor count")
    by_digest = bool(n_tensors & DIGEST_FLAG)
    n_tensors &= ~DIGEST_FLAG
    if n_tensors > limits.max_tensors:
        raise LimitExceededError(f"payload declares {n_tensors} tensors, limit is {limits.max_tensors}")
    if by_digest:
        (digest,) = r.unpack("<I", "spec digest")
        if limits.expected is None:
            raise SpecMismatchError("payload names its tensors by digest, but the receiver expects no specs")
        if n_tensors != len(limits.expected) or digest != spec_digest(limits.expected):
            raise SpecMismatchError(
                f"payload's tensor list (digest {digest:08x}, {n_tensors} tensors) is not the expected one "
                f"(digest {spec_digest(limits.expected):08x}, {len(limits.expected)} tensors)"
            )
        specs = tuple(limits.expected)
    else:
        specs = tuple(_read_spec(r, i, limits) for i in range(n_tensors))
    total = sum(s.numel for s in specs)
    if total > limits.max_elements:
        raise LimitExceededError(f"payload declares {total} elements in all, limit is {limits.max_elements}")
    if limits.expected is not None:
        _check_expected(specs, limits.expected)
    (body_len,) = r.unpack("<Q", "body length")
    body = r.take(body_len, "body")
    if r.pos != r.end:
        raise DecodeError(f"{r.end - r.pos} unexpected bytes after the body at offset {r.pos}")
    return Payload(codec, params, specs, body)


def _refuse_constant(name: str) -> float:
    raise DecodeError(f"codec params hold {name}: not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise DecodeError(f"codec params hold {text[:40]}: not a finite number")
    return value


def _parse_params(raw: bytes) -> dict[str, Any]:
    """The params JSON object; every way the parse can fail is a DecodeError.

    ``json.loads`` raises more than JSONDecodeError on hostile input: a
    ValueError for an integer of more than 4,300 digits (Python's int-string
    limit), RecursionError for deep nesting, MemoryError. NaN, Infinity and
    floats that overflow to inf are refused too: no codec writes them.
    """
    try:
        params = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except DecodeError:
        raise
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:  # UnicodeDecodeError is a ValueError
        raise DecodeError(f"codec params are not a JSON object: {str(exc)[:200]}") from None
    if not isinstance(params, dict):
        raise DecodeError(f"codec params must be a JSON object, got {type(params).__name__}")
    return params


def _read_spec(r: _Reader, index: int, limits: DecodeLimits) -> TensorSpec:
    where = f"tensor #{index}"
    (name_len,) = r.unpack("<H", f"{where} name length")
    try:
        name = r.take(name_len, f"{where} name").decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{where}: name is not UTF-8") from None
    code, ndim = r.unpack("<BB", f"{where} dtype")
    if code not in CODE_DTYPES:
        raise DecodeError(f"{where} ({name!r}): unknown dtype code {code}")
    if ndim > limits.max_ndim:
        raise LimitExceededError(f"{where} ({name!r}): {ndim} dimensions, limit is {limits.max_ndim}")
    shape = r.unpack(f"<{ndim}I", f"{where} shape")
    if math.prod(shape) > limits.max_elements:
        raise LimitExceededError(f"{where} ({name!r}): shape {shape} exceeds {limits.max_elements} elements")
    return TensorSpec(name, tuple(shape), CODE_DTYPES[code])


def _check_expected(got: tuple[TensorSpec, ...], want: tuple[TensorSpec, ...]) -> None:
    if len(got) != len(want):
        raise SpecMismatchError(f"payload holds {len(got)} tensors, expected {len(want)}")
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.name != w.name:
            raise SpecMismatchError(f"tensor #{i} is named {g.name!r}, expected {w.name!r}")
        if g.shape != w.shape:
            raise SpecMismatchError(f"tensor {g.name!r} has shape {g.shape}, expected {w.shape}")
        if g.dtype != w.dtype:
            raise SpecMismatchError(f"tensor {g.name!r} has dtype {g.dtype}, expected {w.dtype}")


SMALL_TENSOR = 1 << 16
"""Tensors up to this many elements are checked together (one reduction instead of one call each)."""


def values_within(tensor: torch.Tensor, max_abs: float = math.inf) -> bool:
    """Whether every value is finite with |x| ≤ ``max_abs``: one pass without temporaries.

    ``torch.aminmax`` propagates NaN into min and max, and ±inf shows in one
    of them, so two comparisons decide.
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    lo, hi = (float(v) for v in torch.aminmax(tensor))
    return math.isfinite(lo) and math.isfinite(hi) and max(-lo, hi) <= max_abs


def check_values(name: str, tensor: torch.Tensor, max_abs: float = math.inf) -> None:
    """A decoded floating-point tensor must be finite with |x| ≤ ``max_abs``; else a DecodeError naming it.

    The counts in the message are computed only for a tensor that fails.
    """
    if values_within(tensor, max_abs):
        return
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise DecodeError(f"tensor {name!r}: {bad} values are not finite")
    over = int((tensor.abs() > max_abs).sum())
    largest = float(tensor.abs().max())
    raise LimitExceededError(
        f"tensor {name!r}: {over} values exceed the bound |x| <= {max_abs:g} (largest {largest:g})"
    )


def check_all_values(named: Sequence[tuple[str, torch.Tensor]], max_abs: float = math.inf) -> None:
    """:func:`check_values` for many tensors at the cost of one pass: small tensors are reduced together.

    Decoded models have dozens of small tensors (biases, BatchNorms) whose
    per-call cost would dominate; they are concatenated per dtype and
    checked at once, large tensors one by one. Only if something fails are
    the tensors checked one at a time, in order, so the error names the
    first that fails.
    """
    floats = [(name, t) for name, t in named if t.is_floating_point() and t.numel()]
    small: dict[torch.dtype, list[torch.Tensor]] = {}
    ok = True
    for _, t in floats:
        if t.numel() > SMALL_TENSOR:
            ok = ok and values_within(t, max_abs)
        else:
            small.setdefault(t.dtype, []).append(t.reshape(-1))
    ok = ok and all(values_within(torch.cat(group), max_abs) for group in small.values())
    if ok:
        return
    for name, t in floats:
        check_values(name, t, max_abs)
    raise DecodeError("decoded values are out of bounds")  # pragma: no cover - a failing group has a failing member


def check_decoded(
    tensors: Mapping[str, torch.Tensor],
    specs: Sequence[TensorSpec],
    max_abs: float = math.inf,
    what: str = "payload",
    *,
    values: bool = True,
) -> None:
    """What a codec decoded is exactly the specs' tensors (names, order, shapes, dtypes), each :func:`check_values`.

    ``values=False`` skips the value pass, for a decoder that has already
    checked every value it placed (see ``UpdateCompressor.bounds_own_values``).
    """
    if list(tensors) != [s.name for s in specs]:
        raise SpecMismatchError(f"{what} decoded to tensors {list(tensors)[:8]}..., not its specs")
    for spec in specs:
        t = tensors[spec.name]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != spec.shape or t.dtype != spec.dtype:
            raise SpecMismatchError(f"{what}: tensor {spec.name!r} decoded to something else than {spec}")
    if values:
        check_all_values([(spec.name, tensors[spec.name]) for spec in specs], max_abs)


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    """The raw little-endian bytes of a tensor in its own dtype."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(raw: bytes, spec: TensorSpec) -> torch.Tensor:
    """Inverse of :func:`tensor_to_bytes`; the length must match the spec."""
    if len(raw) != spec.nbytes:
        raise DecodeError(f"tensor {spec.name!r}: {len(raw)} bytes for {spec.nbytes} expected")
    if spec.numel == 0:
        return torch.empty(spec.shape, dtype=spec.dtype)
    return torch.frombuffer(bytearray(raw), dtype=spec.dtype).reshape(spec.shape)
