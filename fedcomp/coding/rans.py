"""A static range-ANS coder (Duda 2013; the 32-bit state, 16-bit word variant of Giesen's ryg_rans).

For symbols s_1 … s_n over an alphabet of at most :data:`MAX_ALPHABET`
values with quantized frequencies f_s summing to M = 2^:data:`PROB_BITS`
(cumulative c_s), the encoder runs over the symbols in reverse, keeping a
state x ∈ [L, 2^32), L = 2^16:

    while x ≥ 2^(32 − PROB_BITS) · f_s:  emit x mod 2^16, x ← ⌊x / 2^16⌋       (renormalize)
    x ← ⌊x / f_s⌋ · M + (x mod f_s) + c_s                                     (Duda's C(s, x))

and the decoder inverts it in the forward order: s = the symbol whose
interval [c_s, c_s + f_s) holds x mod M, x ← f_s·⌊x / M⌋ + (x mod M) − c_s,
then reads 16-bit words while x < L. Each symbol costs log₂(M / f_s) bits
plus the renormalization's rounding, so a two-pass coder (the counts of the
data itself, quantized to M and sent first) spends within a fraction of a
percent of the empirical entropy on long inputs; the fixed costs are the
table and the final 32-bit state.

**Table** (:func:`write_table`): the alphabet size A (Elias-δ), then the A
frequencies as Elias-γ(f + 1), zero for absent symbols. **Stream**: its
length in 16-bit words (Elias-δ of count + 1), then the words, big-endian,
in decoding order.

**Bounded decoding.** The decoder refuses a table whose frequencies do not
sum to M or whose alphabet exceeds the caller's, reads exactly as many
symbols as the caller expects (the caller knows n from its specs), checks
every word read against the stream's end, and requires the final state to
be L, where the encoder started: a stream that is cut, grown or altered is
a :class:`~fedcomp.coding.errors.DecodeError`, never an out-of-bounds read.
Both loops are compiled (numba), O(n + words).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fedcomp.coding.bits import BitReader, BitWriter
from fedcomp.coding.codes import elias_delta_decode, elias_delta_encode, elias_gamma_decode, elias_gamma_encode
from fedcomp.coding.errors import DecodeError, LimitExceededError, TruncatedPayloadError

PROB_BITS = 15
M = 1 << PROB_BITS
L = 1 << 16
MAX_ALPHABET = 1 << 12


def quantize_counts(counts: np.ndarray) -> np.ndarray:
    """Frequencies summing to M, each ≥ 1 where the count is > 0, close to counts·M/Σcounts (int64)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("no symbols to model")
    present = counts > 0
    if int(present.sum()) > M:
        raise ValueError(f"{int(present.sum())} distinct symbols exceed the {M} slots")
    freq = np.where(present, np.maximum(1, np.floor(counts * (M / total) + 0.5)), 0).astype(np.int64)
    excess = int(freq.sum()) - M
    order = np.argsort(-counts, kind="stable")  # take from (or give to) the most frequent symbols first
    i = 0
    while excess != 0:
        s = order[i % int(present.sum())]
        if excess > 0 and freq[s] > 1:
            step = min(excess, int(freq[s]) - 1, max(1, int(freq[s]) // 4))
            freq[s] -= step
            excess -= step
        elif excess < 0:
            freq[s] += -excess
            excess = 0
        i += 1
    return freq


def write_table(freq: np.ndarray, writer: BitWriter) -> None:
    elias_delta_encode([freq.size], writer)
    elias_gamma_encode(np.asarray(freq, dtype=np.int64) + 1, writer)


def read_table(reader: BitReader, max_alphabet: int) -> np.ndarray:
    """The frequencies (int64), checked: at most ``max_alphabet`` symbols, summing to M."""
    size = int(elias_delta_decode(reader, 1)[0])
    if size > min(max_alphabet, MAX_ALPHABET):
        raise LimitExceededError(f"rANS table of {size} symbols, at most {min(max_alphabet, MAX_ALPHABET)}")
    raw = elias_gamma_decode(reader, size)
    if size and int(raw.max()) > M + 1:
        raise DecodeError(f"rANS frequency {int(raw.max()) - 1} exceeds the total {M}")
    freq = raw.astype(np.int64) - 1
    if int(freq.sum()) != M:
        raise DecodeError(f"rANS frequencies sum to {int(freq.sum())}, not {M}")
    return freq


@njit(cache=True)
def _encode(symbols, freq, cum):  # pragma: no cover - compiled
    out = np.empty(symbols.size + 2, dtype=np.uint16)  # at most one word a symbol (f ≥ 1), and the flush
    grow = 0
    x = np.uint64(L)
    for i in range(symbols.size - 1, -1, -1):
        s = symbols[i]
        f = np.uint64(freq[s])
        limit = np.uint64(1 << (32 - PROB_BITS)) * f
        while x >= limit:
            if grow >= out.size:  # pragma: no cover - bounded above
                return out[:0], -1
            out[grow] = np.uint16(x & np.uint64(0xFFFF))
            grow += 1
            x >>= np.uint64(16)
        x = (x // f) * np.uint64(M) + (x % f) + np.uint64(cum[s])
    out[grow] = np.uint16(x & np.uint64(0xFFFF))
    out[grow + 1] = np.uint16(x >> np.uint64(16))
    grow += 2
    return out[:grow][::-1].copy(), 0


@njit(cache=True)
def _decode(words, count, freq, cum, lookup, out):  # pragma: no cover - compiled
    """Returns (words used, status): 0 ok, 1 stream ended, 2 the final state is not L."""
    if words.size < 2:
        return 0, 1
    x = (np.uint64(words[0]) << np.uint64(16)) | np.uint64(words[1])
    pos = 2
    mask = np.uint64(M - 1)
    for i in range(count):
        slot = x & mask
        s = lookup[slot]
        out[i] = s
        x = np.uint64(freq[s]) * (x >> np.uint64(PROB_BITS)) + slot - np.uint64(cum[s])
        while x < np.uint64(L):
            if pos >= words.size:
                return pos, 1
            x = (x << np.uint64(16)) | np.uint64(words[pos])
            pos += 1
    if x != np.uint64(L):
        return pos, 2
    return pos, 0


def encode(symbols: np.ndarray, freq: np.ndarray, writer: BitWriter) -> None:
    """Append the rANS stream of ``symbols`` (each with freq > 0): its word count, then the words."""
    symbols = np.ascontiguousarray(symbols, dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(freq)[:-1]]).astype(np.int64)
    if symbols.size and (int(symbols.min()) < 0 or int(symbols.max()) >= freq.size or np.any(freq[symbols] <= 0)):
        raise ValueError("a symbol outside the table or of frequency 0")
    words, status = _encode(symbols, np.asarray(freq, np.int64), cum)
    if status:  # pragma: no cover - the buffer holds the worst case
        raise RuntimeError("rANS output buffer overflow")
    elias_delta_encode([words.size + 1], writer)
    writer.write_array(words.astype(np.uint64), 16)


def decode(reader: BitReader, count: int, freq: np.ndarray) -> np.ndarray:
    """``count`` symbols (int64) from the stream at the reader, with the table ``freq`` (from :func:`read_table`)."""
    n_words = int(elias_delta_decode(reader, 1)[0]) - 1
    if n_words * 16 > reader.remaining:
        raise TruncatedPayloadError(f"rANS stream of {n_words} words, {reader.remaining} bits left")
    if n_words > count + 2:
        raise LimitExceededError(f"rANS stream of {n_words} words for {count} symbols")
    words = reader.read_array(n_words, 16, "rANS words").astype(np.uint16)
    cum = np.concatenate([[0], np.cumsum(freq)[:-1]]).astype(np.int64)
    lookup = np.repeat(np.arange(freq.size, dtype=np.int64), freq)
    out = np.empty(count, dtype=np.int64)
    used, status = _decode(words, count, freq, cum, lookup, out)
    if status == 1:
        raise TruncatedPayloadError(f"rANS stream ends before symbol {count} of {count}")
    if status == 2 or used != n_words:
        raise DecodeError(f"rANS stream does not end where its encoder ended ({used} of {n_words} words)")
    return out
