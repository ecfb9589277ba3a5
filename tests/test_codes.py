"""Property tests (hypothesis) and known code tables for the integer codes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedcomp.coding import (
    BitReader,
    BitWriter,
    DecodeError,
    TruncatedPayloadError,
    decode_indices,
    elias_delta_decode,
    elias_delta_encode,
    elias_gamma_decode,
    elias_gamma_encode,
    encode_indices,
    golomb_decode,
    golomb_encode,
    golomb_parameter,
    golomb_parameter_for,
    pack_signs,
    pack_values,
    rice_decode,
    rice_encode,
    unpack_signs,
    unpack_values,
)
from fedcomp.coding.codes import index_golomb_parameter

SETTINGS = settings(max_examples=60, deadline=None)


def _bitstring(w: BitWriter) -> str:
    bits = np.unpackbits(np.frombuffer(w.getvalue(), dtype=np.uint8))[: w.nbits]
    return "".join(map(str, bits))


# Golomb (1966) / textbook tables: unary quotient (ones, then a zero), truncated-binary remainder.
GOLOMB_M3 = ["00", "010", "011", "100", "1010", "1011", "1100", "11010", "11011", "11100"]
GOLOMB_M4 = ["000", "001", "010", "011", "1000", "1001", "1010", "1011", "11000", "11001"]
GAMMA = {1: "1", 2: "010", 3: "011", 4: "00100", 5: "00101", 9: "0001001"}
DELTA = {1: "1", 2: "0100", 3: "0101", 4: "01100", 5: "01101", 8: "00100000", 17: "001010001"}


@pytest.mark.parametrize("m, table", [(3, GOLOMB_M3), (4, GOLOMB_M4)])
def test_golomb_code_tables_bit_for_bit(m, table):
    assert [_bitstring(golomb_encode(np.array([x]), m)) for x in range(10)] == table


def test_elias_code_tables_bit_for_bit():
    assert {x: _bitstring(elias_gamma_encode([x])) for x in GAMMA} == GAMMA
    assert {x: _bitstring(elias_delta_encode([x])) for x in DELTA} == DELTA


def test_stream_layout_has_exactly_the_interleaved_bit_count():
    x = np.arange(50)
    w = golomb_encode(x, 5)
    assert w.nbits == sum(len(_bitstring(golomb_encode(np.array([v]), 5))) for v in x)


@given(
    values=arrays(np.int64, st.integers(0, 300), elements=st.integers(0, 5000)),
    m=st.integers(1, 3000),
)
@SETTINGS
def test_golomb_round_trip(values, m):
    if values.size and values.max() // m > 1 << 20:
        return
    w = golomb_encode(values, m)
    r = BitReader(w.getvalue(), w.nbits)
    assert np.array_equal(golomb_decode(r, values.size, m), values)
    assert r.remaining == 0


@given(values=arrays(np.int64, st.integers(0, 200), elements=st.integers(0, 1 << 40)), k=st.integers(20, 40))
@SETTINGS
def test_rice_round_trip_with_large_values(values, k):
    w = rice_encode(values, k)
    assert np.array_equal(rice_decode(BitReader(w.getvalue()), values.size, k), values)


def test_golomb_extreme_values():
    big = np.array([0, (1 << 40) - 1, 1 << 40], dtype=np.int64)
    m = 1 << 39
    w = golomb_encode(big, m)
    assert np.array_equal(golomb_decode(BitReader(w.getvalue()), 3, m), big)
    assert BitWriter().getvalue() == b"" and golomb_encode(np.zeros(0, np.int64), 7).nbits == 0
    with pytest.raises(ValueError, match="far too small"):
        golomb_encode(np.array([1 << 30]), 1)
    with pytest.raises(ValueError, match="non-negative"):
        golomb_encode(np.array([-1]), 3)


@given(st.lists(st.integers(1, (1 << 64) - 1), max_size=40))
@SETTINGS
def test_elias_round_trips(values):
    for enc, dec in ((elias_gamma_encode, elias_gamma_decode), (elias_delta_encode, elias_delta_decode)):
        w = enc(values)
        assert dec(BitReader(w.getvalue()), len(values)).tolist() == values


@given(st.floats(0.0, 0.999999))
@SETTINGS
def test_golomb_parameter_meets_gallager_van_voorhis(theta):
    m = golomb_parameter(theta)
    assert theta**m + theta ** (m + 1) <= 1 + 1e-12
    if m > 1:
        assert theta ** (m - 1) + theta**m > 1 - 1e-12


def test_golomb_parameter_known_values_and_adaptive_choice():
    assert golomb_parameter(0.5) == 1 and golomb_parameter(2 / 3) == 2
    assert golomb_parameter(16 / 17) == 11
    rng = np.random.default_rng(0)
    sample = rng.geometric(1 / 1001, size=20_000) - 1  # mean 1000
    assert abs(golomb_parameter_for(sample) - 693) <= 15
    with pytest.raises(ValueError):
        golomb_parameter(1.0)


@given(st.data())
@SETTINGS
def test_index_sets_round_trip(data):
    n = data.draw(st.integers(1, 100_000))
    k = data.draw(st.integers(0, min(n, 500)))
    idx = np.sort(np.random.default_rng(data.draw(st.integers(0, 1 << 30))).choice(n, size=k, replace=False))
    w = encode_indices(idx, n)
    assert np.array_equal(decode_indices(BitReader(w.getvalue()), n), idx)


def test_index_coding_is_near_the_support_entropy():
    n, k = 431_080, 431
    idx = np.sort(np.random.default_rng(0).choice(n, size=k, replace=False))
    bits = encode_indices(idx, n).nbits
    entropy = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)
    assert bits / k < 1.01 * entropy / k + 0.2  # about 11.45 vs 11.41 bits per index


def test_hostile_streams_raise_decode_errors():
    with pytest.raises(TruncatedPayloadError, match="terminate"):
        golomb_decode(BitReader(b"\xff\xff"), 3, 4)  # unary codes that never end
    with pytest.raises(TruncatedPayloadError):
        golomb_decode(BitReader(b"\x00"), 1000, 1024)
    w = BitWriter()
    elias_delta_encode([1000], w)  # k = 999 indices claimed out of n = 10
    with pytest.raises(DecodeError, match="999 indices"):
        decode_indices(BitReader(w.getvalue()), 10)
    w = BitWriter()
    elias_delta_encode([2], w)
    golomb_encode(np.array([50]), index_golomb_parameter(1, 10), w)  # one index at 50, n = 10
    with pytest.raises(DecodeError, match="out of range"):
        decode_indices(BitReader(w.getvalue()), 10)
    with pytest.raises(DecodeError, match="Elias-gamma prefix"):
        elias_gamma_decode(BitReader(b"\x00" * 16))
    with pytest.raises(TruncatedPayloadError):
        BitReader(b"\x00", nbits=9)


@given(arrays(np.float32, st.integers(0, 300), elements=st.floats(-1e6, 1e6, width=32)))
@SETTINGS
def test_value_packing(values):
    t = torch.from_numpy(values)
    assert torch.equal(unpack_values(pack_values(t, "fp32"), "fp32", t.numel()), t)
    h = unpack_values(pack_values(t, "fp16"), "fp16", t.numel())
    assert torch.equal(h, t.clamp(-65504, 65504).half().float())
    b = unpack_values(pack_values(t, "bf16"), "bf16", t.numel())
    assert torch.equal(b, t.bfloat16().float())
    assert len(pack_values(t, "bf16")) == 2 * t.numel()


@given(arrays(np.bool_, st.integers(0, 100)))
@SETTINGS
def test_sign_bits(signs):
    data = pack_signs(signs)
    assert len(data) == (signs.size + 7) // 8
    assert np.array_equal(unpack_signs(data, signs.size), signs)


def test_value_decode_checks_lengths():
    with pytest.raises(DecodeError, match="need 8 bytes"):
        unpack_values(b"\x00" * 7, "fp32", 2)
    with pytest.raises(DecodeError, match="sign bits"):
        unpack_signs(b"\x00", 9)


# ----------------------------------------------------------------------------- bounded, vectorized decoding


def test_elias_codes_of_64_bit_values_and_every_power_of_two_boundary():
    values = sorted({1, 2, 3, (1 << 64) - 1, *[(1 << k) + d for k in range(1, 64) for d in (-1, 0, 1)]})
    for enc, dec in ((elias_gamma_encode, elias_gamma_decode), (elias_delta_encode, elias_delta_decode)):
        w = enc(values)
        assert dec(BitReader(w.getvalue()), len(values)).tolist() == values
        assert w.nbits == sum(enc([v]).nbits for v in values)  # the vectorized writer: codeword after codeword
    assert elias_gamma_encode([(1 << 64) - 1]).nbits == 127
    with pytest.raises(ValueError):
        elias_gamma_encode([0])
    with pytest.raises(ValueError):
        elias_delta_encode(np.array([-3]))


def test_elias_decoders_refuse_before_they_allocate_or_read_past_the_end():
    with pytest.raises(TruncatedPayloadError, match="codes declared in 16 bits"):
        elias_gamma_decode(BitReader(b"\xff\xff"), 1 << 40)  # no 8 TB array for a count the bits cannot hold
    with pytest.raises(TruncatedPayloadError, match="code #1"):
        elias_gamma_decode(BitReader(b"\x80\x20"), 2)  # 1, then a 3-zero prefix with too few bits behind it
    w = BitWriter()
    elias_gamma_encode([65], w)  # a δ length of 65: beyond 64 bits
    w.write_bits(np.ones(70, np.uint8))
    with pytest.raises(DecodeError, match="length above 64"):
        elias_delta_decode(BitReader(w.getvalue()), 1)
    r = BitReader(elias_gamma_encode([5, 9]).getvalue())
    assert elias_gamma_decode(r, 1).tolist() == [5] and r.pos == 5  # the cursor stops after the code read


def test_unary_and_fixed_width_reads_across_their_chunks():
    from fedcomp.coding.bits import CHUNK_FIELDS, UNARY_WINDOW

    rng = np.random.default_rng(3)
    q = rng.geometric(0.02, size=(3 * UNARY_WINDOW) // 50) - 1  # about 3 windows of bits
    q[7] = UNARY_WINDOW + 5  # one code longer than a window
    w = BitWriter()
    w.write_unary(q)
    w.write(5, 3)
    r = BitReader(w.getvalue())
    assert np.array_equal(r.read_unary(q.size), q) and r.read(3) == 5
    for width in (1, 7, 13, 24, 33, 64):
        v = rng.integers(0, 1 << min(width, 63), size=CHUNK_FIELDS + 17, dtype=np.uint64)
        w = BitWriter()
        w.write(1, 3)  # unaligned start
        w.write_array(v, width)
        r = BitReader(w.getvalue())
        assert r.read(3) == 1 and np.array_equal(r.read_array(v.size, width), v), width


def test_golomb_values_are_bounded_before_they_are_formed():
    w = golomb_encode(np.array([3, 50, 7]), 4)
    with pytest.raises(DecodeError, match="out of range"):
        golomb_decode(BitReader(w.getvalue()), 3, 4, max_value=49)
    assert golomb_decode(BitReader(w.getvalue()), 3, 4, max_value=50, dtype=np.int32).tolist() == [3, 50, 7]
    # A quotient that would wrap int64 with the largest M: refused from the quotient alone.
    w = BitWriter()
    w.write_unary(np.array([1 << 23]))
    w.write_array(np.zeros(1, np.uint64), 40)
    with pytest.raises(DecodeError, match="out of range"):
        golomb_decode(BitReader(w.getvalue()), 1, 1 << 40)
    with pytest.raises(TruncatedPayloadError):
        golomb_decode(BitReader(b"\x00"), 1 << 50, 3)


def test_byte_reads_and_peeks_from_any_bit_position():
    w = BitWriter()
    w.write(1, 1)
    w.write_array(np.frombuffer(b"hello", np.uint8), 8)
    r = BitReader(w.getvalue())
    assert r.read(1) == 1 and r.read_bytes(5) == b"hello"
    assert r.peek_array(1, 2, 8).tolist() == [ord("h"), ord("e")] and r.pos == 41
    with pytest.raises(TruncatedPayloadError):
        r.peek_array(41, 1, 8)  # the stream is padded to 48 bits
    with pytest.raises(TruncatedPayloadError):
        r.read_bytes(1)
