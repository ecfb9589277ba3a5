"""Bit streams: a writer and a reader of variable-length bit fields, vectorized.

Both work on arrays of fields at once, never one symbol per Python step:
the writer keeps a list of 0/1 ``uint8`` bit arrays (one per written
segment) and packs them with ``numpy.packbits`` at the end; the reader
unpacks once and slices. Bits are stored most-significant first, and a
stream is padded with zero bits to a whole byte.

Every read checks the bits it needs against the bits that are there and
raises :class:`~fedcomp.coding.errors.TruncatedPayloadError` naming the
field, so a hostile length can never read past the end.
"""

from __future__ import annotations

import numpy as np

from fedcomp.coding.errors import DecodeError, TruncatedPayloadError

MAX_FIELD_BITS = 64


def _as_u64(values: np.ndarray | list[int]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.size and arr.dtype.kind == "i" and int(arr.min()) < 0:
        raise ValueError("bit fields hold non-negative integers only")
    return arr.astype(np.uint64, copy=False).reshape(-1)


def fixed_width_bits(values: np.ndarray, width: int) -> np.ndarray:
    """The 0/1 bits of each value in ``width`` bits, MSB first, concatenated."""
    if not 0 <= width <= MAX_FIELD_BITS:
        raise ValueError(f"field width must be 0..{MAX_FIELD_BITS}, got {width}")
    v = _as_u64(values)
    if width == 0 or v.size == 0:
        return np.zeros(0, dtype=np.uint8)
    if width < MAX_FIELD_BITS and v.size and int(v.max()) >> width:
        raise ValueError(f"a value does not fit in {width} bits")
    if width <= 32 and v.size and int(v.max()) < (1 << 32):
        # Fast path: big-endian bytes of uint32 then unpackbits, keep the low `width` bits.
        as_bytes = v.astype(">u4").view(np.uint8).reshape(-1, 4)
        return np.unpackbits(as_bytes, axis=1)[:, 32 - width :].reshape(-1)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    return ((v[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1)


def unary_bits(counts: np.ndarray) -> np.ndarray:
    """Unary codes: ``q`` one-bits then a terminating zero, for each ``q``."""
    q = _as_u64(counts).astype(np.int64)
    if q.size == 0:
        return np.zeros(0, dtype=np.uint8)
    ends = np.cumsum(q + 1) - 1
    bits = np.ones(int(ends[-1]) + 1, dtype=np.uint8)
    bits[ends] = 0
    return bits


class BitWriter:
    """Appends bit fields; :meth:`getvalue` returns the packed bytes."""

    def __init__(self) -> None:
        self._segments: list[np.ndarray] = []
        self.nbits = 0

    def _push(self, bits: np.ndarray) -> None:
        if bits.size:
            self._segments.append(bits)
            self.nbits += int(bits.size)

    def write(self, value: int, width: int) -> None:
        """One unsigned field of ``width`` bits."""
        self._push(fixed_width_bits(np.array([value], dtype=np.uint64), width))

    def write_array(self, values: np.ndarray, width: int) -> None:
        """Each value in the same ``width`` bits."""
        self._push(fixed_width_bits(values, width))

    def write_unary(self, counts: np.ndarray) -> None:
        self._push(unary_bits(counts))

    def write_bits(self, bits: np.ndarray) -> None:
        """Raw 0/1 bits (e.g. sign bits)."""
        self._push(np.asarray(bits, dtype=np.uint8).reshape(-1) & 1)

    def getvalue(self) -> bytes:
        if not self._segments:
            return b""
        return np.packbits(np.concatenate(self._segments)).tobytes()


class BitReader:
    """Reads fields back in the order they were written; bounds-checked."""

    def __init__(self, data: bytes, nbits: int | None = None) -> None:
        self._bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        self.end = self._bits.size if nbits is None else nbits
        if self.end > self._bits.size:
            raise TruncatedPayloadError(f"bit stream declares {self.end} bits, only {self._bits.size} present")
        self.pos = 0

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _take(self, n: int, field: str) -> np.ndarray:
        if n < 0 or n > self.remaining:
            raise TruncatedPayloadError(
                f"bit stream ends in {field}: needs {n} bits at bit {self.pos}, {self.remaining} left"
            )
        out = self._bits[self.pos : self.pos + n]
        self.pos += n
        return out

    def read(self, width: int, field: str = "field") -> int:
        return int(self.read_array(1, width, field)[0])

    def read_array(self, count: int, width: int, field: str = "fields") -> np.ndarray:
        """``count`` fields of ``width`` bits as uint64."""
        if not 0 <= width <= MAX_FIELD_BITS:
            raise DecodeError(f"{field}: field width {width} is out of range")
        if width == 0:
            return np.zeros(count, dtype=np.uint64)
        if count < 0 or count * width > self.remaining:
            raise TruncatedPayloadError(
                f"bit stream ends in {field}: {count} × {width} bits at bit {self.pos}, {self.remaining} left"
            )
        bits = self._take(count * width, field).reshape(count, width)
        if width <= 32:
            padded = np.zeros((count, 32), dtype=np.uint8)
            padded[:, 32 - width :] = bits
            return np.packbits(padded, axis=1).view(">u4").reshape(-1).astype(np.uint64)
        out = np.zeros(count, dtype=np.uint64)
        for j in range(width):
            out = (out << np.uint64(1)) | bits[:, j].astype(np.uint64)
        return out

    def read_unary(self, count: int, field: str = "unary codes") -> np.ndarray:
        """``count`` unary codes (ones terminated by a zero) as int64."""
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        # Look ahead in growing windows: the stream after these codes can be long.
        span = max(4096, 4 * count)
        while True:
            stop = min(self.end, self.pos + span)
            zeros = np.flatnonzero(self._bits[self.pos : stop] == 0)
            if zeros.size >= count or stop == self.end:
                break
            span *= 4
        if zeros.size < count:
            raise TruncatedPayloadError(
                f"{field}: {count} codes declared but only {zeros.size} terminate before the end of the stream"
            )
        ends = zeros[:count]
        q = np.diff(ends, prepend=-1) - 1
        self.pos += int(ends[-1]) + 1
        return q.astype(np.int64)

    def read_bits(self, n: int, field: str = "bits") -> np.ndarray:
        return self._take(n, field).copy()

    def expect_end(self, field: str = "stream") -> None:
        """Only the zero padding of the last byte may remain."""
        rest = self._bits[self.pos : self.end]
        if rest.size >= 8 or rest.any():
            raise DecodeError(f"{field}: {rest.size} unexpected bits after the last field at bit {self.pos}")
