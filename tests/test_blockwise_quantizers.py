"""nf4 and blockwise8 against QLoRA and bitsandbytes: the NormalFloat quantiles, the dynamic map, absmax blocks.

The NF4 code book is rebuilt here from the normal quantiles as QLoRA defines it (its eq. 4, made asymmetric
with an exact zero, as bitsandbytes' ``create_normal_map`` builds it), not read from the codec. Round trips and
damaged payloads for every registered codec are in test_update_compressors.py and test_hostile_payloads.py.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict

import numpy as np
import pytest
import torch

from fedcomp.coding import DecodeError, DecodeLimits, specs_of
from fedcomp.compressors.update.base import EncodeContext
from fedcomp.compressors.update.blockwise8 import dynamic_map, linear_map
from fedcomp.compressors.update.nf4 import NF4
from fedcomp.params import ConfigError
from tests.helpers import update_compressor
from tests.payloads import Frame


def laplace(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).laplace(size=shape).astype(np.float32))


def qlora_normal_float(bits: int = 4) -> torch.Tensor:
    """QLoRA's k-bit NormalFloat: Φ⁻¹ at 2^{k−1} points linspace(δ, ½) for the positive half (½ dropped), at
    2^{k−1} − 1 for the negative half, and 0; normalized by the largest. δ = ½(1 − 1/(2·15) + 1 − 1/(2·16)),
    the offset bitsandbytes uses (each end quantile the mean of the two grid widths' outermost points)."""
    offset = 0.5 * ((1 - 1 / (2 * 15)) + (1 - 1 / (2 * 16)))
    half = 1 << (bits - 1)
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, half + 1)[:-1].double())
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, half)[:-1].double())
    values = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return values / values.max()


def test_the_nf4_code_book_is_the_normal_quantiles_qlora_defines():
    expected = qlora_normal_float(4)
    assert expected.numel() == 16 and float(expected[7]) == 0.0 and float(expected[0]) == -1.0
    assert torch.allclose(torch.tensor(NF4, dtype=torch.float64), expected, atol=2e-7), (NF4, expected.tolist())


def test_the_dynamic_map_is_bitsandbytes_signed_dynamic_type():
    """2^e magnitudes in each decade 10^{e−6}, e = 0..6 (the midpoints of linspace(0.1, 1, 2^e + 1)), both signs,
    then 0 and 1: 256 distinct values; and the linear code is absmax int8's k/127."""
    code = dynamic_map()
    assert code.numel() == 256 == len(set(code.tolist())) and bool((code.diff() > 0).all())
    assert 0.0 in code.tolist() and float(code[-1]) == 1.0 and float(code[0]) == pytest.approx(-0.99296875, abs=1e-6)
    for e in range(7):
        mids = (torch.linspace(0.1, 1, 2**e + 1)[:-1] + torch.linspace(0.1, 1, 2**e + 1)[1:]) / 2
        decade = (10.0 ** (e - 6) * mids).tolist()
        assert all(any(abs(v - c) <= 1e-6 * abs(v) for c in code.tolist()) for v in decade), e
    assert linear_map().numel() == 255 and float(linear_map()[127]) == 0.0 and float(linear_map()[-1]) == 1.0


@pytest.mark.parametrize(("name", "params"), [("nf4", {}), ("blockwise8", {}), ("blockwise8", {"code": "linear"}),
                                              ("blockwise8", {"blocksize": 256})])  # fmt: skip
def test_each_value_is_the_nearest_code_value_times_its_blocks_absmax(name, params):
    """T̂_i = N_b·C[q_i] with q_i the nearest code value to T_i/N_b, blocks within each tensor, the last short."""
    upd = OrderedDict(w=laplace(70, 33, seed=1), b=laplace(45, seed=2))
    comp = update_compressor(name, **params)
    code = comp.code(comp.code_name()).double()
    size = comp.params.blocksize
    enc = comp.encode(upd, {}, EncodeContext())
    dec = comp.decode(enc.payload, DecodeLimits.for_specs(specs_of(upd)))
    for k, t in upd.items():
        assert torch.equal(dec[k], enc.sent[k])
        flat, got = t.reshape(-1).double(), dec[k].reshape(-1).double()
        for start in range(0, flat.numel(), size):
            block, out = flat[start : start + size], got[start : start + size]
            absmax = float(block.abs().max())
            nearest = code[(block[:, None] / absmax - code[None, :]).abs().argmin(1)] * absmax
            assert torch.allclose(out, nearest, rtol=1e-6, atol=1e-12), (k, start)


@pytest.mark.parametrize(("name", "params", "bits"), [("nf4", {}, 4), ("blockwise8", {}, 8),
                                                      ("blockwise8", {"blocksize": 2048}, 8)])  # fmt: skip
def test_bits_an_element_plus_an_fp32_absmax_per_block(name, params, bits):
    upd = OrderedDict(w=laplace(100, 41), b=laplace(7))
    comp = update_compressor(name, **params)
    body = Frame.parse(comp.encode(upd, {}, EncodeContext()).payload).body
    size = comp.params.blocksize
    blocks = math.ceil(4100 / size) + 1
    assert len(body) == 4 * blocks + math.ceil(4107 * bits / 8)


def test_nf4_error_is_below_int4s_on_normal_data_at_the_same_bits():
    """The point of NormalFloat: on N(0, 1) blocks its levels beat 16 evenly spaced ones at the same 4 bits."""
    x = torch.randn(1 << 16, generator=torch.Generator().manual_seed(0))
    upd = OrderedDict(v=x)
    nf4 = update_compressor("nf4").encode(upd, {}, EncodeContext()).sent["v"]
    blocks = x.view(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    uniform = (torch.round(blocks / absmax * 7.5 + 7.5).clamp(0, 15) - 7.5) / 7.5 * absmax  # 16 even levels
    assert float(((nf4 - x) ** 2).sum()) < 0.9 * float(((uniform.reshape(-1) - x) ** 2).sum())


@pytest.mark.parametrize(("name", "params", "key"), [("nf4", {"blocksize": 100}, "blocksize"),
                                                     ("blockwise8", {"blocksize": 8192}, "blocksize"),
                                                     ("blockwise8", {"code": "fp8"}, "code")])  # fmt: skip
def test_bad_parameters_are_config_errors_naming_the_key(name, params, key):
    with pytest.raises(ConfigError, match=f"uplink.{key}"):
        update_compressor(name, **params)


def test_crafted_blockwise_payloads_are_decode_errors():
    upd = OrderedDict(v=laplace(129))  # three blocks of 64; 129 nibbles: one of padding
    nf4 = update_compressor("nf4")
    frame = Frame.parse(nf4.encode(upd, {}, EncodeContext()).payload)
    limits = DecodeLimits.for_specs(specs_of(upd))
    body = frame.body
    assert len(body) == 3 * 4 + 65
    forged = {
        "the absmax of block 1 is negative": body[:4] + struct.pack("<f", -2.0) + body[8:],
        "body is 76 bytes, 77 expected": body[:-1],
        "a nonzero padding nibble after 129": body[:-1] + bytes([body[-1] | 0x01]),
    }
    for why, data in forged.items():
        with pytest.raises(DecodeError, match=why):
            nf4.decode(frame.with_body(data).to_bytes(), limits)
    for params in ({"blocksize": 100, "code": "nf4"}, {"blocksize": 64, "code": "dynamic"}, {"blocksize": 64},
                   {"blocksize": "64", "code": "nf4"}, {"blocksize": 1 << 20, "code": "nf4"}):  # fmt: skip
        with pytest.raises(DecodeError, match="nf4"):
            nf4.decode(frame.with_params(params).to_bytes(), limits)
    linear = update_compressor("blockwise8", code="linear")
    frame = Frame.parse(linear.encode(upd, {}, EncodeContext()).payload)
    with pytest.raises(DecodeError, match="code index 255 beyond the 255 values"):  # int8's 255 levels: 0..254
        linear.decode(frame.with_body(frame.body[:-1] + b"\xff").to_bytes(), limits)
