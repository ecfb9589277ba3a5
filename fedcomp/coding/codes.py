"""Integer codes: Golomb (any M ≥ 1), Rice, Elias-γ and Elias-δ.

**Golomb code** (Golomb 1966) of x ≥ 0 with parameter M: the quotient
q = ⌊x/M⌋ in unary (q ones, then a zero) and the remainder r = x mod M in
truncated binary: with b = ⌈log₂ M⌉ and u = 2^b − M, r < u takes b − 1 bits
and r ≥ u is sent as r + u in b bits. Rice codes are the case M = 2^k.

**Vectorized layout.** Coding an array one symbol at a time is too slow in
Python, and a single interleaved stream cannot be parsed without a loop.
:func:`golomb_encode` therefore writes the same codewords as three
consecutive streams: all unary quotients, then the first b − 1 bits of every
remainder field, then the final bit of the remainders that take b bits.
Which symbols own a final bit follows from the second stream (value ≥ u),
so all three decode with whole-array operations. The bit count is exactly
that of the interleaved code; for a single symbol the bits *are* the
textbook codeword.

**Elias codes** are prefix codes whose every codeword says where the next
one starts, so no whole-array form exists for their decoding (pointer
jumping would cost O(bits · log count)). They are parsed by one compiled
scan (:func:`_elias_scan`): O(bits read), each prefix capped at 63 zeros,
each read checked against the end of the stream, and the symbol count
checked against the bits left before anything is allocated. Their encoders
are whole-array (:func:`~fedcomp.coding.bits.variable_width_bits`).

**Bounded decoding.** Every decoder here refuses a count larger than the
bits left (each symbol takes at least one), and :func:`golomb_decode`
refuses values above the caller's ``max_value`` before it multiplies, so
nothing wraps around 2^63.

**Parameter choice** (Gallager & Van Voorhis 1975): for a geometric source
P(x) = (1 − θ) θ^x the optimal M satisfies θ^M + θ^(M+1) ≤ 1 < θ^(M−1) + θ^M,
i.e. M = ⌈−log(1 + θ) / log θ⌉.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from fedcomp.coding.bits import CHUNK_FIELDS, BitReader, BitWriter, bit_lengths
from fedcomp.coding.errors import DecodeError, LimitExceededError, TruncatedPayloadError

MAX_GOLOMB_M = 1 << 40
MAX_UNARY = 1 << 24
"""A quotient beyond this is refused at encode and decode: M was badly chosen."""


# ----------------------------------------------------------------------------- parameters


def golomb_parameter(theta: float) -> int:
    """Optimal Golomb M for a geometric source with P(x) ∝ θ^x (Gallager–Van Voorhis)."""
    if not 0.0 <= theta < 1.0 or math.isnan(theta):
        raise ValueError(f"theta must be in [0, 1), got {theta}")
    if theta <= 0.5:  # θ^1 + θ^2 ≤ 1 already holds for M = 1 when θ ≤ (√5 − 1)/2
        m = 1
    else:
        m = max(1, math.ceil(-math.log1p(theta) / math.log(theta)))
    # Guard the closed form against rounding at the boundaries.
    while m > 1 and theta ** (m - 1) + theta**m <= 1:
        m -= 1
    while theta**m + theta ** (m + 1) > 1:
        m += 1
    return min(m, MAX_GOLOMB_M)


def golomb_parameter_from_mean(mean: float) -> int:
    """M for the geometric source whose mean is ``mean`` (θ = mean / (1 + mean))."""
    if not mean >= 0 or math.isinf(mean):
        raise ValueError(f"mean must be finite and >= 0, got {mean}")
    return golomb_parameter(mean / (1.0 + mean))


def golomb_parameter_for(values: np.ndarray) -> int:
    """Adaptive choice: M fitted to the data about to be coded (by its mean)."""
    v = np.asarray(values)
    return golomb_parameter_from_mean(float(v.mean()) if v.size else 0.0)


def geometric_entropy_bits(theta: float) -> float:
    """Entropy in bits per symbol of P(x) = (1 − θ) θ^x."""
    if theta <= 0:
        return 0.0
    return (-(1 - theta) * math.log2(1 - theta) - theta * math.log2(theta)) / (1 - theta)


def _split(m: int) -> tuple[int, int]:
    b = (m - 1).bit_length()  # ⌈log₂ M⌉
    return b, (1 << b) - m


# ----------------------------------------------------------------------------- Golomb


def golomb_encode(values: np.ndarray, m: int, writer: BitWriter | None = None) -> BitWriter:
    """Append the Golomb codes of ``values`` (≥ 0) with parameter ``m``."""
    if not 1 <= m <= MAX_GOLOMB_M:
        raise ValueError(f"Golomb parameter must be 1..{MAX_GOLOMB_M}, got {m}")
    w = writer if writer is not None else BitWriter()
    x = np.asarray(values).reshape(-1)
    if x.size == 0:
        return w
    if x.dtype.kind not in "iu" or int(x.min()) < 0:
        raise ValueError("Golomb codes take non-negative integers")
    x = x.astype(np.uint64)
    mm = np.uint64(m)
    q = x // mm
    if int(q.max()) > MAX_UNARY:
        raise ValueError(f"a quotient of {int(q.max())} exceeds {MAX_UNARY}: the Golomb parameter {m} is far too small")
    w.write_unary(q)
    b, u = _split(m)
    if b == 0:  # M = 1: the code is pure unary
        return w
    r = x - q * mm
    long = r >= np.uint64(u)
    field = np.where(long, r + np.uint64(u), r)  # short: r in b−1 bits; long: r+u in b bits
    w.write_array(np.where(long, field >> np.uint64(1), field), b - 1)
    w.write_bits((field[long] & np.uint64(1)).astype(np.uint8))
    return w


def golomb_decode(
    reader: BitReader, count: int, m: int, max_value: int | None = None, dtype: type = np.int64
) -> np.ndarray:
    """Read ``count`` Golomb codes with parameter ``m``, each at most ``max_value``, as int64 (or ``dtype``).

    The quotients are checked against ``max_value // m`` before the values
    are formed, so a hostile quotient can neither wrap int64 nor pass as a
    small value; remainders are read in chunks into the quotients' array,
    so the result (8 bytes a symbol, 4 with ``dtype=np.int32`` when
    ``max_value`` fits it) is all the memory the decode keeps.
    """
    if not 1 <= m <= MAX_GOLOMB_M:
        raise DecodeError(f"Golomb parameter {m} is out of range 1..{MAX_GOLOMB_M}")
    if count < 0:
        raise DecodeError(f"negative symbol count {count}")
    if count > reader.remaining:
        raise TruncatedPayloadError(f"{count} Golomb codes declared in {reader.remaining} bits")
    limit = min(1 << 62, np.iinfo(dtype).max, (1 << 62) if max_value is None else int(max_value))
    if limit < 0:
        raise DecodeError(f"Golomb values bounded by {max_value}: no value can be read")
    out = reader.read_unary(count, "Golomb quotients", dtype)
    top = int(out.max()) if out.size else 0
    if top > MAX_UNARY:
        raise LimitExceededError(f"a Golomb quotient of {top} exceeds {MAX_UNARY}")
    if top > limit // m:
        raise LimitExceededError(f"Golomb value out of range: a quotient of {top} with M = {m} exceeds {limit}")
    b, u = _split(m)
    if b == 0:
        return out
    heads = reader.pos
    reader.skip(count * (b - 1), "Golomb remainders")
    for start in range(0, count, CHUNK_FIELDS):
        stop = min(count, start + CHUNK_FIELDS)
        r = reader.peek_array(heads + start * (b - 1), stop - start, b - 1, "Golomb remainders").astype(np.int64)
        long = r >= u
        ext = reader.read_bits(int(np.count_nonzero(long)), "Golomb remainder extensions").astype(np.int64)
        r[long] = 2 * r[long] + ext - u
        values = out[start:stop].astype(np.int64) * m + r
        if int(values.max()) > limit:
            raise LimitExceededError(f"Golomb value out of range: {int(values.max())} exceeds {limit}")
        out[start:stop] = values
    return out


def rice_encode(values: np.ndarray, k: int, writer: BitWriter | None = None) -> BitWriter:
    """Rice code with parameter 2^k: the Golomb code with M = 2^k."""
    return golomb_encode(values, 1 << k, writer)


def rice_decode(reader: BitReader, count: int, k: int) -> np.ndarray:
    return golomb_decode(reader, count, 1 << k)


# ----------------------------------------------------------------------------- Elias


def _positive_u64(values: np.ndarray | list[int], code: str) -> np.ndarray:
    """The values as uint64, each checked to be an integer ≥ 1 (Python ints up to 2^64 − 1 included)."""
    if not isinstance(values, np.ndarray):
        values = list(np.asarray(values, dtype=object).reshape(-1))
        if any(not isinstance(x, (int, np.integer)) or not 1 <= int(x) < 1 << 64 for x in values):
            raise ValueError(f"{code} codes take integers in 1..2^64 - 1")
        return np.array([int(x) for x in values], dtype=np.uint64)
    v = values.reshape(-1)
    if v.size and (v.dtype.kind not in "iu" or int(v.min()) < 1):
        raise ValueError(f"{code} codes take integers >= 1, got {v.dtype} down to {v.min()}")
    return v.astype(np.uint64)


def elias_gamma_encode(values: np.ndarray | list[int], writer: BitWriter | None = None) -> BitWriter:
    """Elias-γ of x ≥ 1: ⌊log₂ x⌋ zeros, then x in binary (⌊log₂ x⌋ + 1 bits).

    The zeros are x's own leading zeros when x is written in 2⌊log₂ x⌋ + 1
    bits, so the codeword is one variable-width field.
    """
    w = writer if writer is not None else BitWriter()
    x = _positive_u64(values, "Elias-gamma")
    if x.size:
        w.write_fields(x, 2 * bit_lengths(x) - 1)
    return w


def elias_delta_encode(values: np.ndarray | list[int], writer: BitWriter | None = None) -> BitWriter:
    """Elias-δ of x ≥ 1: γ(⌊log₂ x⌋ + 1), then x without its leading one."""
    w = writer if writer is not None else BitWriter()
    x = _positive_u64(values, "Elias-delta")
    if x.size:
        length = bit_lengths(x)  # ⌊log₂ x⌋ + 1, at most 64
        low = x & ((np.uint64(1) << (length - 1).astype(np.uint64)) - np.uint64(1))
        fields = np.stack([length.astype(np.uint64), low], axis=1).reshape(-1)
        widths = np.stack([2 * bit_lengths(length) - 1, length - 1], axis=1).reshape(-1)
        w.write_fields(fields, widths)
    return w


_SCAN_OK, _SCAN_TRUNCATED, _SCAN_PREFIX, _SCAN_LENGTH = 0, 1, 2, 3


@njit(cache=True)
def _elias_scan(bits, pos, end, count, delta, out):  # pragma: no cover - compiled
    """Parse ``count`` Elias-γ (or δ) codes from the 0/1 array ``bits[pos:end]`` into ``out``.

    Returns (new position, codes read, status): a prefix of more than 63
    zeros, a δ length above 64 or the end of the stream stops the scan
    with its status; nothing is read past ``end``.
    """
    one = np.uint64(1)
    for i in range(count):
        zeros = 0
        while pos < end and bits[pos] == 0:
            zeros += 1
            pos += 1
            if zeros > 63:
                return pos, i, _SCAN_PREFIX
        if pos + zeros + 1 > end:
            return pos, i, _SCAN_TRUNCATED
        v = np.uint64(0)
        for j in range(zeros + 1):
            v = (v << one) | np.uint64(bits[pos + j])
        pos += zeros + 1
        if delta:
            if v > np.uint64(64):
                return pos, i, _SCAN_LENGTH
            rest = np.int64(v) - 1
            if pos + rest > end:
                return pos, i, _SCAN_TRUNCATED
            x = one
            for j in range(rest):
                x = (x << one) | np.uint64(bits[pos + j])
            pos += rest
            v = x
        out[i] = v
    return pos, count, _SCAN_OK


def _elias_decode(reader: BitReader, count: int, delta: bool) -> np.ndarray:
    code = "Elias-delta" if delta else "Elias-gamma"
    if count < 0:
        raise DecodeError(f"{code}: negative code count {count}")
    if count > reader.remaining:  # every codeword takes at least one bit
        raise TruncatedPayloadError(f"{code}: {count} codes declared in {reader.remaining} bits")
    out = np.zeros(count, dtype=np.uint64)
    if count == 0:
        return out
    start = reader.pos
    pos, done, status = _elias_scan(reader.bits, start, reader.end, count, delta, out)
    if status == _SCAN_PREFIX:
        raise DecodeError(f"{code} prefix longer than 63 zeros at bit {pos}: not a 64-bit count")
    if status == _SCAN_LENGTH:
        raise DecodeError(f"Elias-delta length above 64 bits in code #{done} at bit {pos}")
    if status == _SCAN_TRUNCATED:
        raise TruncatedPayloadError(f"bit stream ends in {code} code #{done} of {count} at bit {pos}")
    reader.skip(pos - start, code)
    return out


def elias_gamma_decode(reader: BitReader, count: int = 1) -> np.ndarray:
    """Read ``count`` Elias-γ codes (uint64, each ≥ 1 and < 2^64)."""
    return _elias_decode(reader, count, delta=False)


def elias_delta_decode(reader: BitReader, count: int = 1) -> np.ndarray:
    """Read ``count`` Elias-δ codes (uint64, each ≥ 1 and < 2^64)."""
    return _elias_decode(reader, count, delta=True)


# ----------------------------------------------------------------------------- sparse index sets


def encode_indices(indices: np.ndarray, n: int, writer: BitWriter | None = None) -> BitWriter:
    """A sorted set of k indices out of n: k by Elias-δ, then Golomb-coded gaps.

    Gaps g_i = idx_i − idx_{i−1} − 1 of a uniformly random support are close
    to geometric with θ = 1 − k/n; M is chosen from k/n (Gallager–Van Voorhis),
    so the decoder derives it from k and n without side information.
    """
    w = writer if writer is not None else BitWriter()
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    k = idx.size
    if k and (idx[0] < 0 or idx[-1] >= n or np.any(np.diff(idx) <= 0)):
        raise ValueError("indices must be strictly increasing and within [0, n)")
    elias_delta_encode([k + 1], w)
    if 0 < k < n:  # k == n is the whole range: no gaps to send
        gaps = np.diff(idx, prepend=-1) - 1
        golomb_encode(gaps, index_golomb_parameter(k, n), w)
    return w


def index_golomb_parameter(k: int, n: int) -> int:
    """Golomb M for the gaps of k indices out of n (θ = 1 − k/n)."""
    return golomb_parameter(1.0 - k / n) if 0 < k < n else 1


def decode_indices(reader: BitReader, n: int) -> np.ndarray:
    """Inverse of :func:`encode_indices`; checks the count and the range."""
    k = int(elias_delta_decode(reader, 1)[0]) - 1
    if k > n:
        raise LimitExceededError(f"index set declares {k} indices out of n = {n}")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    gaps = golomb_decode(reader, k, index_golomb_parameter(k, n), max_value=n - k)
    idx = np.cumsum(gaps + 1, dtype=np.int64) - 1
    if idx[-1] >= n:
        raise DecodeError(f"index {int(idx[-1])} out of range for n = {n}")
    return idx
