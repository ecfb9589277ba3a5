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

**Parameter choice** (Gallager & Van Voorhis 1975): for a geometric source
P(x) = (1 − θ) θ^x the optimal M satisfies θ^M + θ^(M+1) ≤ 1 < θ^(M−1) + θ^M,
i.e. M = ⌈−log(1 + θ) / log θ⌉.
"""

from __future__ import annotations

import math

import numpy as np

from fedcomp.coding.bits import BitReader, BitWriter
from fedcomp.coding.errors import DecodeError, LimitExceededError

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


def golomb_decode(reader: BitReader, count: int, m: int) -> np.ndarray:
    """Read ``count`` Golomb codes with parameter ``m`` (int64)."""
    if not 1 <= m <= MAX_GOLOMB_M:
        raise DecodeError(f"Golomb parameter {m} is out of range 1..{MAX_GOLOMB_M}")
    if count < 0:
        raise DecodeError(f"negative symbol count {count}")
    q = reader.read_unary(count, "Golomb quotients")
    if q.size and int(q.max()) > MAX_UNARY:
        raise LimitExceededError(f"a Golomb quotient of {int(q.max())} exceeds {MAX_UNARY}")
    b, u = _split(m)
    if b == 0:
        return q
    head = reader.read_array(count, b - 1, "Golomb remainders").astype(np.int64)
    long = head >= u
    ext = reader.read_bits(int(long.sum()), "Golomb remainder extensions").astype(np.int64)
    r = head.copy()
    r[long] = 2 * head[long] + ext - u
    return q * m + r


def rice_encode(values: np.ndarray, k: int, writer: BitWriter | None = None) -> BitWriter:
    """Rice code with parameter 2^k: the Golomb code with M = 2^k."""
    return golomb_encode(values, 1 << k, writer)


def rice_decode(reader: BitReader, count: int, k: int) -> np.ndarray:
    return golomb_decode(reader, count, 1 << k)


# ----------------------------------------------------------------------------- Elias


def elias_gamma_encode(values: np.ndarray | list[int], writer: BitWriter | None = None) -> BitWriter:
    """Elias-γ of x ≥ 1: ⌊log₂ x⌋ zeros, then x in binary (⌊log₂ x⌋ + 1 bits)."""
    w = writer if writer is not None else BitWriter()
    for x in np.asarray(values, dtype=np.uint64).reshape(-1).tolist():
        if x < 1:
            raise ValueError("Elias-gamma codes take integers >= 1")
        n = x.bit_length() - 1
        w.write(0, n)
        w.write(x, n + 1)
    return w


def elias_gamma_decode(reader: BitReader, count: int = 1) -> np.ndarray:
    out = np.zeros(count, dtype=np.uint64)
    for i in range(count):
        n = 0
        while reader.read(1, "Elias-gamma prefix") == 0:
            n += 1
            if n >= 64:
                raise DecodeError("Elias-gamma prefix longer than 63 zeros: not a 64-bit count")
        out[i] = (1 << n) | reader.read(n, "Elias-gamma value") if n else 1
    return out


def elias_delta_encode(values: np.ndarray | list[int], writer: BitWriter | None = None) -> BitWriter:
    """Elias-δ of x ≥ 1: γ(⌊log₂ x⌋ + 1), then x without its leading one."""
    w = writer if writer is not None else BitWriter()
    for x in np.asarray(values, dtype=np.uint64).reshape(-1).tolist():
        if x < 1:
            raise ValueError("Elias-delta codes take integers >= 1")
        n = x.bit_length() - 1
        elias_gamma_encode([n + 1], w)
        w.write(x & ((1 << n) - 1), n)
    return w


def elias_delta_decode(reader: BitReader, count: int = 1) -> np.ndarray:
    out = np.zeros(count, dtype=np.uint64)
    for i in range(count):
        n = int(elias_gamma_decode(reader, 1)[0]) - 1
        if n > 63:
            raise DecodeError(f"Elias-delta length {n + 1} exceeds 64 bits")
        out[i] = (1 << n) | reader.read(n, "Elias-delta value") if n else 1
    return out


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
    gaps = golomb_decode(reader, k, index_golomb_parameter(k, n))
    idx = np.cumsum(gaps + 1) - 1
    if idx[-1] >= n:
        raise DecodeError(f"index {int(idx[-1])} out of range for n = {n}")
    return idx
