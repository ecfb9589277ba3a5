"""The lossless stage (``lossless = "zstd"``) every update codec offers: what it saves, and a zip bomb refused.

The bytes are the payload's, as everywhere: with the stage on, the recorded size is the compressed length,
and the decoder gets the codec's own body back only through a bounded decompression (at most the expected
tensors' dense size plus the container's slack, whatever the frame claims).
"""

from __future__ import annotations

import dataclasses
import struct
from collections import OrderedDict

import numpy as np
import pytest
import torch
import zstandard

from fedcomp import catalogue
from fedcomp.coding import DecodeError, DecodeLimits, LimitExceededError, lossless, specs_of
from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.compressors.update.base import EncodeContext
from fedcomp.flower.downlink import DownlinkChannel, Held, apply_change, model_crc
from fedcomp.params import ConfigError
from tests.helpers import update_compressor
from tests.payloads import Frame, damage
from tests.test_flower_building_blocks import ARCH, initial_state
from tests.test_hostile_payloads import PeakRSS, mlp_update, run_cases


def laplace_update(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    shapes = {"conv.weight": (20, 1, 5, 5), "fc.weight": (500, 800), "fc.bias": (500,)}
    return OrderedDict((k, torch.from_numpy(rng.laplace(size=s).astype(np.float32))) for k, s in shapes.items())


def test_every_update_codec_offers_the_stage_and_fedcomp_list_names_it():
    listed = {f["title"].split(" (")[0]: f["entries"] for f in catalogue.load()["families"]}["update compressors"]
    for entry in listed:
        assert ["lossless", "'none'"] in entry["params"], entry["name"]
    for name in UPDATE_COMPRESSORS:
        field = {f.name: f for f in dataclasses.fields(UPDATE_COMPRESSORS.get(name).Params)}["lossless"]
        assert field.default == "none"
        with pytest.raises(ConfigError, match="uplink.lossless"):
            update_compressor(name, lossless="bz2")


@pytest.mark.parametrize(("name", "params"), [("topk", {"density": 0.05}), ("randomk", {"density": 0.05}),
                                              ("nf4", {}), ("identity", {})])  # fmt: skip
def test_zstd_after_a_codec_is_counted_in_bytes_and_both_payloads_decode_to_the_same_update(name, params):
    upd = laplace_update()
    limits = DecodeLimits.for_specs(specs_of(upd))
    plain = update_compressor(name, seed=3, **params).encode(upd, {}, EncodeContext(1, 0, 2))
    squeezed_codec = update_compressor(name, seed=3, lossless="zstd", **params)
    squeezed = squeezed_codec.encode(upd, {}, EncodeContext(1, 0, 2))
    print(f"{name} {params}: {len(plain.payload)} bytes, with zstd {len(squeezed.payload)}")
    assert len(squeezed.payload) < len(plain.payload)
    assert Frame.parse(squeezed.payload).params_dict["lossless"] == "zstd"
    got = squeezed_codec.decode(squeezed.payload, limits)
    assert all(torch.equal(got[k], plain.sent[k]) and torch.equal(squeezed.sent[k], plain.sent[k]) for k in upd)


@pytest.mark.parametrize(("name", "params"), [("drive", {}), ("quantized_ec", {"bits": 2.0})])
def test_a_body_zstd_cannot_shrink_goes_as_it_was(name, params):
    """DRIVE's sign bits and quantized_ec's rANS stream are already at their entropy: the stage leaves the payload
    alone (no growth, no ``lossless`` key), so a ``max_bytes`` budget keeps holding with the stage on."""
    upd = laplace_update(1)
    plain = update_compressor(name, **params).encode(upd, {}, EncodeContext()).payload
    with_stage = update_compressor(name, lossless="zstd", **params).encode(upd, {}, EncodeContext()).payload
    assert with_stage == plain and "lossless" not in Frame.parse(plain).params_dict
    small = OrderedDict(w=upd["fc.weight"][:40])
    budget = update_compressor("topk", density=0.5, max_bytes=2000, lossless="zstd")
    assert len(budget.encode(small, {}, EncodeContext()).payload) <= 2000


def zstd_bomb(size: int) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(b"\x00" * size)


def with_content_size(frame: bytes, size: int) -> bytes:
    """The frame with its header's content-size field rewritten (a lie the decoder must not trust)."""
    descriptor = frame[4]
    fcs_flag, single = descriptor >> 6, (descriptor >> 5) & 1
    width = {0: int(single), 1: 2, 2: 4, 3: 8}[fcs_flag]
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]
    value = size - 256 if width == 2 else size
    return frame[:at] + value.to_bytes(width, "little") + frame[at + width :]


def test_a_zip_bomb_is_a_decode_error_and_is_never_expanded():
    """64 MiB of zeros in a 2 KB frame, against a 6 KB update: refused from the header; the same frame whose
    header claims 1,000 bytes is refused as soon as its output passes them. Either way the peak RSS stays
    within a few MB: the decoder never holds what the frame expands to."""
    upd = OrderedDict(w=torch.randn(40, 40))
    limits = DecodeLimits.for_specs(specs_of(upd))
    comp = update_compressor("topk", density=0.5, lossless="zstd")
    frame = Frame.parse(comp.encode(upd, {}, EncodeContext()).payload)
    bomb = zstd_bomb(64 << 20)
    assert len(bomb) < 4096
    rss = PeakRSS()
    for forged, why in ((bomb, "declares 67108864 bytes"), (with_content_size(bomb, 1000), "expands past|corrupt")):
        base = rss.start()
        with pytest.raises(DecodeError, match=why):
            comp.decode(frame.with_body(forged).to_bytes(), limits)
        if rss.resettable:
            assert rss.growth(base) < 24 << 20
    with pytest.raises(LimitExceededError):
        lossless.decompress(bomb, 1 << 20)


@pytest.mark.parametrize(
    ("body", "why"), [(b"", "not a zstd frame"), (b"\x28\xb5\x2f\xfd\x00", "not a zstd frame|content size"),
                      (None, "bytes after the zstd frame"), ("cut", "ends early|corrupt")],
)  # fmt: skip
def test_malformed_frames_and_unknown_stages_are_decode_errors(body, why):
    upd = laplace_update(2)
    limits = DecodeLimits.for_specs(specs_of(upd))
    comp = update_compressor("topk", density=0.05, lossless="zstd")
    frame = Frame.parse(comp.encode(upd, {}, EncodeContext()).payload)
    data = frame.body + b"\x00" if body is None else frame.body[:-5] if body == "cut" else body
    with pytest.raises(DecodeError, match=why):
        comp.decode(frame.with_body(data).to_bytes(), limits)
    with pytest.raises(DecodeError, match="unknown lossless stage 'bz2'"):
        comp.decode(frame.with_params({"values": "fp32", "lossless": "bz2"}).to_bytes(), limits)


def test_damaged_zstd_bodies_behind_a_valid_crc_are_only_decode_errors_within_bounds():
    update = mlp_update(4)
    specs = specs_of(update)
    rss = PeakRSS()
    failures = []
    for name, params in (("topk", {"density": 0.05}), ("nf4", {})):
        comp = update_compressor(name, seed=5, lossless="zstd", **params)
        payload = comp.encode(update, {}, EncodeContext()).payload
        assert "lossless" in Frame.parse(payload).params_dict
        rng = np.random.default_rng(len(name))
        cases = ((f"{name} #{i}", damage(payload, rng)[1]) for i in range(60))

        def decode(data: bytes, bound: float, comp=comp):
            return comp.decode(data, DecodeLimits.for_specs(specs, max_abs=bound)).items()

        tally = run_cases(decode, cases, sum(s.nbytes for s in specs), rss)
        failures += tally.failures
        assert tally.errors > 20, (name, tally)  # the rest decode to some update: the frame has no checksum
    assert not failures, failures[:10]


def test_the_downlink_carries_the_change_through_zstd_and_the_client_rebuilds_it():
    specs = ARCH.specs(())
    limits = DecodeLimits.for_specs([s for s in specs if s.dtype.is_floating_point])
    codec = update_compressor("topk", seed=3, section="downlink", density=0.2, lossless="zstd")
    channel = DownlinkChannel(codec, limits)
    start = channel.advance(1, initial_state(0), first_round_of_run=True)
    held = Held(OrderedDict(start), 0, model_crc(start))
    channel.advance(2, initial_state(2), first_round_of_run=False)
    channel.versions[1] = 0  # node 1 holds version 0: it gets the one step
    payload = channel.payload_for(1, channel.dense())
    step = next(iter(channel.steps.values()))
    assert Frame.parse(step).params_dict["lossless"] == "zstd"
    got = apply_change(
        payload, held, ARCH, update_compressor("topk", seed=3, section="downlink", density=0.2), 1e6, None
    )
    assert got.version == 1 and all(torch.equal(got.state[k], v) for k, v in channel.reference.items())
    assert struct.unpack("<I", payload[-4:])[0] > 0  # a container, CRC at the end
