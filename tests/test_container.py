import math
import struct
import zlib

import numpy as np
import pytest
import torch

from fedcomp.coding import (
    ChecksumError,
    DecodeError,
    DecodeLimits,
    LimitExceededError,
    SpecMismatchError,
    TensorSpec,
    TruncatedPayloadError,
    check_all_values,
    check_values,
    pack,
    specs_of,
    unpack,
)
from fedcomp.coding.container import MAGIC
from fedcomp.compressors.update.identity import IdentityCompressor


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
        "empty": torch.zeros(0, 5),
        "half": torch.randn(6, generator=g).half(),
        "bf": torch.randn(3, generator=g).bfloat16(),
    }


def test_identity_round_trip_is_exact_in_every_dtype():
    t = _tensors()
    codec = IdentityCompressor()
    payload = codec.encode(t).payload
    out = codec.decode(payload, DecodeLimits.for_specs(specs_of(t)))
    assert list(out) == list(t)
    for k in t:
        assert out[k].dtype == t[k].dtype and torch.equal(out[k], t[k])


def test_payload_length_is_header_plus_fp32_body():
    t = {"w": torch.ones(100, 10)}
    payload = IdentityCompressor().encode(t).payload
    parsed = unpack(payload, DecodeLimits.for_specs(specs_of(t)))
    assert len(parsed.body) == 4000
    assert len(payload) == 4000 + 40  # a 40-byte header: the tensor list travels as a digest


def test_spec_digest_replaces_the_tensor_list_and_is_checked():
    specs = [TensorSpec("layer.weight", (3, 4), torch.float32), TensorSpec("layer.bias", (3,), torch.float32)]
    full = pack("x", {}, specs, b"")
    short = pack("x", {}, specs, b"", by_digest=True)
    assert len(short) < len(full) and unpack(short, DecodeLimits(expected=tuple(specs))).specs == tuple(specs)
    with pytest.raises(SpecMismatchError, match="digest"):
        unpack(short, DecodeLimits(expected=(specs[1], specs[0])))
    with pytest.raises(SpecMismatchError, match="expects no specs"):
        unpack(short)


def test_container_fields_survive():
    specs = [TensorSpec("a", (2, 3), torch.float32)]
    parsed = unpack(pack("x", {"k": 1, "s": "v"}, specs, b"\x01\x02"))
    assert parsed.codec == "x" and parsed.params == {"k": 1, "s": "v"} and parsed.specs == tuple(specs)
    assert parsed.body == b"\x01\x02"


def _reframe(head: bytes) -> bytes:
    """A payload with a valid CRC around arbitrary contents (a hostile sender)."""
    return head + struct.pack("<I", zlib.crc32(head))


def test_hostile_payloads_raise_typed_errors():
    good = pack("identity", {}, [TensorSpec("w", (2,), torch.float32)], b"\x00" * 8)
    with pytest.raises(ChecksumError, match="CRC32"):
        unpack(good[:-5] + bytes([good[-5] ^ 1]) + good[-4:])
    with pytest.raises(TruncatedPayloadError):
        unpack(good[:6])
    with pytest.raises(DecodeError, match="bad magic"):
        unpack(b"XXXX" + good[4:])
    with pytest.raises(DecodeError, match="must be bytes"):
        unpack("text")  # type: ignore[arg-type]
    # A terabyte-sized tensor declared in a tiny payload: refused before allocation.
    huge = pack("identity", {}, [TensorSpec("w", (1 << 20, 1 << 20), torch.float32)], b"")
    with pytest.raises(LimitExceededError, match="exceeds"):
        unpack(huge)
    # A body length far beyond the bytes present.
    head = good[:-4]
    body_len_at = len(head) - 8 - 8
    lying = head[:body_len_at] + struct.pack("<Q", 1 << 40) + head[body_len_at + 8 :]
    with pytest.raises(TruncatedPayloadError, match="body"):
        unpack(_reframe(lying))
    with pytest.raises(LimitExceededError, match="tensors"):
        unpack(good, DecodeLimits(max_tensors=0))
    with pytest.raises(LimitExceededError, match="payload is"):
        unpack(good, DecodeLimits(max_payload_bytes=10))


def test_expected_specs_are_enforced():
    payload = pack("identity", {}, [TensorSpec("w", (3,), torch.float32)], b"\x00" * 12)
    with pytest.raises(SpecMismatchError, match="named 'w', expected 'v'"):
        unpack(payload, DecodeLimits(expected=(TensorSpec("v", (3,), torch.float32),)))
    with pytest.raises(SpecMismatchError, match="shape"):
        unpack(payload, DecodeLimits(expected=(TensorSpec("w", (4,), torch.float32),)))
    with pytest.raises(SpecMismatchError, match="holds 1 tensors"):
        unpack(payload, DecodeLimits(expected=()))
    for dtype in (torch.uint8, torch.bool, torch.float64):  # a spec's dtype is part of it
        with pytest.raises(SpecMismatchError, match=f"dtype torch.float32, expected {dtype}"):
            unpack(payload, DecodeLimits(expected=(TensorSpec("w", (3,), dtype),)))


def test_every_params_parse_failure_is_a_decode_error():
    specs = [TensorSpec("w", (2,), torch.float32)]
    good = pack("identity", {}, specs, b"\x00" * 8)
    start = good.index(b"{}")
    for raw, fragment in (
        (b'{"k":' + b"9" * 5000 + b"}", "4300 digits"),  # Python's int-string limit: a plain ValueError
        (b'{"k":NaN}', "NaN"),
        (b'{"k":-Infinity}', "Infinity"),
        (b'{"k":1e400}', "1e400"),
        (b"[" * 3000 + b"]" * 3000, "not a JSON object"),
        (b"\xff\xfe", "not a JSON object"),
        (b"[1]", "must be a JSON object"),
    ):
        head = good[: start - 4] + struct.pack("<I", len(raw)) + raw + good[start + 2 : -4]
        with pytest.raises(DecodeError, match=fragment):
            unpack(_reframe(head))


def test_limits_carry_a_value_bound():
    specs = [TensorSpec("w", (3,), torch.float32)]
    assert DecodeLimits().max_abs == math.inf and DecodeLimits.for_specs(specs).max_abs == math.inf
    assert DecodeLimits.for_specs(specs, max_abs=1e6).max_abs == 1e6
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="max_abs"):
            DecodeLimits(max_abs=bad)


def test_decoded_values_must_be_finite_and_within_the_bound():
    t = torch.ones(10)
    check_values("w", t, 1.0)
    check_values("ids", torch.tensor([1 << 40]), 1.0)  # integers are not values to bound
    t[[2, 5, 7]] = torch.tensor([math.nan, math.inf, -math.inf])
    with pytest.raises(DecodeError, match="tensor 'w': 3 values are not finite"):
        check_values("w", t)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        with pytest.raises(LimitExceededError, match=r"tensor 'x': 2 values exceed the bound \|x\| <= 10000"):
            check_values("x", torch.tensor([0.0, 2e4, -3e4], dtype=dtype), 1e4)
    many = [(f"t{i}", torch.ones(5)) for i in range(40)] + [("big", torch.ones(1 << 17))]
    check_all_values(many, 1.0)  # the small ones reduced together
    many[23][1][2] = math.nan
    many[31][1][0] = 7.0
    with pytest.raises(DecodeError, match="tensor 't23': 1 values are not finite"):  # the first that fails
        check_all_values(many, 1.0)
    many[23][1][2] = 0.0
    with pytest.raises(LimitExceededError, match="tensor 't31'.*largest 7"):
        check_all_values(many, 1.0)
    codec = IdentityCompressor()
    update = {"w": torch.tensor([1.0, 1e34])}
    payload = codec.encode(update).payload
    assert torch.equal(codec.decode(payload, DecodeLimits.for_specs(specs_of(update)))["w"], update["w"])
    with pytest.raises(LimitExceededError, match="tensor 'w': 1 values exceed"):
        codec.decode(payload, DecodeLimits.for_specs(specs_of(update), max_abs=1e6))


def test_wrong_codec_is_refused():
    payload = pack("other", {}, [], b"")
    with pytest.raises(DecodeError, match="codec 'other'"):
        IdentityCompressor().decode(payload, DecodeLimits())


def test_fuzz_only_decode_errors_escape():
    """10,000 bit-flipped, cut, spliced and re-checksummed payloads."""
    rng = np.random.default_rng(1234)
    t = _tensors()
    limits = DecodeLimits.for_specs(specs_of(t))
    codec = IdentityCompressor()
    good = codec.encode(t).payload
    other = codec.encode({"x": torch.ones(7)}).payload
    decoded_ok = [0] * 5
    for i in range(10_000):
        data = bytearray(good)
        kind = i % 5
        if kind == 0:  # random bit flips
            for pos in rng.integers(0, len(data) * 8, size=rng.integers(1, 4)):
                data[pos // 8] ^= 1 << (pos % 8)
        elif kind == 1:  # truncation
            data = data[: rng.integers(0, len(data))]
        elif kind == 2:  # splice with another payload
            cut = rng.integers(0, len(data))
            data = data[:cut] + other[rng.integers(0, len(other)) :]
        elif kind == 3:  # flips behind a valid CRC: the parser itself must hold
            head = bytearray(good[:-4])
            for pos in rng.integers(0, len(head) * 8, size=rng.integers(1, 4)):
                head[pos // 8] ^= 1 << (pos % 8)
            data = bytearray(_reframe(bytes(head)))
        else:  # random garbage, sometimes with our magic
            data = bytearray(rng.integers(0, 256, size=rng.integers(0, 200), dtype=np.uint8).tobytes())
            if rng.random() < 0.5:
                data = bytearray(_reframe(MAGIC + bytes(data)))
        try:
            codec.decode(bytes(data), limits)
            decoded_ok[kind] += 1
        except DecodeError:
            pass  # the one exception type allowed out; anything else fails the test
    # Without a matching CRC nothing may decode; behind a forged CRC, flips that land in
    # the fp32 body are legal values, so some of those decode (and must, not crash).
    assert decoded_ok[0] == decoded_ok[1] == decoded_ok[2] == decoded_ok[4] == 0
    assert 0 < decoded_ok[3] < 2000
