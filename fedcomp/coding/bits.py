"""Bit streams: a writer and a reader of variable-length bit fields, vectorized.

Both work on arrays of fields at once, never one symbol per Python step:
the writer keeps a list of 0/1 ``uint8`` bit arrays (one per written
segment) and packs them with ``numpy.packbits`` at the end; the reader
unpacks once and slices. Bits are stored most-significant first, and a
stream is padded with zero bits to a whole byte.

Every read checks the bits it needs against the bits that are there and
raises :class:`~fedcomp.coding.errors.TruncatedPayloadError` naming the
field, so a hostile length can never read past the end.

**Memory.** A reader holds its stream unpacked (one byte per bit, 8× the
payload). Reads work on bounded chunks (:data:`CHUNK_FIELDS` fields,
:data:`UNARY_WINDOW` bits of look-ahead), so their temporaries do not grow
with the count a payload declares: what a read returns (8 bytes a field)
is all it keeps.
"""

from __future__ import annotations

import numpy as np

from fedcomp.coding.errors import DecodeError, TruncatedPayloadError

MAX_FIELD_BITS = 64
CHUNK_FIELDS = 1 << 18
"""Fields packed per step of :meth:`BitReader.read_array` (bounds its temporaries)."""
UNARY_WINDOW = 1 << 20
"""Bits scanned per step of :meth:`BitReader.read_unary` (bounds its temporaries)."""


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


def bit_lengths(values: np.ndarray) -> np.ndarray:
    """``int.bit_length`` of each value (0 for 0), exactly, by a binary search over shifts (6 passes)."""
    v = _as_u64(values)
    out = np.zeros(v.size, dtype=np.int64)
    for shift in (32, 16, 8, 4, 2, 1):  # out + shift never exceeds 63
        high = (v >> (out + shift).astype(np.uint64)) != 0
        out += np.where(high, shift, 0)
    return out + (v != 0)


def variable_width_bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Value i in ``widths[i]`` bits, MSB first, all concatenated: one pass per bit position, not per value.

    A width may exceed 64 (up to 128): the bits above the value's 64 are
    leading zeros, which is how an Elias-γ codeword of a 64-bit value looks.
    """
    v = _as_u64(values)
    w = np.asarray(widths, dtype=np.int64).reshape(-1)
    if v.size != w.size:
        raise ValueError(f"{v.size} values for {w.size} widths")
    if v.size == 0:
        return np.zeros(0, dtype=np.uint8)
    if int(w.min()) < 0 or int(w.max()) > 2 * MAX_FIELD_BITS:
        raise ValueError(f"field widths must be 0..{2 * MAX_FIELD_BITS}")
    if np.any(bit_lengths(v) > w):
        raise ValueError("a value does not fit in its field width")
    parts = []
    step = CHUNK_FIELDS // 4  # a chunk of 2^16 fields unpacks to at most 8 MiB
    for start in range(0, v.size, step):
        chunk, width = v[start : start + step], w[start : start + step]
        span = int(width.max())
        low = np.unpackbits(chunk.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
        if span <= MAX_FIELD_BITS:
            rows = low[:, MAX_FIELD_BITS - span :]
        else:  # leading zeros beyond the 64 bits of the value
            rows = np.zeros((chunk.size, span), dtype=np.uint8)
            rows[:, span - MAX_FIELD_BITS :] = low
        parts.append(rows[np.arange(span) >= span - width[:, None]])  # row-major: field after field
    return np.concatenate(parts)


def pack_fields(bits: np.ndarray, count: int, width: int) -> np.ndarray:
    """``count`` fields of ``width`` (1..64) bits from a 0/1 array, as uint64, in bounded chunks.

    Widths that are whole bytes pack straight into big-endian words; others
    are packed a row at a time (⌈width/8⌉ bytes per field) and shifted into
    place. Temporaries stay within :data:`CHUNK_FIELDS` fields.
    """
    if width % 8 == 0 and width in (8, 16, 32, 64):
        return np.packbits(bits[: count * width]).view(f">u{width // 8}").astype(np.uint64)
    out = np.empty(count, dtype=np.uint64)
    nbytes = (width + 7) // 8
    for start in range(0, count, CHUNK_FIELDS):
        stop = min(count, start + CHUNK_FIELDS)
        rows = np.packbits(bits[start * width : stop * width].reshape(stop - start, width), axis=1)
        acc = np.zeros(stop - start, dtype=np.uint64)
        for j in range(nbytes):
            acc = (acc << np.uint64(8)) | rows[:, j].astype(np.uint64)
        out[start:stop] = acc >> np.uint64(8 * nbytes - width)
    return out


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

    def write_fields(self, values: np.ndarray, widths: np.ndarray) -> None:
        """Each value in its own width (variable-length codes such as Elias-γ)."""
        self._push(variable_width_bits(values, widths))

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

    @property
    def bits(self) -> np.ndarray:
        """The whole stream as 0/1 bytes (read-only use: compiled scanners read from :attr:`pos`)."""
        return self._bits

    def _take(self, n: int, field: str) -> np.ndarray:
        if n < 0 or n > self.remaining:
            raise TruncatedPayloadError(
                f"bit stream ends in {field}: needs {n} bits at bit {self.pos}, {self.remaining} left"
            )
        out = self._bits[self.pos : self.pos + n]
        self.pos += n
        return out

    def skip(self, n: int, field: str = "bits") -> None:
        """Advance ``n`` bits (after a scanner has read them in place)."""
        self._take(n, field)

    def read(self, width: int, field: str = "field") -> int:
        return int(self.read_array(1, width, field)[0])

    def read_array(self, count: int, width: int, field: str = "fields") -> np.ndarray:
        """``count`` fields of ``width`` bits as uint64 (8 bytes a field, nothing per field besides)."""
        if not 0 <= width <= MAX_FIELD_BITS:
            raise DecodeError(f"{field}: field width {width} is out of range")
        if count < 0:
            raise DecodeError(f"{field}: negative field count {count}")
        if count * width > self.remaining:
            raise TruncatedPayloadError(
                f"bit stream ends in {field}: {count} × {width} bits at bit {self.pos}, {self.remaining} left"
            )
        if width == 0:
            return np.zeros(count, dtype=np.uint64)
        return pack_fields(self._take(count * width, field), count, width)

    def peek_array(self, pos: int, count: int, width: int, field: str = "fields") -> np.ndarray:
        """``count`` fields of ``width`` bits at bit ``pos`` (inside the stream), without moving the cursor.

        For layouts that put several streams one after another (the Golomb
        remainders after the quotients): a reader can skip a stream and read
        it back in chunks.
        """
        if not 0 <= width <= MAX_FIELD_BITS or count < 0 or pos < 0 or pos + count * width > self.end:
            raise TruncatedPayloadError(f"{field}: {count} × {width} bits at bit {pos} lie outside the stream")
        if width == 0:
            return np.zeros(count, dtype=np.uint64)
        return pack_fields(self._bits[pos : pos + count * width], count, width)

    def read_bytes(self, nbytes: int, field: str = "bytes") -> bytes:
        """``nbytes`` whole bytes from the current (any) bit position."""
        if nbytes < 0:
            raise DecodeError(f"{field}: negative byte count {nbytes}")
        return np.packbits(self._take(8 * nbytes, field)).tobytes()

    def read_unary(self, count: int, field: str = "unary codes", dtype: type = np.int64) -> np.ndarray:
        """``count`` unary codes (ones terminated by a zero) as int64 (or ``dtype``: the caller bounds them).

        Scans windows of at most :data:`UNARY_WINDOW` bits, so the look-ahead
        past the last code (the stream after these codes can be long) and the
        temporaries stay bounded whatever ``count`` says.
        """
        if count < 0:
            raise DecodeError(f"{field}: negative code count {count}")
        if count > self.remaining:  # every code takes at least its terminating bit
            raise TruncatedPayloadError(f"{field}: {count} codes declared in {self.remaining} bits")
        out = np.empty(count, dtype=dtype)
        got, pos, last = 0, self.pos, self.pos - 1  # last: the previous terminating zero
        window = max(4096, min(4 * count, UNARY_WINDOW))
        while got < count:
            if pos >= self.end:
                raise TruncatedPayloadError(
                    f"{field}: {count} codes declared but only {got} terminate before the end of the stream"
                )
            stop = min(self.end, pos + window)
            ends = np.flatnonzero(self._bits[pos:stop] == 0)[: count - got] + pos
            if ends.size:
                q = np.diff(ends, prepend=last) - 1
                if dtype is not np.int64 and int(q.max()) > np.iinfo(dtype).max:
                    raise DecodeError(f"{field}: a code of {int(q.max())} ones does not fit {np.dtype(dtype).name}")
                out[got : got + ends.size] = q
                got += ends.size
                last = int(ends[-1])
            pos = last + 1 if got == count else stop
            window = UNARY_WINDOW
        self.pos = pos
        return out

    def read_bits(self, n: int, field: str = "bits") -> np.ndarray:
        return self._take(n, field).copy()

    def expect_end(self, field: str = "stream") -> None:
        """Only the zero padding of the last byte may remain."""
        rest = self._bits[self.pos : self.end]
        if rest.size >= 8 or rest.any():
            raise DecodeError(f"{field}: {rest.size} unexpected bits after the last field at bit {self.pos}")
