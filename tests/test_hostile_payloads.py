"""Crafted payloads against every uplink codec and every broadcast kind: decoders bounded by their input.

Clients are untrusted (DESIGN.md, principles 5 and 7): a payload with a
valid CRC32 can say anything. For every registered update compressor (SuRP
with both algorithms and both normalizations) and every model compressor,
this suite builds payloads whose counts, lengths, exponents and parameters
sit at their extremes (0, 1, n, n + 1, 2^31, 2^32 − 1, 2^63, 2^64 − 1,
negative, NaN, ±inf, 5e-324, 1e308, 5000-digit integers, specs of the wrong
dtype) and adds random damage (bit flips, byte overwrites, truncations,
insertions; :func:`tests.payloads.damage`), all behind valid CRCs. More
than 10,000 decodes in all (uplink and broadcast suites together), each
of which must

- raise nothing but :class:`~fedcomp.coding.DecodeError`,
- finish within :data:`DECODE_SECONDS` (``time.perf_counter``),
- grow the peak RSS by at most :data:`RSS_SLACK` above the model's size
  (the kernel's high-water mark, reset before each decode), and
- if accepted, hold only finite values within the bound it was given.

The counts per codec (decodes, DecodeErrors, accepted) are printed (``-s``)
and recorded with ``record_property``.
"""

from __future__ import annotations

import json
import math
import resource
import struct
import subprocess
import sys
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from fedcomp.coding import (
    BitWriter,
    DecodeError,
    DecodeLimits,
    TensorSpec,
    elias_delta_encode,
    elias_gamma_encode,
    golomb_encode,
    golomb_parameter_for,
    pack,
    specs_of,
)
from fedcomp.coding.codes import index_golomb_parameter
from fedcomp.coding.container import _spec_bytes
from fedcomp.compressors.model import MODEL_COMPRESSORS
from fedcomp.compressors.model.alds import ALDSCompressor, ALDSParams
from fedcomp.compressors.model.base import ModelCompressor, Received, dense_bytes
from fedcomp.compressors.model.bwcp import BWCPCompressor, BWCPParams
from fedcomp.compressors.model.identity import IdentityModelCompressor
from fedcomp.compressors.model.lc import FormParams, GroupParams, LCCompressor, LCParams
from fedcomp.compressors.model.structure import Architecture
from fedcomp.compressors.model.udfc import UDFCCompressor, UDFCParams
from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.compressors.update.base import EncodeContext, UpdateCompressor
from fedcomp.compressors.update.qsgd import bucket_ids
from fedcomp.compressors.update.surp import accumulate, max_picks, max_refresh_steps, read_stream, shared_order
from tests.helpers import update_compressor
from tests.payloads import Frame, damage

DECODE_SECONDS = 2.0
RSS_SLACK = 200 << 20
MAX_ABS = 1e6
BIG_INT = "9" * 5000  # beyond Python's 4,300-digit int-string limit
U64 = (1 << 64) - 1
MLP = Architecture("mlp", (1, 2, 2), 3)  # 41,803 parameters in six tensors
RESNET = Architecture("resnet20", (1, 8, 8), 10)  # BatchNorms and residual streams, for UDFC and BWCP
UPLINK_RANDOM = 560  # random damages per uplink variant
BROADCAST_RANDOM = 330  # per broadcast kind


# ----------------------------------------------------------------------------- measuring one decode


class PeakRSS:
    """Peak resident memory of this process during a call, from the kernel's high-water mark.

    Writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS, so
    each decode is measured from its own start: an allocation that is freed
    before the decode returns still shows. Where the file cannot be written
    the fallback is ``ru_maxrss``, which only sees a decode that sets a new
    peak for the process.
    """

    def __init__(self) -> None:
        try:
            self._reset()
            self.resettable = True
        except OSError:
            self.resettable = False

    @staticmethod
    def _reset() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    @staticmethod
    def _hwm() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) << 10
        raise OSError("no VmHWM in /proc/self/status")  # pragma: no cover

    def start(self) -> int:
        if self.resettable:
            self._reset()
            return self._hwm()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10

    def growth(self, base: int) -> int:
        if self.resettable:
            return self._hwm() - base
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10) - base


@dataclass
class Tally:
    """What one codec's decodes did."""

    decodes: int = 0
    errors: int = 0
    accepted: int = 0
    slowest: float = 0.0
    most_rss: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        return (
            f"{name:<26}{self.decodes:>8}{self.errors:>13}{self.accepted:>10}"
            f"{self.slowest * 1e3:>11.1f}{self.most_rss / 2**20:>9.1f}"
        )


HEADER = f"{'codec':<26}{'decodes':>8}{'DecodeErrors':>13}{'accepted':>10}{'max ms':>11}{'max MB':>9}"

Decode = Callable[[bytes, float], Iterable[tuple[str, torch.Tensor]]]
"""Decode a payload with a value bound; yields the decoded (name, tensor) pairs."""


def _check_output(tensors: Iterable[tuple[str, torch.Tensor]], bound: float) -> str | None:
    for name, t in tensors:
        if t.is_floating_point() and t.numel():
            if not bool(torch.isfinite(t).all()):
                return f"accepted non-finite values in {name!r}"
            if float(t.abs().max()) > bound:
                return f"accepted |x| = {float(t.abs().max()):g} > {bound:g} in {name!r}"
    return None


def run_cases(
    decode: Decode, cases: Iterable[tuple[str, bytes]], model_bytes: int, rss: PeakRSS, seconds: float = DECODE_SECONDS
) -> Tally:
    """Decode every case, alternating the value bound (MAX_ABS, inf); record what breaks the contract."""
    tally = Tally()
    for i, (label, payload) in enumerate(cases):
        bound = MAX_ABS if i % 2 == 0 else math.inf
        base = rss.start()
        t0 = time.perf_counter()
        try:
            out = list(decode(payload, bound))
            problem = _check_output(out, bound)
            tally.accepted += 1
        except DecodeError:
            problem = None
            tally.errors += 1
        except Exception as exc:  # the contract: nothing else may escape
            problem = f"{type(exc).__name__} escaped: {str(exc)[:160]}"
        elapsed = time.perf_counter() - t0
        grown = rss.growth(base)
        tally.decodes += 1
        tally.slowest = max(tally.slowest, elapsed)
        tally.most_rss = max(tally.most_rss, grown)
        if elapsed > seconds:
            problem = f"took {elapsed:.2f} s"
        elif grown > model_bytes + RSS_SLACK:
            problem = f"grew the peak RSS by {grown / 2**20:.0f} MB"
        if problem:
            tally.failures.append(f"{label}: {problem}")
    return tally


def report(tallies: dict[str, Tally], record_property, what: str) -> str:
    lines = [f"{what}: hostile payloads per codec", HEADER] + [t.line(name) for name, t in tallies.items()]
    total = Tally(
        decodes=sum(t.decodes for t in tallies.values()),
        errors=sum(t.errors for t in tallies.values()),
        accepted=sum(t.accepted for t in tallies.values()),
        slowest=max(t.slowest for t in tallies.values()),
        most_rss=max(t.most_rss for t in tallies.values()),
    )
    lines.append(total.line("total"))
    text = "\n".join(lines)
    print("\n" + text)
    for name, t in tallies.items():
        record_property(f"{what}/{name}", {"decodes": t.decodes, "errors": t.errors, "accepted": t.accepted})
    record_property(f"{what}/total", {"decodes": total.decodes, "errors": total.errors, "accepted": total.accepted})
    return text


def random_damage(payload: bytes, rng: np.random.Generator, count: int, label: str) -> Iterator[tuple[str, bytes]]:
    for i in range(count):
        kind, data = damage(payload, rng)
        yield f"{label} random #{i} ({kind})", data


def test_the_probes_catch_an_escape_a_slow_decode_and_a_memory_spike():
    """The suite's checks can fail: each probe is shown a decode that breaks its rule."""
    rss = PeakRSS()

    def escapes(data: bytes, bound: float):
        raise KeyError("not a DecodeError")

    def slow(data: bytes, bound: float):
        time.sleep(0.05)
        return []

    def hungry(data: bytes, bound: float):
        block = np.ones(300 << 17)  # 300 MiB, touched, freed before returning
        return [("x", torch.tensor([float(block[-1])]))]

    def poisoned(data: bytes, bound: float):
        return [("w", torch.tensor([math.nan]))]

    assert "KeyError escaped" in run_cases(escapes, [("a", b"")], 0, rss).failures[0]
    assert "took" in run_cases(slow, [("a", b"")], 0, rss, seconds=0.01).failures[0]
    assert "accepted non-finite" in run_cases(poisoned, [("a", b"")], 0, rss).failures[0]
    if rss.resettable:  # without /proc/self/clear_refs only a new peak of the process shows
        assert "peak RSS" in run_cases(hungry, [("a", b"")], 0, rss).failures[0]


# ----------------------------------------------------------------------------- generic container extremes


def container_cases(payload: bytes, specs: list[TensorSpec], param_keys: Iterable[str]) -> Iterator[tuple[str, bytes]]:
    """Params, tensor lists and framing at their extremes, for any codec (its own body kept)."""
    frame = Frame.parse(payload)
    raw_params = [
        "{}",
        "[]",
        '"text"',
        "null",
        "{" + f'"x":{BIG_INT}' + "}",
        '{"x":NaN}',
        '{"x":1e400}',
        '{"x":-Infinity}',
        "[" * 5000 + "]" * 5000,
        "{not json",
    ]
    for key in param_keys:
        for value in (BIG_INT, "NaN", "Infinity", "-1", "0", "1e308", "5e-324", "true", "null", '"x"', "[1]", "{}"):
            raw_params.append(
                frame.params.decode()[:-1] + ("," if frame.params != b"{}" else "") + f'"{key}":{value}}}'
            )
            raw_params.append("{" + f'"{key}":{value}' + "}")
    for raw in raw_params:
        yield f"params {raw[:30]!r}", frame.with_params(raw).to_bytes()
    yield "params not UTF-8", frame.with_params(b'{"x":"\xff\xfe"}').to_bytes()
    # The tensor list: explicit specs of the wrong dtype, counts at their extremes.
    for dtype in (torch.uint8, torch.bool, torch.float64, torch.int64, torch.float16):
        wrong = [TensorSpec(s.name, s.shape, dtype) for s in specs]
        tensors = struct.pack("<I", len(wrong)) + _spec_bytes(wrong)
        yield f"specs as {dtype}", Frame(frame.codec, frame.params, tensors, frame.body).to_bytes()
    grown = [*specs[:-1], TensorSpec(specs[-1].name, (specs[-1].numel + 1,), specs[-1].dtype)]
    yield (
        "a tensor one element longer",
        Frame(frame.codec, frame.params, struct.pack("<I", len(grown)) + _spec_bytes(grown), frame.body).to_bytes(),
    )
    for count in (0, 1, len(specs) + 1, (1 << 31) - 1, U64 >> 32):
        for digest in (b"", frame.tensors[4:8]):
            flag = 1 << 31 if digest else 0
            yield (
                f"tensor count {count}",
                Frame(
                    frame.codec, frame.params, struct.pack("<I", (count | flag) & 0xFFFFFFFF) + digest, frame.body
                ).to_bytes(),
            )
    for version in (0, 2, 255):
        yield f"version {version}", Frame(frame.codec, frame.params, frame.tensors, frame.body, version).to_bytes()
    for codec in (b"", b"x", b"identity", b"surp", b"\xff" * 255):
        yield f"codec {codec[:10]!r}", Frame(codec, frame.params, frame.tensors, frame.body).to_bytes()
    head = payload[: -4 - 8 - len(frame.body)]
    for length in (0, 1, len(frame.body) + 1, 1 << 31, U64 >> 32, 1 << 63, U64):
        yield f"body length {length}", _raw(head + struct.pack("<Q", length) + frame.body)


def _raw(head: bytes) -> bytes:
    """A container whose fields are left exactly as given (a lying body length), behind a valid CRC."""
    return head + struct.pack("<I", zlib.crc32(head))


# ----------------------------------------------------------------------------- uplink codecs


UPLINK_VARIANTS = {
    "identity": ("identity", {}),
    "topk": ("topk", {"density": 0.01}),
    "randomk": ("randomk", {"density": 0.01, "values": "fp16"}),
    "rtopk": ("rtopk", {"density": 0.01, "values": "bf16"}),
    "dgc": ("dgc", {"density": 0.01}),
    "dgc-global": ("dgc", {"density": 0.01, "allocation": "global"}),
    "stc": ("stc", {"density": 0.01}),
    "topk-global-int8": ("topk", {"density": 0.01, "allocation": "global", "values": "int8"}),
    "surp": ("surp", {"density": 0.01}),  # staged
    "surp-staged-budget": ("surp", {"density": 0.05, "stage_ratio": 1.25, "max_bytes": 2000}),
    "surp-iter-layer": ("surp", {"density": 0.01, "mode": "iterative", "normalization": "layer"}),
    "surp-alg1-layer": ("surp", {"density": 0.01, "mode": "iterative", "algorithm": 1, "normalization": "layer"}),
    "surp-iter": ("surp", {"density": 0.01, "mode": "iterative"}),
    "surp-alg1": ("surp", {"density": 0.01, "mode": "iterative", "algorithm": 1}),
    "qsgd": ("qsgd", {"levels": 4, "bucket_size": 128}),
    "terngrad": ("terngrad", {}),
    "signsgd": ("signsgd", {}),
    "ef_signsgd": ("ef_signsgd", {}),
    "powersgd": ("powersgd", {"rank": 2}),
    "eden": ("eden", {"bits": 3}),
    "drive": ("drive", {}),
    "nf4": ("nf4", {}),
    "blockwise8": ("blockwise8", {"blocksize": 256}),
    "quantized_ec": ("quantized_ec", {"bits": 2.0}),
}


def mlp_update(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return OrderedDict(
        (k, torch.from_numpy(rng.laplace(size=tuple(v.shape)).astype(np.float32)))
        for k, v in MLP.build().state_dict().items()
        if v.is_floating_point()
    )


def test_every_registered_codec_is_in_the_suite(broadcasts):
    """The suites' codecs are the registries' (a codec registered later joins them or fails this)."""
    assert {name for name, _ in UPLINK_VARIANTS.values()} == set(UPDATE_COMPRESSORS)
    # What the broadcast suite decodes, by the decoders' own names (lc appears as several variants).
    assert {client.name for client, _, _ in broadcasts.values()} == set(MODEL_COMPRESSORS)


def float_bytes(values: Iterable[float], fmt: str) -> bytes:
    """The values in a wire value format (out-of-range values round to ±inf, as a forger may want)."""
    t = torch.tensor(list(values), dtype=torch.float64)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[fmt]
    return t.to(dtype).view(torch.uint8).numpy().tobytes()


VALUE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def coded_values(values: list[float], fmt: str, scale: float = 1.0) -> bytes:
    """The sparse format's value bytes: floats, or one fp32 scale then int8 steps / sign bits."""
    if fmt in VALUE_DTYPES:
        return float_bytes(values, fmt)
    if fmt == "int8":
        return f32(scale) + bytes(int(round(v)) & 0xFF for v in values)
    return f32(scale) + np.packbits(np.array(values) < 0).tobytes()


def f32(value: float) -> bytes:
    return float_bytes([value], "fp32")


HOSTILE_FLOATS = (math.nan, math.inf, -math.inf, 1e34, -1e34, 3.4e38, 65504.0, 5e-324, 1e308, -0.0)


def identity_cases(payload: bytes, specs: list[TensorSpec]) -> Iterator[tuple[str, bytes]]:
    frame = Frame.parse(payload)
    need = len(frame.body)
    for length in (0, 1, need - 1, need + 1, 2 * need):
        yield f"body of {length} bytes", frame.with_body(frame.body[:length].ljust(length, b"\x00")).to_bytes()
    for value in HOSTILE_FLOATS:
        body = bytearray(frame.body)
        body[4:8] = f32(value)
        yield f"value {value!r}", frame.with_body(bytes(body)).to_bytes()
        yield f"all values {value!r}", frame.with_body(f32(value) * (need // 4)).to_bytes()


def sparse_body(sets: list[tuple[int, list[int] | None]], numels: list[int], values: bytes) -> bytes:
    """The shared sparse layout: per tensor Elias-δ(k + 1) and Golomb gaps (when given), then the values."""
    w = BitWriter()
    for (k, gaps), n in zip(sets, numels, strict=True):
        elias_delta_encode([min(k + 1, U64)], w)
        if gaps:
            try:
                golomb_encode(np.array(gaps, np.int64), index_golomb_parameter(min(k, n), n), w)
            except ValueError:  # a quotient the encoder refuses: random bits instead
                w.write_bits(np.ones(64, np.uint8))
    return w.getvalue() + values


def sparse_cases(payload: bytes, specs: list[TensorSpec], fmt: str) -> Iterator[tuple[str, bytes]]:
    frame = Frame.parse(payload)
    numels = [s.numel for s in specs]
    width = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "sign": 1}[fmt]
    one = [(1, [0]) for _ in specs]
    values = coded_values([1.0] * len(specs), fmt)
    yield "one index per tensor (valid)", frame.with_body(sparse_body(one, numels, values)).to_bytes()
    for k in (0, 1, 2, numels[0] - 1, numels[0], numels[0] + 1, 1 << 31, U64 >> 32, 1 << 63, U64 - 1):
        sets = [(k, None), *one[1:]]
        for vals in (b"", values, b"\x00" * width * min(k, 4096)):
            yield f"k = {k}", frame.with_body(sparse_body(sets, numels, vals)).to_bytes()
    for gap in (0, 1, numels[0] - 2, numels[0] - 1, numels[0], numels[0] + 1, 1 << 31):
        sets = [(1, [gap]), *one[1:]]
        yield f"gap {gap}", frame.with_body(sparse_body(sets, numels, values)).to_bytes()
    for k in (2, 3):
        sets = [(k, [0] * k), *one[1:]]
        yield (
            f"{k} indices at 0",
            frame.with_body(sparse_body(sets, numels, coded_values([1.0] * (len(specs) + k - 1), fmt))).to_bytes(),
        )
    for value in HOSTILE_FLOATS:
        if fmt in VALUE_DTYPES:
            vals = float_bytes([value, *[1.0] * (len(specs) - 1)], fmt)
        else:  # the one scale carries the hostile float
            vals = coded_values([1.0] * len(specs), fmt, scale=value)
        body = sparse_body(one, numels, vals)
        yield f"value {value!r}", frame.with_body(body).to_bytes()
    for bad in ("fp64", "", "FP32", None, ["fp32"], 32):
        yield f"values {bad!r}", frame.with_params({"values": bad}).to_bytes()


def surp_body(
    head: tuple[int, float, float],
    norms: Iterable[float],
    symbols: np.ndarray,
    steps: Iterable[int],
    signs: np.ndarray,
    count: int | None = None,
    m: int | None = None,
) -> bytes:
    """A SuRP body from its fields, any of which may lie (count and M independent of the symbols)."""
    seed, logf, lam0 = head
    symbols = np.asarray(symbols, np.int64)
    w = BitWriter()
    elias_delta_encode([min((symbols.size if count is None else count) + 1, U64)], w)
    if m is None:
        m = golomb_parameter_for(symbols) if symbols.size else 1
    elias_delta_encode([m], w)
    try:
        golomb_encode(symbols, m, w)
    except ValueError:  # M beyond 2^40 or a quotient beyond 2^24: bits the decoder must refuse
        w.write_bits(np.random.default_rng(0).integers(0, 2, 256).astype(np.uint8))
    steps = list(steps)
    if steps:
        elias_gamma_encode(steps, w)
    w.write_bits(np.asarray(signs, np.uint8))
    return struct.pack("<Idd", seed, logf, lam0) + np.asarray(list(norms), "<f4").tobytes() + w.getvalue()


def surp_cases(payload: bytes, specs: list[TensorSpec], params: dict) -> Iterator[tuple[str, bytes]]:
    """Every field of a real SuRP stream pushed to its extremes, one at a time and in random combinations."""
    frame = Frame.parse(payload)
    sides = 2 if params.get("algorithm") == 1 else 1
    n_norms = 1 if params.get("norm") == "global" else len(specs)
    n = sum(s.numel for s in specs)
    stream, reader = read_stream(frame.body, n_norms, n, sides)
    _, firsts = accumulate(stream, n)
    signs = reader.read_bits(firsts.size) if sides == 1 else np.zeros(0, np.uint8)
    head = (stream.seed, stream.logf, stream.lam0)
    base = dict(head=head, norms=list(stream.norms), symbols=stream.symbols, steps=list(stream.steps), signs=signs)
    assert surp_body(**base) == frame.body  # the builder writes exactly what the encoder wrote

    def case(label: str, **change) -> tuple[str, bytes]:
        return label, frame.with_body(surp_body(**{**base, **change})).to_bytes()

    limit = max_refresh_steps(n, stream.logf, sides)
    most = max_picks(n, sides)
    extremes: dict[str, list] = {
        "head": [
            (seed, logf, lam0)
            for seed in (0, U64 >> 32)
            for logf in (0.0, 5e-324, stream.logf, n / sides * (1 - 1e-12), n / sides, -1.0, math.nan, math.inf)
            for lam0 in (0.0, 5e-324, 1e-300, stream.lam0, 1e308, math.nan, math.inf, -1.0)
        ],
        "norms": [[v] * n_norms for v in (0.0, 1e-45, 1.0, 1e34, 3.4e38, math.nan, math.inf, -1.0)],
        "count": [
            0,
            1,
            2,
            max(0, stream.symbols.size - 1),
            stream.symbols.size + 1,
            n,
            n + 1,
            most,
            1 << 31,
            U64 >> 32,
            1 << 63,
            U64 - 1,
        ],
        "m": [1, 2, n, 2 * n + 2, 2 * n + 3, 1 << 40, (1 << 40) + 1, 1 << 63, U64],
        "steps": [[s] for s in (1, 2, n, limit, limit + 1, 1 << 62, 1 << 63, U64)],
        "signs": [signs[:-1], np.concatenate([signs, [1]]), np.concatenate([signs, np.zeros(8, np.uint8)])],
        "symbols": [
            np.array([0, 1], np.int64),
            np.array([0, 0, 1], np.int64),
            np.array([1, 0], np.int64),
            np.array([n], np.int64),
            np.array([n + 1], np.int64),
            np.array([1 << 31], np.int64),
            np.array([1, 1, 1], np.int64),
            np.zeros(1000, np.int64),
        ],
    }
    for key, options in extremes.items():
        for option in options:
            if key in ("count", "m"):
                yield case(f"{key} = {option}", **{key: option})
            else:
                yield case(f"{key} = {str(option)[:40]}", **{key: option})
    for value in (1 << 63, U64, limit + 1):  # the regression: a refresh of 2^63 steps hung the process
        yield case(
            f"refresh of {value} steps",
            symbols=np.array([0, 1], np.int64),
            steps=[value],
            signs=np.zeros(int(sides == 1), np.uint8),
        )
    # Payloads as long as the limits allow, of picks and of refreshes.
    picks = np.ones(most, np.int64)
    many_signs = np.zeros(min(most, n), np.uint8) if sides == 1 else np.zeros(0, np.uint8)
    yield case("the most picks allowed", symbols=picks, steps=[], signs=many_signs)
    yield case("one pick too many", symbols=np.ones(most + sides, np.int64), steps=[], signs=many_signs)
    iterations = 100_000  # a refresh before each: the most refreshes allowed for them (plus one)
    alternating = np.tile(np.array([0, *[1] * sides], np.int64), iterations)
    signs = np.zeros(min(iterations, n), np.uint8) if sides == 1 else np.zeros(0, np.uint8)
    steps = np.ones(iterations, np.int64)
    yield case("a refresh before every iteration", symbols=alternating, steps=steps, signs=signs)
    yield case(
        "two refreshes before the first", symbols=np.concatenate([[0], alternating]), steps=[1, *steps], signs=signs
    )
    # Random combinations of the extremes.
    rng = np.random.default_rng(len(specs) + sides)
    for i in range(120):
        change = {k: v[int(rng.integers(len(v)))] for k, v in extremes.items() if rng.random() < 0.4}
        yield case(f"combination #{i}", **change)
    for raw in ({"algorithm": 3}, {"algorithm": True}, {"algorithm": "1"}, {"norm": "x"}, {"extra": 1},
                {"algorithm": 1, "norm": "global"}, {"algorithm": 2}, {}):  # fmt: skip
        yield f"params {raw}", frame.with_params(raw).to_bytes()


def staged_body(tau_last: float, ratio: float, count: int, stages: list) -> bytes:
    """A staged SuRP body; ``count`` may lie about the stages; each stage (refined, size, new, n, signs)."""
    w = BitWriter()
    elias_delta_encode([min(count + 1, U64)], w)
    for refined, size, new, n, signs in stages:
        for values, space in ((refined, size), (new, n)):
            values = np.asarray(values, np.int64)
            elias_delta_encode([min(values.size + 1, U64)], w)
            if 0 < values.size < space:
                gaps = np.diff(values, prepend=-1) - 1
                try:
                    golomb_encode(np.maximum(gaps, 0), index_golomb_parameter(values.size, space), w)
                except ValueError:
                    w.write_bits(np.ones(64, np.uint8))
        w.write_bits(np.asarray(signs, np.uint8))
    return struct.pack("<ff", tau_last, ratio) + w.getvalue()


def staged_cases(payload: bytes, specs: list[TensorSpec]) -> Iterator[tuple[str, bytes]]:
    """The staged stream's header, stage count, index sets and signs at their extremes."""
    from fedcomp.compressors.update.surp_staged import MAX_STAGES

    frame = Frame.parse(payload)
    n = sum(s.numel for s in specs)
    head = frame.body[:8]
    tau_last, ratio = struct.unpack("<ff", head)
    for t in (0.0, -1.0, 1e-45, 3.4e38, math.nan, math.inf, -math.inf):
        for q in (ratio, 1.0, 1.24, 16.0, 16.5, math.nan, math.inf, -2.0):
            data = struct.pack("<ff", t, q) + frame.body[8:]
            yield f"τ_S {t!r}, q {q!r}", frame.with_body(data).to_bytes()
    for length in (0, 1, 7, 8, 9, len(frame.body) - 1):
        yield f"body of {length} bytes", frame.with_body(frame.body[:length]).to_bytes()
    one = [([], 0, [0], n, [0])]
    for count in (0, 1, 2, MAX_STAGES, MAX_STAGES + 1, 1 << 31, 1 << 63, U64 - 1):
        yield f"{count} stages declared", frame.with_body(staged_body(1.0, 2.0, count, one)).to_bytes()
    yield (
        "MAX_STAGES empty stages",
        frame.with_body(staged_body(1e-30, 1.25, MAX_STAGES, [([], 0, [], n, [])] * MAX_STAGES)).to_bytes(),
    )
    for new in ([n - 1], [n], [n + 1], [1 << 31], list(range(0, n, 2)), list(range(n))):
        signs = [1] * min(len(new), n)
        yield (
            f"new set of {len(new)} up to {new[-1]}",
            frame.with_body(staged_body(1.0, 2.0, 1, [([], 0, new, n, signs)])).to_bytes(),
        )
    for refined, size in (([0], 1), ([1], 1), ([0, 0], 2), ([5], 3), ([0], 0)):
        stages = [([], 0, [0, 1, 2], n, [0, 0, 0]), (refined, size, [], n, [])]
        yield f"refine {refined} of {size}", frame.with_body(staged_body(1.0, 2.0, 2, stages)).to_bytes()
    repeat = [([], 0, [4], n, [0]), ([], 1, [4], n, [0])]
    yield "a coordinate sent twice", frame.with_body(staged_body(1.0, 2.0, 2, repeat)).to_bytes()
    yield "signs missing", frame.with_body(staged_body(1.0, 2.0, 1, [([], 0, [0, 1], n, [0])])).to_bytes()
    yield "a sign too many", frame.with_body(staged_body(1.0, 2.0, 1, [([], 0, [0], n, [0, 1])])).to_bytes()
    refine_all = [([], 0, list(range(n)), n, [0] * n)] + [(list(range(n)), n, [], n, [])] * 60
    yield "every coordinate refined 60 times", frame.with_body(staged_body(1e-20, 2.0, 61, refine_all)).to_bytes()
    for raw in ({"mode": "staged"}, {"mode": None}, {"norm": "global"}, {"algorithm": 2}, {"mode": "iterative"}):
        yield f"params {raw}", frame.with_params(raw).to_bytes()


def quantizer_cases(payload: bytes, specs: list[TensorSpec], name: str) -> Iterator[tuple[str, bytes]]:
    """QSGD, TernGrad, (EF-)signSGD, PowerSGD: floats first (scales, norms, factors), then their codes."""
    frame = Frame.parse(payload)
    params, need, n = frame.params_dict, len(frame.body), sum(s.numel for s in specs)
    for length in (0, 1, need - 1, need + 1, 2 * need):
        yield f"body of {length} bytes", frame.with_body(frame.body[:length].ljust(length, b"\x00")).to_bytes()
    yield "every bit set", frame.with_body(b"\xff" * need).to_bytes()
    for at in sorted({0, FLOAT_AT[name](specs, params)}):
        for value in HOSTILE_FLOATS:
            body = bytearray(frame.body)
            body[at : at + 4] = f32(value)
            yield f"float at byte {at} = {value!r}", frame.with_body(bytes(body)).to_bytes()
    if name not in ("qsgd", "terngrad"):
        return
    head = 4 * (int(bucket_ids(specs, params["bucket_size"]).max()) + 1 if name == "qsgd" else len(specs))
    for k in (1, 2, n - 1, n, n + 1, 1 << 31, 1 << 63, U64 - 1):  # counts, with too little or no data after
        w = BitWriter()
        elias_delta_encode([min(k + 1, U64)], w)
        if name == "qsgd" and k == 2:  # two gaps whose sum wraps int64, then levels above s
            elias_gamma_encode(np.array([U64 - 1, 3], dtype=np.uint64), w)
            w.write_bits(np.zeros(2, np.uint8))
            elias_gamma_encode([1 << 40, 1], w)
        yield f"count {k}", frame.with_body(frame.body[:head] + w.getvalue()).to_bytes()


def uplink_cases(label: str, comp: UpdateCompressor, payload: bytes, specs: list[TensorSpec]):
    rng = np.random.default_rng(sum(map(ord, label)))
    name = comp.name
    keys = {"identity": [], "surp": ["mode", "algorithm", "norm"], "qsgd": ["levels", "bucket_size"]}
    keys.update(dict.fromkeys(("terngrad", "signsgd", "ef_signsgd"), []), powersgd=["rank"])
    keys.update(eden=["bits", "chunk_size"], drive=["bits", "chunk_size"], quantized_ec=["coder"])
    keys.update(nf4=["blocksize", "code"], blockwise8=["blocksize", "code"])
    yield from container_cases(payload, specs, keys.get(name, ["values"]))
    if name == "identity":
        yield from identity_cases(payload, specs)
    elif name in FLOAT_AT:
        yield from quantizer_cases(payload, specs, name)
    elif name == "surp" and "mode" not in Frame.parse(payload).params_dict:
        yield from staged_cases(payload, specs)
    elif name == "surp":
        yield from surp_cases(payload, specs, Frame.parse(payload).params_dict)
    else:
        yield from sparse_cases(payload, specs, Frame.parse(payload).params_dict["values"])
    yield from random_damage(payload, rng, UPLINK_RANDOM, label)


def test_uplink_codecs_survive_hostile_payloads(record_property):
    update = mlp_update()
    specs = specs_of(update)
    model_bytes = sum(s.nbytes for s in specs)
    rss = PeakRSS()
    tallies = {}
    for label, (name, params) in UPLINK_VARIANTS.items():
        comp = update_compressor(name, seed=5, **params)
        payload = comp.encode(update, {}, EncodeContext(1, 0, 4)).payload
        comp.decode(payload, DecodeLimits.for_specs(specs))  # compiles the kernels outside the timing

        def decode(data: bytes, bound: float, comp=comp) -> Iterable[tuple[str, torch.Tensor]]:
            return comp.decode(data, DecodeLimits.for_specs(specs, max_abs=bound)).items()

        tallies[label] = run_cases(decode, uplink_cases(label, comp, payload, specs), model_bytes, rss)
    text = report(tallies, record_property, "uplink")
    failures = [f"{name}: {f}" for name, t in tallies.items() for f in t.failures]
    assert not failures, "\n".join(failures[:40]) + "\n" + text
    assert sum(t.decodes for t in tallies.values()) >= 7000, text
    assert all(t.errors > 0 for t in tallies.values()), text


# ----------------------------------------------------------------------------- broadcast kinds


def _lc(variant: str, groups: list[GroupParams]) -> LCCompressor:
    return LCCompressor(LCParams(variant=variant, groups=groups, mu0=0.01, mu_growth=2.0), MLP)


LC_GROUPS = [
    GroupParams(["1.weight"], [FormParams("quantize", k=4)]),
    GroupParams(["3.weight"], [FormParams("lowrank", rank=4), FormParams("prune", keep=0.01)]),
    GroupParams(["5.weight"], [FormParams("ternarize")]),
]
LC_GROUPS_2 = [
    GroupParams(["1.weight"], [FormParams("binarize")]),
    GroupParams(["3.weight"], [FormParams("rank_selection", rank=8, alpha=1e-6)]),
    GroupParams(["5.weight"], [FormParams("quantize", k=3, exact=True)]),
]


def _lc_payload(variant: str, groups: list[GroupParams], state) -> tuple[bytes, ModelCompressor]:
    server = _lc(variant, groups)
    server.broadcast(1, state, ())
    server.end_of_round(1, state, (), last=False)  # a C step (and λ ≠ 0 for the augmented Lagrangian)
    return server.broadcast(2, state, ()).payload, _lc(variant, groups)


def _broadcasts() -> dict[str, tuple[ModelCompressor, bytes, ModelCompressor | None]]:
    """Each kind: (client decoder, a real broadcast payload, the server that made it)."""
    torch.manual_seed(0)
    mlp = OrderedDict(MLP.build().state_dict())
    resnet = OrderedDict(RESNET.build().state_dict())
    out: dict[str, tuple] = {}
    ident = IdentityModelCompressor(None, MLP)
    out["identity"] = (ident, ident.broadcast(1, mlp, ()).payload, ident)
    for variant in ("augmented_lagrangian", "quadratic_penalty", "compressed_start"):
        payload, client = _lc_payload(variant, LC_GROUPS, mlp)
        out[f"lc-{variant}"] = (client, payload, _lc(variant, LC_GROUPS))
    payload, client = _lc_payload("quadratic_penalty", LC_GROUPS_2, mlp)
    out["lc-qp-other-forms"] = (client, payload, _lc("quadratic_penalty", LC_GROUPS_2))
    reference = _lc("augmented_lagrangian", LC_GROUPS)
    out["lc-reference"] = (_lc("augmented_lagrangian", LC_GROUPS), reference._payload("reference", mlp), reference)
    alds = ALDSCompressor(ALDSParams(seeds=1), MLP)
    out["alds"] = (ALDSCompressor(ALDSParams(seeds=1), MLP), alds.broadcast(1, mlp, ()).payload, alds)
    udfc = UDFCCompressor(UDFCParams(prune=0.3, bits=5), RESNET)
    out["udfc"] = (UDFCCompressor(UDFCParams(prune=0.3, bits=5), RESNET), udfc.broadcast(1, resnet, ()).payload, udfc)
    bwcp = BWCPCompressor(BWCPParams(prune_at=[1]), RESNET)
    out["bwcp"] = (BWCPCompressor(BWCPParams(prune_at=[1]), RESNET), bwcp.broadcast(1, resnet, ()).payload, bwcp)
    return out


def structure_cases(frame: Frame) -> Iterator[tuple[str, bytes]]:
    params = frame.params_dict
    edits = [
        [["resize", "1", [(1 << 31) - 1, 4]]],
        [["resize", "1", [0, 4]]],
        [["resize", "1", [200]]],
        [["alds", "1", [1, 1, 0]]],
        [["alds", "3", [8, 10, 1]]],
        [["alds", "3", [3, 10, 0]]],
        [["nope", "1", []]],
        [["resize", "nowhere", [2, 2]]],
        [["resize", "1", [2, 2]], ["resize", "1", [2, 2]]],
        [["conv_out", "conv1", [1 << 16]]],
        [["conv_out", "conv1", [(1 << 16) + 1]]],
        [["bwcp", "bn1", [0, 1, 1, 10]]],
        [["bwcp", "bn1", [256, 12, 1000, 1000]]],
        [["bwcp_shared", "bn1", [4, 5, 100, 20, 4097, 1]]],
        [["channel_map", "layer2.0.shortcut", [17, 16, 1]]],
        [["channel_map", "layer2.0.shortcut", [2, 16, *[17] * 32]]],
        [["shared_mask", "layer1", [1]]],
        [["resize", "1", [2, 2]]] * 300,
        "not a list",
        [["resize", "1", [1.5, 2]]],
        [["resize", "1", [-1, 2]]],
    ]
    for edit in edits:
        yield f"structure {str(edit)[:50]}", frame.with_params({**params, "structure": edit}).to_bytes()
    yield (
        "structure with a 5000-digit arg",
        frame.with_params(
            json.dumps(params)[:-1] + ("," if params else "") + '"structure":[["resize","1",[' + BIG_INT + ",2]]]}"
        ).to_bytes(),
    )


def dense_value_cases(frame: Frame, offsets: Iterable[int]) -> Iterator[tuple[str, bytes]]:
    for off in offsets:
        for value in HOSTILE_FLOATS:
            body = bytearray(frame.body)
            body[off : off + 4] = f32(value)
            yield f"fp32 {value!r} at byte {off}", frame.with_body(bytes(body)).to_bytes()


def lc_cases(frame: Frame, server: LCCompressor, specs: list[TensorSpec]) -> Iterator[tuple[str, bytes]]:
    """LC's phase and μ, and the u32-sized Θ sections of its body, at their extremes."""
    params = frame.params_dict
    for phase in (0, 1, 2, 3, 4, -1, True, 1.0, None, "1", 1 << 40):
        yield f"phase {phase!r}", frame.with_params({**params, "phase": phase}).to_bytes()
    for mu in (0, 1, -1, 1e308, None, "x", 10**400, 5e-324):
        yield f"mu {str(mu)[:12]}", frame.with_params({**params, "mu": mu}).to_bytes()
    for raw in ("NaN", "Infinity", BIG_INT):
        yield f"mu {raw[:12]}", frame.with_params(json.dumps(params)[:-1] + f',"mu":{raw}}}').to_bytes()
    phase = params["phase"]
    dense = [s for s in specs if phase != 3 or s.name not in server.forms]
    pos = sum(s.nbytes for s in dense)
    if phase in (2, 3):  # Θ sections: u32 length + bits, one per compressed tensor
        sections = []
        body = frame.body
        while pos + 4 <= len(body):
            (size,) = struct.unpack_from("<I", body, pos)
            sections.append((pos, size))
            pos += 4 + size
        for at, size in sections:
            for length in (0, 1, size - 1, size + 1, 1 << 31, U64 >> 32):
                data = bytearray(body)
                data[at : at + 4] = struct.pack("<I", length)
                yield f"Θ section at {at}: length {length}", frame.with_body(bytes(data)).to_bytes()
            for value in HOSTILE_FLOATS:  # the first float of a θ: codebook entry, scale or factor
                data = bytearray(body)
                data[at + 4 : at + 8] = f32(value)
                yield f"Θ at {at}: first float {value!r}", frame.with_body(bytes(data)).to_bytes()
            for fill in (0x00, 0xFF):
                data = bytearray(body)
                data[at + 4 : at + 4 + size] = bytes([fill]) * size
                yield f"Θ at {at} all {fill:#x}", frame.with_body(bytes(data)).to_bytes()
    yield from dense_value_cases(frame, (0, 4 * 200, len(frame.body) - 4))


def udfc_cases(frame: Frame, specs: list[TensorSpec]) -> Iterator[tuple[str, bytes]]:
    params = frame.params_dict
    for bits in (0, 1, 2, 16, 17, -1, True, "5", None, 1 << 40):
        yield f"bits {bits!r}", frame.with_params({**params, "bits": bits}).to_bytes()
    yield "bits 5000 digits", frame.with_params(json.dumps(params)[:-1] + f',"bits":{BIG_INT}}}').to_bytes()
    pos = 0
    quantized = []
    for s in specs:  # dense tensors, then per quantized weight: rows × fp32 scale + 5-bit codes
        if s.name.endswith(".weight") and s.dtype.is_floating_point and len(s.shape) >= 2:
            quantized.append(pos)
            pos += 4 * s.shape[0] + math.ceil(s.numel * params["bits"] / 8)
        else:
            pos += s.nbytes
    for at in quantized[:3]:
        for value in HOSTILE_FLOATS:
            data = bytearray(frame.body)
            data[at : at + 4] = f32(value)
            yield f"scale {value!r} at {at}", frame.with_body(bytes(data)).to_bytes()
    yield from dense_value_cases(frame, (len(frame.body) - 4,))


def broadcast_cases(label: str, frame: Frame, client: ModelCompressor, server, specs: list[TensorSpec]):
    rng = np.random.default_rng(sum(map(ord, label)))
    payload = frame.to_bytes()
    keys = {"identity": [], "lc": ["phase", "mu"], "udfc": ["bits"], "bwcp": ["regularize"]}.get(client.name, [])
    yield from container_cases(payload, specs, [*keys, "structure"])
    yield from structure_cases(frame)
    if client.name == "lc":
        yield from lc_cases(frame, server, specs)
    elif client.name == "udfc":
        yield from udfc_cases(frame, specs)
    else:
        yield from dense_value_cases(frame, (0, len(frame.body) // 2 & ~3, len(frame.body) - 4))
    if client.name == "bwcp":
        for reg in (0, 1, 2, True, "1", None):
            yield f"regularize {reg!r}", frame.with_params({**frame.params_dict, "regularize": reg}).to_bytes()
    yield from random_damage(payload, rng, BROADCAST_RANDOM, label)


def _received_tensors(received: Received) -> Iterator[tuple[str, torch.Tensor]]:
    yield from received.state.items()
    centre = getattr(received.loss_term, "centre", None)
    if centre:
        yield from ((f"{k} (centre)", v) for k, v in centre.items())


def test_broadcast_kinds_survive_hostile_payloads(record_property, broadcasts):
    rss = PeakRSS()
    tallies = {}
    for label, (client, payload, server) in broadcasts.items():
        received = client.decode(payload)  # a real broadcast decodes; also warms the caches
        specs = specs_of(received.state)
        model_bytes = sum(s.nbytes for s in client.arch.specs(()))

        def decode(data: bytes, bound: float, client=client) -> Iterable[tuple[str, torch.Tensor]]:
            return _received_tensors(client.decode(data, max_abs=bound))

        cases = broadcast_cases(label, Frame.parse(payload), client, server, specs)
        tallies[label] = run_cases(decode, cases, model_bytes, rss)
    text = report(tallies, record_property, "broadcast")
    failures = [f"{name}: {f}" for name, t in tallies.items() for f in t.failures]
    assert not failures, "\n".join(failures[:40]) + "\n" + text
    assert sum(t.decodes for t in tallies.values()) >= 3000, text
    assert all(t.errors > 0 for t in tallies.values()), text


# ----------------------------------------------------------------------------- body damage behind a valid CRC


BODY_DAMAGE = ("flip_body", "overwrite_body", "cut_body", "insert_body")
BODY_FUZZ = 40  # damaged bodies per decoder, the kinds in turn
# One decoder per registered update codec (the suite's variant of its name, else its defaults), and SuRP's iterative
# stream, a parser of its own.
BODY_UPLINK = [*sorted(UPDATE_COMPRESSORS), "surp-iter"]


class BodyProbe:
    """Where a decode stopped: wraps the codec's own body decoder (``owner.attr``) to see it entered and returned."""

    def __init__(self, monkeypatch, owner: object, attr: str) -> None:
        real = getattr(owner, attr)
        self.entered = self.returned = False

        def probed(*args, **kwargs):
            self.entered = True
            out = real(*args, **kwargs)
            self.returned = True
            return out

        monkeypatch.setattr(owner, attr, probed)

    def stage(self, exc: DecodeError) -> str:
        if not self.entered:
            return f"container: {type(exc).__name__}"
        if self.returned:
            return "output check"
        if exc.__cause__ is not None and not isinstance(exc.__cause__, DecodeError):
            return "codec: crashed"  # a ValueError, IndexError, ... the base class turned into a DecodeError
        return "codec: refused"


STAGES = ("codec: refused", "codec: crashed", "output check", "accepted")


def body_fuzz(label: str, decode: Decode, payload: bytes, probe: BodyProbe, model_bytes: int, rss: PeakRSS):
    """BODY_FUZZ damaged bodies of ``payload``, each reframed with a valid CRC: the tally and where each stopped."""
    rng = np.random.default_rng(sum(map(ord, label)))
    stages: dict[str, int] = {}

    def staged(data: bytes, bound: float) -> list[tuple[str, torch.Tensor]]:
        probe.entered = probe.returned = False
        try:
            out = list(decode(data, bound))
        except DecodeError as exc:
            where = probe.stage(exc)
            stages[where] = stages.get(where, 0) + 1
            raise
        stages["accepted"] = stages.get("accepted", 0) + 1
        return out

    kinds = [BODY_DAMAGE[i % len(BODY_DAMAGE)] for i in range(BODY_FUZZ)]
    cases = ((f"#{i} ({kind})", damage(payload, rng, kind)[1]) for i, kind in enumerate(kinds))
    return run_cases(staged, cases, model_bytes, rss), stages


def _body_decoders(group: str, monkeypatch, request) -> Iterator[tuple[str, Decode, bytes, BodyProbe, int]]:
    """(label, decode, a real payload, the probe on its body decoder, the model's bytes) for every decoder of ``group``."""
    if group == "uplink":
        update = mlp_update()
        specs = specs_of(update)
        for label in BODY_UPLINK:
            name, params = UPLINK_VARIANTS.get(label, (label, {}))
            comp = update_compressor(name, seed=5, **params)
            payload = comp.encode(update, {}, EncodeContext(1, 0, 4)).payload
            comp.decode(payload, DecodeLimits.for_specs(specs))  # a real payload decodes (and compiles the kernels)

            def decode(data: bytes, bound: float, comp=comp) -> Iterable[tuple[str, torch.Tensor]]:
                return comp.decode(data, DecodeLimits.for_specs(specs, max_abs=bound)).items()

            yield label, decode, payload, BodyProbe(monkeypatch, comp, "decode_body"), sum(s.nbytes for s in specs)
    elif group == "broadcast":
        for label, (client, payload, _) in request.getfixturevalue("broadcasts").items():
            client.decode(payload)

            def decode(data: bytes, bound: float, client=client) -> Iterable[tuple[str, torch.Tensor]]:
                return _received_tensors(client.decode(data, max_abs=bound))

            model_bytes = sum(s.nbytes for s in client.arch.specs(()))
            yield label, decode, payload, BodyProbe(monkeypatch, client, "decode_body"), model_bytes
    else:  # a client's statistics report, as BWCP's server decodes it (fedcomp.flower.recalibration)
        from fedcomp.compressors.model import statistics as stats_codec

        with torch.random.fork_rng(devices=[]):  # the test's own random draws, the process's left as they were
            torch.manual_seed(0)
            model = RESNET.build(BWCPCompressor(BWCPParams(), RESNET).bwcp_edits)
            moments, _ = stats_codec.measure(model, [torch.randn(8, *RESNET.input_shape)])
        specs = stats_codec.statistics_specs(model)
        payload = stats_codec.encode(moments)
        stats_codec.decode(payload, specs, MAX_ABS)

        def decode(data: bytes, bound: float) -> Iterable[tuple[str, torch.Tensor]]:
            return stats_codec.decode(data, specs, bound).items()

        probe = BodyProbe(monkeypatch, stats_codec, "read_whole")  # the dense reader is the report's parser
        yield "statistics", decode, payload, probe, sum(s.nbytes for s in specs)


@pytest.mark.parametrize("group", ["uplink", "broadcast", "statistics"])
def test_damaged_bodies_behind_a_valid_crc_reach_every_parser(group, monkeypatch, request, record_property):
    """Every decoder's own parser meets the damage: bodies flipped, overwritten, cut and grown, then framed again
    with a valid CRC, so none is stopped by the checksum. Each must reach the codec, be refused only with a
    DecodeError within the time and memory bounds, and the parser must refuse some itself (a decoder that crashes
    on every damaged body, or returns what only the output check refuses, fails here). The counts are printed."""
    rss = PeakRSS()
    header = f"{'decoder':<26}{'damaged':>8}{'reached':>8}" + "".join(f"{s:>16}" for s in STAGES) + f"{'max ms':>9}"
    lines, problems = [f"{group}: damaged bodies behind a valid CRC, where each was refused", header], []
    for label, decode, payload, probe, model_bytes in _body_decoders(group, monkeypatch, request):
        tally, stages = body_fuzz(label, decode, payload, probe, model_bytes, rss)
        stopped_early = {k: v for k, v in stages.items() if k.startswith("container")}
        reached = tally.decodes - sum(stopped_early.values())
        lines.append(f"{label:<26}{tally.decodes:>8}{reached:>8}" + "".join(f"{stages.get(s, 0):>16}" for s in STAGES)
                     + f"{tally.slowest * 1e3:>9.1f}")  # fmt: skip
        record_property(f"body/{label}", {"damaged": tally.decodes, "reached": reached, **stages})
        problems += [f"{label}: {f}" for f in tally.failures]
        if stopped_early:
            problems.append(f"{label}: stopped before the codec: {stopped_early}")
        if not stages.get("codec: refused"):
            problems.append(f"{label}: its parser refused none of {tally.decodes} damaged bodies itself ({stages})")
        assert tally.decodes == BODY_FUZZ
    text = "\n".join(lines)
    print("\n" + text)
    assert not problems, "\n".join(problems[:40]) + "\n" + text


# ----------------------------------------------------------------------------- named regressions


LENET = Architecture("lenet5_caffe", (1, 28, 28), 10)


def refresh_2_63_payload() -> bytes:
    """The SuRP payload (LeNet-5 specs; 105 bytes as landed, 123 with the iterative mode named) whose one refresh advances λ by 2^63 steps.

    Elias-γ decodes 2^63, the old decoder cast it to int64 (−2^63) and the
    compiled power-by-squaring looped forever on the negative exponent,
    holding the GIL: the whole server froze.
    """
    specs = specs_of(LENET.build().state_dict())
    n = sum(s.numel for s in specs)
    body = surp_body(
        (1, math.log(n / math.log(n)), 1.0), [1.0] * len(specs), np.array([0, 1]), [1 << 63], np.zeros(1, np.uint8)
    )
    return pack("surp", {"mode": "iterative"}, specs, body, by_digest=True)


def test_the_2_63_step_refresh_is_refused_in_a_subprocess_with_a_timeout():
    payload = refresh_2_63_payload()
    assert len(payload) == 123
    script = (
        "import sys, time\n"
        "from fedcomp.coding import DecodeError, DecodeLimits, specs_of\n"
        "from fedcomp.compressors.model.structure import Architecture\n"
        "from fedcomp.compressors.update.surp import SurpCompressor\n"
        "specs = specs_of(Architecture('lenet5_caffe', (1, 28, 28), 10).build().state_dict())\n"
        "data = bytes.fromhex(sys.stdin.read())\n"
        "from fedcomp.coding import BitReader, elias_delta_decode\n"
        "elias_delta_decode(BitReader(b'\\x80'), 1)  # compiles the scanner (no cache yet) outside the timing\n"
        "t0 = time.perf_counter()\n"
        "try:\n"
        "    SurpCompressor().decode(data, DecodeLimits.for_specs(specs))\n"
        "    print('accepted')\n"
        "except DecodeError as exc:\n"
        "    print(f'DecodeError in {time.perf_counter() - t0:.3f} s: {exc}')\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], input=payload.hex(), capture_output=True, text=True, timeout=180
        )
    except subprocess.TimeoutExpired:
        pytest.fail("decoding the 2^63-step refresh payload hangs")
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("DecodeError") and "refresh of 9223372036854775808 steps" in line, line
    assert float(line.split(" in ")[1].split(" s")[0]) < DECODE_SECONDS, line


def _forge(payload: bytes, body: bytes) -> bytes:
    return Frame.parse(payload).with_body(body).to_bytes()


def _forged_surp(specs: list[TensorSpec], seed: int, sides: int, n_norms: int, norm: float) -> tuple[bytes, str]:
    """A SuRP body with τ = 2 (the largest a pick may have) and every norm ``norm``; and the tensor hit first.

    SuRP checks its inputs (norms finite, τ ≤ 2), so NaN cannot come out;
    but a finite norm of 3.4e38 times τ = 2 overflows float32 to inf, and a
    norm of 1e34 gives 2e34: only the output check can tell.
    """
    n = sum(s.numel for s in specs)
    logf = math.log(n / math.log(n))
    symbols = np.array([1] if sides == 1 else [1, 2], np.int64)  # positions 0 (and 1)
    coords = shared_order(np.arange(sides), n, seed)
    ends = np.cumsum([s.numel for s in specs])
    target = specs[int(np.searchsorted(ends, int(coords.min()), side="right"))].name
    signs = np.zeros(1 if sides == 1 else 0, np.uint8)
    return surp_body((seed, logf, logf / 2.0), [norm] * n_norms, symbols, [], signs), target


def _forged_staged(specs: list[TensorSpec], value: float) -> tuple[bytes, str]:
    """A staged body whose one coordinate (the first of '3.weight') decodes to ``value`` (inf: 3.4e38 + 2.7e38)."""
    n = sum(s.numel for s in specs)
    at = sum(s.numel for s in specs[:2])
    if math.isinf(value):  # τ_1 = 1.25·τ_S ≤ float32's largest, refined once: the sum overflows float32
        stages = [([], 0, [at], n, [0]), ([0], 1, [], n, [])]
        return staged_body(2.7e38, 1.25, 2, stages), specs[2].name
    return staged_body(value, 2.0, 1, [([], 0, [at], n, [0])]), specs[2].name


def _powersgd_first_factor_of_third(specs: list[TensorSpec], params: dict) -> int:
    """Byte offset of '3.weight''s first P̂ value: past the first two tensors' factors or dense values."""
    from fedcomp.compressors.update.powersgd import matrix_shape

    values = 0
    for spec in specs[:2]:
        shape = matrix_shape(spec.shape)
        values += spec.numel if shape is None else sum(shape) * min(params["rank"], *shape)
    return 4 * values


def _qsgd_norm_of_third(specs: list[TensorSpec], params: dict) -> int:
    """Byte offset of the norm of '3.weight''s first bucket."""
    return 4 * int(bucket_ids(specs, params["bucket_size"])[sum(s.numel for s in specs[:2])])


def _eden_scale_inside_third(specs: list[TensorSpec], params: dict) -> int:
    """Byte offset of the scale of the first chunk lying wholly inside '3.weight' (after the u32 rotation seed)."""
    chunk = params.get("chunk_size", 1 << 14)
    start = sum(s.numel for s in specs[:2])
    first = -(-start // chunk)
    assert (first + 1) * chunk <= start + specs[2].numel, "no whole chunk inside '3.weight'"
    return 4 + 4 * first


def _blockwise_absmax_of_third(specs: list[TensorSpec], params: dict) -> int:
    """Byte offset of the absmax of '3.weight''s first block (blocks never straddle tensors)."""
    size = params.get("blocksize", 64)
    return 4 * sum(-(-s.numel // size) for s in specs[:2])


FLOAT_AT = {
    "signsgd": lambda specs, params: 4 * 2,  # the scales lead the body, one per tensor
    "ef_signsgd": lambda specs, params: 4 * 2,
    "terngrad": lambda specs, params: 4 * 2,
    "qsgd": _qsgd_norm_of_third,
    "powersgd": _powersgd_first_factor_of_third,
    "eden": _eden_scale_inside_third,
    "drive": _eden_scale_inside_third,
    "nf4": _blockwise_absmax_of_third,
    "blockwise8": _blockwise_absmax_of_third,
    "quantized_ec": lambda specs, params: 0,  # one step Δ for the whole update leads the body
}


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e34])
@pytest.mark.parametrize("label", sorted(UPLINK_VARIANTS))
def test_a_forged_update_decoding_to_nan_inf_or_huge_is_refused_naming_the_tensor(label, value):
    name, params = UPLINK_VARIANTS[label]
    update = mlp_update(1)
    specs = specs_of(update)
    comp = update_compressor(name, seed=5, **params)
    payload = comp.encode(update, {}, EncodeContext()).payload
    frame = Frame.parse(payload)
    target = specs[2].name  # '3.weight'
    if name == "identity":
        body = bytearray(frame.body)
        at = sum(s.nbytes for s in specs[:2])
        body[at : at + 4] = f32(value)
    elif name == "surp" and params.get("mode") != "iterative":
        body, target = _forged_staged(specs, value)
        if math.isnan(value):  # a NaN threshold is refused as the stream's input, before anything is decoded
            with pytest.raises(DecodeError, match=r"surp staged: last threshold nan must be finite and > 0"):
                comp.decode(_forge(payload, body), DecodeLimits.for_specs(specs, max_abs=MAX_ABS))
            return
    elif name == "surp":
        sides = 2 if params.get("algorithm") == 1 else 1
        n_norms = len(specs) if params.get("normalization") == "layer" else 1
        seed = struct.unpack_from("<I", frame.body)[0]
        body, target = _forged_surp(specs, seed, sides, n_norms, 3.4e38 if math.isinf(value) else value)
        if math.isnan(value):  # NaN norms are refused as the stream's input, before anything is decoded
            with pytest.raises(DecodeError, match=r"surp: layer norms must be finite and >= 0"):
                comp.decode(_forge(payload, body), DecodeLimits.for_specs(specs, max_abs=MAX_ABS))
            return
    elif name == "quantized_ec":  # one step Δ for all: a non-finite one is refused as the stream's input
        body = bytearray(frame.body)
        body[0:4] = f32(value)
        if not math.isfinite(value):
            with pytest.raises(DecodeError, match=r"quantized_ec: the step .* is not finite"):
                comp.decode(_forge(payload, bytes(body)), DecodeLimits.for_specs(specs, max_abs=MAX_ABS))
            return
        target = specs[0].name  # Δ·q in every tensor: the first fails first
    elif name in FLOAT_AT:  # a per-tensor scale or norm, or a PowerSGD factor, that '3.weight' is decoded from
        body = bytearray(frame.body)
        at = FLOAT_AT[name](specs, params)
        body[at : at + 4] = f32(value)
    elif (code := frame.params_dict.get("values")) in ("int8", "sign"):  # one scale for the whole update
        numels = [s.numel for s in specs]
        steps = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0] if code == "int8" else [1.0] * len(specs)
        body = sparse_body([(1, [0]) for _ in specs], numels, coded_values(steps, code, scale=value))
        forged = _forge(payload, body)
        with pytest.raises(DecodeError) as info:
            comp.decode(forged, DecodeLimits.for_specs(specs, max_abs=MAX_ABS))
        if not math.isfinite(value):
            assert "the scale is not finite" in str(info.value), info.value
            return
        target = target if code == "int8" else specs[0].name  # ±scale everywhere: the first tensor fails first
        assert f"tensor '{target}'" in str(info.value) and "1e+06" in str(info.value), info.value
        return
    else:
        numels = [s.numel for s in specs]
        values = [1.0, 1.0, value, 1.0, 1.0, 1.0]
        body = sparse_body([(1, [0]) for _ in specs], numels, float_bytes(values, params.get("values", "fp32")))
    forged = _forge(payload, bytes(body))
    with pytest.raises(DecodeError) as info:
        comp.decode(forged, DecodeLimits.for_specs(specs, max_abs=MAX_ABS))
    message = str(info.value)
    arrives = value if name == "surp" else float(torch.tensor(value).to(VALUE_DTYPES[params.get("values", "fp32")]))
    assert f"tensor '{target}'" in message, message
    assert ("1e+06" if math.isfinite(arrives) else "not finite") in message, message  # fp16 makes 1e34 inf
    if math.isfinite(arrives):  # without a bound, a finite 1e34 is a legal value
        comp.decode(forged, DecodeLimits.for_specs(specs))


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e34])
@pytest.mark.parametrize(
    "label", ["identity", "lc-augmented_lagrangian", "lc-compressed_start", "alds", "udfc", "bwcp"]
)
def test_a_forged_broadcast_decoding_to_nan_inf_or_huge_is_refused_naming_the_tensor(label, value, broadcasts):
    client, payload, _ = broadcasts[label]
    frame = Frame.parse(payload)
    specs = client.arch.specs(client.decode(payload).structure)
    body = bytearray(frame.body)
    if label == "udfc":  # the first quantized weight's first row scale: its codes times it overflow
        first = next(s for s in specs if s.name.endswith(".weight") and len(s.shape) >= 2)
        at = sum(s.nbytes for s in specs[: specs.index(first)])
        body[at : at + 4] = f32(3.4e38 if not math.isfinite(value) else value)
        target = first.name
    elif label == "lc-augmented_lagrangian":  # the penalty centre t, dense after w̄
        at = sum(s.nbytes for s in specs)
        body[at : at + 4] = f32(value)
        target = "1.weight (penalty centre)"
    elif label == "lc-compressed_start":  # the dense part holds the uncompressed tensors: '1.bias' first
        body[0:4] = f32(value)
        target = "1.bias"
    else:
        body[0:4] = f32(value)
        target = specs[0].name
    with pytest.raises(DecodeError) as info:
        client.decode(_forge(payload, bytes(body)), max_abs=MAX_ABS)
    assert f"'{target}'" in str(info.value), str(info.value)


@pytest.fixture(scope="module")
def broadcasts():
    return _broadcasts()


def test_a_huge_params_integer_is_a_decode_error_for_every_codec_and_broadcast_kind(broadcasts):
    update = mlp_update(2)
    specs = specs_of(update)
    for name, params in UPLINK_VARIANTS.values():
        comp = update_compressor(name, seed=5, **params)
        frame = Frame.parse(comp.encode(update, {}, EncodeContext()).payload)
        with pytest.raises(DecodeError, match="4300 digits|not a JSON object"):
            comp.decode(frame.with_params('{"x":' + BIG_INT + "}").to_bytes(), DecodeLimits.for_specs(specs))
    for client, payload, _ in broadcasts.values():
        frame = Frame.parse(payload)
        with pytest.raises(DecodeError, match="not a JSON object"):
            client.decode(frame.with_params('{"x":' + BIG_INT + "}").to_bytes())


def test_specs_of_the_wrong_dtype_are_refused_as_an_update():
    update = mlp_update(3)
    specs = specs_of(update)
    comp = update_compressor("identity", seed=5)
    frame = Frame.parse(comp.encode(update, {}, EncodeContext()).payload)
    for dtype in (torch.uint8, torch.bool, torch.float64):
        wrong = [TensorSpec(s.name, s.shape, dtype) for s in specs]
        forged = Frame(frame.codec, frame.params, struct.pack("<I", len(wrong)) + _spec_bytes(wrong), frame.body)
        with pytest.raises(DecodeError, match="dtype"):
            comp.decode(forged.to_bytes(), DecodeLimits.for_specs(specs))


def test_dense_values_from_a_valid_model_payload_decode_and_are_checked():
    """The identity broadcast of a real model is accepted; the same bytes with one NaN are not."""
    state = OrderedDict(MLP.build().state_dict())
    client = IdentityModelCompressor(None, MLP)
    payload = pack("identity", {}, specs_of(state), dense_bytes(state.values()), by_digest=True)
    assert all(torch.equal(client.decode(payload, max_abs=MAX_ABS).state[k], v) for k, v in state.items())
    client.max_abs = 1e-3  # the attribute form of the bound
    with pytest.raises(DecodeError, match="exceed the bound"):
        client.decode(payload)
