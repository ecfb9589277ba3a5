"""The update-compressor interface (client → server).

An update compressor turns a client's update, an ordered mapping
``name → tensor`` (``w_local − w_global``), into a container payload and
back. It is built from its parameter dataclass and the experiment seed;
per-client state (DGC's momentum, say) is an explicit dict of tensors the
caller keeps between rounds, so a compressor object holds none. Every
encode also returns ``sent``: the update exactly as the receiver will
decode it, which is what error feedback (:mod:`.feedback`, shared by all
compressors) subtracts to get the residual. Bytes are never counted here:
the strategy counts ``len(payload)``.

Decoding is where an untrusted client's bytes meet the server, so
:meth:`UpdateCompressor.decode` owns the guarantees every codec gets for
free: the container is checked before the body is read, the body's
decoder can only fail with a :class:`~fedcomp.coding.DecodeError` (any
other exception it raises on malformed input is turned into one), and
what it decoded must be exactly the expected tensors with finite values
of at most ``limits.max_abs`` (:func:`~fedcomp.coding.check_decoded`).

**The lossless stage** (``lossless = "zstd"``, a parameter every codec's
``Params`` declares): after a codec's ``encode``, the payload's body is
compressed as one zstd frame (:mod:`fedcomp.coding.lossless`) and the
params say ``"lossless": "zstd"``; :meth:`UpdateCompressor.decode`
decompresses it, bounded by the dense size of the expected tensors plus the
container's slack, before the codec's own decoder sees the body. The stage
wraps every subclass's ``encode`` (:meth:`UpdateCompressor.__init_subclass__`),
so a codec gets it by declaring the field; a body that zstd does not
shrink is sent as it was (no ``lossless`` in its params), so the payload
never grows and a ``max_bytes`` budget still holds. The budget is met
before the stage: with zstd a payload ends below it, rather than a denser
encode filling it. The bytes counted are the payload's, as always: the
compressed length.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from fedcomp.coding import DecodeError, DecodeLimits, TensorSpec, check_decoded, lossless, unpack
from fedcomp.coding.container import reframe
from fedcomp.params import ConfigError, params_from_dict, require
from fedcomp.registry import Registry
from fedcomp.suggest import did_you_mean

Update = Mapping[str, torch.Tensor]
State = dict[str, torch.Tensor]


AGGREGATE = "aggregate"
"""``error_feedback = "aggregate"``: no residual memory on the client; the previous round's aggregated update is
every client's predictor (:mod:`fedcomp.compressors.update.feedback`, CAFe)."""
FEEDBACK_KEY = "error_feedback"
"""Every codec's ``error_feedback`` (``bool | str | None``) is true (a residual kept per client), false (none),
``"aggregate"`` or None (the method's own default); :func:`check_feedback_setting` refuses any other value."""


def check_feedback_setting(data: Mapping[str, Any], path: str) -> None:
    """ConfigError naming ``<path>.error_feedback`` unless it is absent, true, false or ``"aggregate"``."""
    if FEEDBACK_KEY not in data:
        return
    value = data[FEEDBACK_KEY]
    if value is None or isinstance(value, bool) or value == AGGREGATE:
        return
    hint = did_you_mean(value, [AGGREGATE]) if isinstance(value, str) else ""
    raise ConfigError(
        f"config key '{path}.{FEEDBACK_KEY}': expected true (a residual kept per client), false (none) or "
        f"\"{AGGREGATE}\" (the previous round's aggregate as every client's predictor, no client state), "
        f"got {value!r}{hint}"
    )


UPDATE_COMPRESSORS: Registry = Registry("update compressor")
"""Every update compressor by name; each registers itself in its own module (imported by the package)."""


class NonFiniteUpdateError(ValueError):
    """An update (or error-feedback residual) with NaN or ±inf in it: no codec can encode it faithfully."""


def check_finite_input(name: str, update: Update) -> None:
    """:class:`NonFiniteUpdateError` naming the first tensor of ``update`` that is not finite.

    For encoders whose arithmetic would turn NaN into something that looks
    valid (SuRP's magnitudes and QSGD's norm: an all-zero update)."""
    for key, value in update.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise NonFiniteUpdateError(f"{name}: the update to encode is not finite ({key!r}): refused")


@dataclass(frozen=True)
class EncodeContext:
    """Where an encode happens: which round, which client, how many clients."""

    server_round: int = 1
    client_id: int = 0
    num_clients: int = 1


@dataclass
class Encoded:
    """What a client sends, what the receiver will rebuild from it, and the new state."""

    payload: bytes
    sent: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)
    state: State = field(default_factory=dict)


def float32_update(update: Update) -> OrderedDict[str, torch.Tensor]:
    """The update as detached fp32 CPU tensors, in its order: what every codec encodes."""
    return OrderedDict((k, v.detach().to("cpu", torch.float32)) for k, v in update.items())


@dataclass
class NoParams:
    """For compressors without parameters (but the lossless stage every codec has)."""

    lossless: str = "none"
    """A lossless stage after the codec: ``none`` or ``zstd`` (the body as one zstd frame, when that is shorter)."""


LOSSLESS_KEY = "lossless"
LOSSLESS_SLACK = 1 << 20
"""Bytes beyond the dense size of the expected tensors a decompressed body may have (the container's own slack)."""


class UpdateCompressor(ABC):
    """Base class; subclasses set ``name``, ``Params`` and the two codecs."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    error_feedback_default: ClassVar[bool] = False
    """Whether error feedback is on unless the config says otherwise."""
    bounds_own_values: ClassVar[bool] = False
    """True if :meth:`decode_body` takes ``max_abs=`` and checks every value it places itself.

    For the sparse codecs: their output is zeros except for the k values
    they read, so checking those k values bounds the whole update in O(k),
    where a second pass over the dense update would add 11–16% to their
    decode at ResNet-18 size. Other codecs leave it False and get the
    generic pass over every decoded tensor.
    """

    def __init__(self, params: Any = None, seed: int = 0) -> None:
        self.params = params if params is not None else self.Params()
        self.seed = seed

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every subclass's own ``encode`` is followed by the lossless stage (module docstring)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("encode")
        if own is not None and not getattr(own, "_then_lossless", False):
            cls.encode = _then_lossless(own)

    @classmethod
    def parse_params(cls, data: dict[str, Any], path: str) -> Any:
        """Typed, validated parameters from a config section (``lossless`` and ``error_feedback`` checked here, for
        every codec)."""
        if any(f.name == FEEDBACK_KEY for f in dataclasses.fields(cls.Params)):
            check_feedback_setting(data, path)
        params = params_from_dict(cls.Params, data, path)
        mode = getattr(params, LOSSLESS_KEY, "none")
        require(mode in lossless.MODES, f"{path}.{LOSSLESS_KEY}", f"one of {list(lossless.MODES)}, got {mode!r}")
        return params

    @property
    def error_feedback(self) -> bool:
        """Whether a residual is kept per client (:func:`~.feedback.encode_with_feedback`); False under
        ``"aggregate"``, which keeps none (:attr:`aggregate_feedback`)."""
        value = getattr(self.params, FEEDBACK_KEY, None)
        if value == AGGREGATE:
            return False
        return self.error_feedback_default if value is None else bool(value)

    @property
    def aggregate_feedback(self) -> bool:
        """``error_feedback = "aggregate"``: the client encodes its update minus the previous round's aggregate,
        which the server adds back (:mod:`.feedback`); no state on the client."""
        return getattr(self.params, FEEDBACK_KEY, None) == AGGREGATE

    @property
    def lossless(self) -> str:
        """The lossless stage after this codec: ``none`` or ``zstd``."""
        return getattr(self.params, LOSSLESS_KEY, "none")

    @abstractmethod
    def encode(self, update: Update, state: State | None = None, ctx: EncodeContext | None = None) -> Encoded:
        """Compress ``update`` (given this client's state) into a payload."""

    @abstractmethod
    def decode_body(self, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes) -> dict[str, torch.Tensor]:
        """Rebuild the update from the container's parts."""

    def decode(self, payload: bytes, limits: DecodeLimits) -> dict[str, torch.Tensor]:
        """Check the container, decode its body, check what came out; only DecodeError escapes.

        Every decoded tensor must have its spec's name, shape and dtype and
        hold finite values with |x| ≤ ``limits.max_abs`` (infinite by
        default; the server sets ``federation.max_abs_value`` through
        ``DecodeLimits.for_specs(specs, max_abs=...)``): a forged payload
        with a valid CRC that decodes to NaN, inf or 1e34 is refused here,
        naming the tensor, before it can reach an average.
        """
        try:
            parsed = unpack(payload, limits)
            if parsed.codec != self.name:
                raise DecodeError(f"payload was made by codec {parsed.codec!r}, expected {self.name!r}")
            params, body = undo_lossless(self.name, parsed.params, parsed.specs, parsed.body, limits)
            if self.bounds_own_values:
                out = self.decode_body(params, parsed.specs, body, max_abs=limits.max_abs)
            else:
                out = self.decode_body(params, parsed.specs, body)
            check_decoded(out, parsed.specs, limits.max_abs, f"{self.name} payload", values=not self.bounds_own_values)
        except DecodeError:
            raise
        except MALFORMED as exc:
            raise DecodeError(f"{self.name}: malformed body: {type(exc).__name__}: {str(exc)[:200]}") from exc
        return out


def _then_lossless(encode: Any) -> Any:
    """``encode`` followed by the lossless stage of ``self.lossless`` (once: a wrapped ``super().encode`` is not
    compressed twice)."""

    @functools.wraps(encode)
    def encode_then_compress(self: UpdateCompressor, *args: Any, **kwargs: Any) -> Encoded:
        encoded = encode(self, *args, **kwargs)
        if self.lossless == "zstd":
            encoded.payload = with_lossless(encoded.payload)
        return encoded

    encode_then_compress._then_lossless = True  # type: ignore[attr-defined]
    return encode_then_compress


def with_lossless(payload: bytes) -> bytes:
    """``payload`` with its body as one zstd frame and ``"lossless": "zstd"`` in its params, if that is shorter."""

    def squeeze(params: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes] | None:
        if LOSSLESS_KEY in params:  # already through the stage (a subclass's encode calling its parent's)
            return None
        return {**params, LOSSLESS_KEY: "zstd"}, lossless.compress(body)

    squeezed = reframe(payload, squeeze)
    return squeezed if len(squeezed) < len(payload) else payload


def undo_lossless(
    codec: str, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes, limits: DecodeLimits
) -> tuple[dict[str, Any], bytes]:
    """The codec's own params and body: the lossless stage undone if the params name it (DecodeError if it fails).

    The body may decompress to at most the expected tensors' dense size plus
    :data:`LOSSLESS_SLACK` (and never more than ``limits.max_payload_bytes``):
    what the receiver would have accepted uncompressed.
    """
    if LOSSLESS_KEY not in params:
        return params, body
    params = dict(params)
    mode = params.pop(LOSSLESS_KEY)
    if mode != "zstd":
        raise DecodeError(f"{codec}: unknown lossless stage {str(mode)[:40]!r}")
    bound = min(limits.max_payload_bytes, sum(s.nbytes for s in specs) + LOSSLESS_SLACK + 64 * len(specs))
    return params, lossless.decompress(body, bound, f"{codec} lossless body")


def refuse_negative(codec: str, what: str, specs: Sequence[TensorSpec], values: torch.Tensor) -> None:
    """DecodeError naming the tensor whose per-tensor ``what`` (a scale, a norm) is negative."""
    negative = torch.nonzero(values < 0).flatten()
    if negative.numel():
        raise DecodeError(f"{codec}: the {what} of tensor '{specs[int(negative[0])].name}' is negative")


MALFORMED = (
    ValueError,
    LookupError,
    TypeError,
    RuntimeError,
    ArithmeticError,
    MemoryError,
    AttributeError,
    struct.error,
)
"""What a decoder's arithmetic and indexing raise on input it was not written for: all become DecodeError."""
