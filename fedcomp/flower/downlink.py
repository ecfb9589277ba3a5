"""Downlink update compression: the server sends the change of the global model, not the model.

The uplink compressors (:mod:`fedcomp.compressors.update`) work on any
mapping of tensors, so the server can send the *change* of the global model
with one of them (``[downlink] name = "surp"``). Round by round, with w_t the
global model the server holds and R the model the clients hold
(:class:`DownlinkChannel`):

    Δ_t = w_t − R_{t−1},   p_t = C(Δ_t),   R_t = R_{t−1} + D(p_t)

C is the compressor, D its decoder: R_t is built from the payload exactly as
a client rebuilds it, so server and clients hold the same bytes (a CRC32 of
R_t travels with every payload and the client checks it). Clients train
from R_t; the server adds their updates to its own w_t (not to R_t, which
would drop w_t − R_t every round).

Server-side error feedback is built in: what C leaves out of Δ_t stays in
w − R and goes out in later rounds. The server's memory e_t = w_t − R_t is
EF-SGD's (Karimireddy et al. 2019, Algorithm 2: p_t = C(g_t + e_t),
e_{t+1} = g_t + e_t − p_t) with g_t = w_t − w_{t−1}, the compressed downlink
of DoubleSqueeze (Tang et al. 2019); so the compressor's own
``error_feedback`` switch does not apply here.

Versions. R after k steps is version k; version 0 is the round-1 model.
Each train reply reports the version the client now holds
(``model-version``); a sampled client that holds version v gets the
*catch-up* ``p_{v+1} … p_t`` in one container (a client that was not
sampled for a while, or whose earlier reply failed, may hold an old one),
or R_t dense when that is smaller, or when the server does not know what it
holds (a new device, a failed reply). So downlink bytes differ per client.
A reply whose version is not the one its broadcast brought it to is a
lie (or a broken client): it is refused as the client's failure, and the
node gets the model dense next time, so the lie costs its teller the
dense model's bytes and is on the row (:meth:`DownlinkChannel.check_version`).
With ``initial = "seed"`` (fedcomp's own app) every client can build the
round-0 model from the experiment seed, as the server does, so a client
never seen before gets the catch-up from version 0; its CRC proves the two
equal. The server keeps the payloads of the newest steps only while their
sum is under one dense model (and at most :data:`MAX_CATCH_UP_STEPS`): an older base
gets the dense model anyway.

The client's work is bounded by the same cap: decoding a step gives dense
tensors whatever its payload (every codec's decoder returns the update
dense), so a catch-up costs O(payload + steps × n) for a model of n
values, and the client refuses one of more than :data:`MAX_CATCH_UP_STEPS`
steps before decoding any (so its work is at most that many dense
decodes, whatever the payload). The model it arrives at must lie within
``max_abs_value`` like any broadcast: steps each within the bound can add
up beyond it.

A resumed run starts its channel again: every client gets R dense once.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedcomp.coding import DecodeError, DecodeLimits, pack, peek, specs_of, tensor_to_bytes, unpack, values_within
from fedcomp.compressors.model.base import broadcast_limits, dense_bytes, dense_payload, read_dense
from fedcomp.compressors.model.structure import Architecture
from fedcomp.compressors.update.base import EncodeContext, State, UpdateCompressor
from fedcomp.strategies.replies import ReplyRejected

CHANGE_CODEC = "model-change"
"""The container of a catch-up: steps ``base+1 … version`` of the change, and the integer buffers dense."""
DENSE_CODEC = "identity"
"""A dense broadcast (the identity model codec), with ``version`` and ``crc`` in its params."""
MAX_CATCH_UP_STEPS = 16
"""The most steps one catch-up carries: a base older than that gets the model dense. Each step costs the client
a dense decode and a dense add (O(n) whatever its payload), so this caps a catch-up's work at 16 dense decodes;
a client refuses a longer one before decoding anything."""
SERVER_CLIENT_ID = (1 << 32) - 1
"""The ``client_id`` the server encodes with: no client's (partition ids and node-derived ids are < 2³¹), so
compressors that draw per client (QSGD's rounding, SuRP's order) draw a stream of the server's own."""

Model = OrderedDict[str, torch.Tensor]


def model_crc(state: Mapping[str, torch.Tensor]) -> int:
    """CRC32 of the model's tensors, in order, in their own dtypes: the same bytes on server and client."""
    crc = 0
    for t in state.values():
        crc = zlib.crc32(tensor_to_bytes(t), crc)
    return crc


def add_change(reference: Mapping[str, torch.Tensor], change: Mapping[str, torch.Tensor]) -> Model:
    """``R + D(p)`` over the floating-point tensors, in the tensors' dtypes (the one formula both sides use)."""
    out: Model = OrderedDict()
    for name, value in reference.items():
        if name in change and value.is_floating_point():
            out[name] = (value.float() + change[name]).to(value.dtype)
        else:
            out[name] = value
    return out


def other_part(state: Mapping[str, torch.Tensor]) -> Model:
    return OrderedDict((k, v) for k, v in state.items() if not v.is_floating_point())


@dataclass
class DownlinkChannel:
    """The server's side (see the module docstring): the reference R, the recent steps, each node's version."""

    compressor: UpdateCompressor
    update_limits: DecodeLimits
    """What a step must decode within (the model's floating-point tensors): the server decodes its own steps."""
    seeded_start: bool = False
    """Clients build version 0 themselves (fedcomp's own app: the round-0 model from the experiment seed)."""
    reference: Model | None = None
    version: int = 0
    crc: int = 0
    steps: dict[int, bytes] = field(default_factory=dict)
    """Step k's payload (R_{k−1} → R_k), for the newest steps still worth a catch-up."""
    versions: dict[int, int] = field(default_factory=dict)
    """Node id → the version its last accepted reply reported."""
    unknown: set[int] = field(default_factory=set)
    """Nodes whose last reply failed: what they hold is unknown, so they get the model dense (not version 0)."""
    base_crcs: dict[int, int] = field(default_factory=dict)
    """Version → CRC of R at that version, for the versions a catch-up can start from."""
    state: State = field(default_factory=dict)
    """The compressor's own state across rounds (DGC's momentum, PowerSGD's warm start)."""
    dense_size: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)

    def advance(self, server_round: int, model: Mapping[str, torch.Tensor], first_round_of_run: bool) -> Model:
        """One step towards ``model`` (w_t); returns R_t, the model this round's clients start from.

        The first call makes R = w (version 0, no step); with ``seeded_start``
        only when it is round 1 of a fresh run, where w is the seeded round-0 model.
        """
        model = OrderedDict(model)
        if self.reference is None:
            self.reference, self.version = model, 0
            self.seeded_start = self.seeded_start and first_round_of_run
            self.crc = model_crc(model)
            self.base_crcs = {0: self.crc}
            self.dense_size = len(self.dense())
            return self.reference
        change = OrderedDict(
            (k, model[k].float() - v.float()) for k, v in self.reference.items() if v.is_floating_point()
        )
        ctx = EncodeContext(server_round, SERVER_CLIENT_ID, 1)
        encoded = self.compressor.encode(change, dict(self.state), ctx)
        self.state = encoded.state
        self.last_metrics = {f"downlink_{k}": float(v) for k, v in encoded.metrics.items()}
        # What a client decodes, not ``encoded.sent``: the two sides must add the very same tensors.
        decoded = self.compressor.decode(encoded.payload, self.update_limits)
        reference = add_change(self.reference, decoded)
        for k, v in other_part(model).items():  # integer buffers (BatchNorm's step count) travel dense
            reference[k] = v
        self.reference = reference
        self.version += 1
        self.crc = model_crc(reference)
        self.steps[self.version] = encoded.payload
        self.base_crcs[self.version] = self.crc
        self._forget_old_steps()
        return self.reference

    def _forget_old_steps(self) -> None:
        """Keep the shortest run of newest steps whose sum reaches one dense model: older bases get it dense."""
        total = sum(len(p) for p in self.steps.values())
        for k in sorted(self.steps):
            if total - len(self.steps[k]) < self.dense_size and len(self.steps) <= MAX_CATCH_UP_STEPS:
                break
            total -= len(self.steps.pop(k))
        oldest_base = min(self.steps, default=self.version + 1) - 1
        self.base_crcs = {v: c for v, c in self.base_crcs.items() if v >= min(oldest_base, self.version)}

    def dense(self) -> bytes:
        assert self.reference is not None
        return dense_payload(DENSE_CODEC, self.reference, (), {"version": self.version, "crc": self.crc})

    def base_of(self, node: int) -> int | None:
        """The version a catch-up for ``node`` starts from, or None (it gets the dense model)."""
        base = self.versions.get(node)
        if base is None and self.seeded_start and node not in self.unknown:
            base = 0
        if base is None or base not in self.base_crcs or base > self.version:
            return None
        if any(k not in self.steps for k in range(base + 1, self.version + 1)):
            return None
        return base

    def payload_for(self, node: int, dense: bytes) -> bytes:
        """What ``node`` receives this round: its catch-up, or ``dense`` when that is smaller or needed."""
        base = self.base_of(node)
        if base is None:
            return dense
        assert self.reference is not None
        steps = [self.steps[k] for k in range(base + 1, self.version + 1)]
        if sum(len(s) for s in steps) >= len(dense):
            return dense
        others = other_part(self.reference)
        params = {
            "codec": self.compressor.name,
            "base": base,
            "base_crc": self.base_crcs[base],
            "version": self.version,
            "crc": self.crc,
            "steps": [len(s) for s in steps],
        }
        return pack(CHANGE_CODEC, params, specs_of(others), dense_bytes(others.values()) + b"".join(steps))

    def check_version(self, reported: int | None, uplink_bytes: int = 0) -> None:
        """ReplyRejected unless a train reply reports this round's version: the broadcast it got (its catch-up or
        the dense model) brought it there. A node that says otherwise gets the dense model next round."""
        if reported is None:
            raise ReplyRejected("reply lacks model-version (the downlink sends the model's change)", uplink_bytes)
        if reported != self.version:
            raise ReplyRejected(
                f"model-version = {reported}, but this round's broadcast brought it to version {self.version}: "
                "refused (its next broadcast is the model dense)",
                uplink_bytes,
            )

    def learn(self, node: int, reported: int | None) -> None:
        """After a round: the node holds the version it reported, if that is this round's; else it is unknown."""
        if reported is not None and reported == self.version:
            self.versions[node] = reported
            self.unknown.discard(node)
        else:
            self.versions.pop(node, None)
            self.unknown.add(node)


@dataclass
class Held:
    """The model a client holds between rounds, with its version and CRC."""

    state: Model
    version: int
    crc: int


def apply_change(
    payload: bytes,
    held: Held | None,
    arch: Architecture,
    compressor: UpdateCompressor,
    max_abs: float,
    initial: Callable[[], Mapping[str, torch.Tensor]] | None,
) -> Held:
    """The client's side: the model a catch-up brings ``held`` to; DecodeError naming what does not fit.

    Base 0 is built with ``initial`` when given (the seeded round-0 model);
    any other base must be the version the client holds, with its CRC; the
    result must have the CRC the server computed.
    """
    specs = arch.specs(())
    limits = broadcast_limits(specs, 1.0, max_abs)
    codec, params = peek(payload, limits)
    if codec != CHANGE_CODEC:
        raise DecodeError(f"expected a {CHANGE_CODEC!r} payload, got {codec!r}")
    try:
        base, base_crc = int(params["base"]), int(params["base_crc"])
        version, crc = int(params["version"]), int(params["crc"])
        lengths = [int(n) for n in params["steps"]]
        name = str(params["codec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"{CHANGE_CODEC}: malformed params: {exc}") from None
    if name != compressor.name:
        raise DecodeError(f"{CHANGE_CODEC}: steps made by {name!r}, this client decodes {compressor.name!r}")
    if len(lengths) != version - base or any(n < 0 for n in lengths):
        raise DecodeError(f"{CHANGE_CODEC}: {len(lengths)} step lengths for versions {base} → {version}")
    if len(lengths) > MAX_CATCH_UP_STEPS:  # each step is a dense decode and add: refused before any
        raise DecodeError(
            f"{CHANGE_CODEC}: {len(lengths)} steps, more than the {MAX_CATCH_UP_STEPS} a catch-up may carry"
        )
    others = [s for s in specs if not s.dtype.is_floating_point]
    parsed = unpack(payload, DecodeLimits(
        max_payload_bytes=limits.max_payload_bytes, max_tensors=len(others) or 1,
        max_elements=max(1, sum(s.numel for s in others)), expected=tuple(others),
    ))  # fmt: skip
    buffers, pos = read_dense(parsed.body, 0, parsed.specs)
    if pos + sum(lengths) != len(parsed.body):
        raise DecodeError(f"{CHANGE_CODEC}: steps hold {sum(lengths)} bytes, the body has {len(parsed.body) - pos}")
    if base == 0 and initial is not None and (held is None or held.version != 0):
        state = OrderedDict(initial())
        start = Held(state, 0, model_crc(state))
        if start.crc != base_crc:
            raise DecodeError(
                "the round-0 model this client builds differs from the server's "
                f'(CRC {start.crc:#010x}, server {base_crc:#010x}): use [downlink] initial = "dense"'
            )
    elif held is None:
        raise DecodeError(f"{CHANGE_CODEC}: a change from version {base}, but this client holds no model")
    elif held.version != base or held.crc != base_crc:
        raise DecodeError(
            f"{CHANGE_CODEC}: a change from version {base} (CRC {base_crc:#010x}), "
            f"but this client holds version {held.version} (CRC {held.crc:#010x})"
        )
    else:
        start = held
    update_limits = DecodeLimits.for_specs([s for s in specs if s.dtype.is_floating_point], max_abs=max_abs)
    state = start.state
    for n in lengths:
        state = add_change(state, compressor.decode(parsed.body[pos : pos + n], update_limits))
        pos += n
    state = OrderedDict((k, buffers.get(k, v)) for k, v in state.items())
    for name, value in state.items():  # every step within the bound, their sum need not be
        if value.is_floating_point() and not values_within(value, max_abs):
            raise DecodeError(
                f"{CHANGE_CODEC}: after the change, {name!r} has values that are not finite or exceed "
                f"±{max_abs:g} (federation.max_abs_value)"
            )
    got = model_crc(state)
    if got != crc:
        raise DecodeError(f"{CHANGE_CODEC}: the model after the change has CRC {got:#010x}, the server's {crc:#010x}")
    return Held(state, version, got)


def dense_version(params: Mapping[str, Any]) -> tuple[int, int] | None:
    """The (version, crc) a dense broadcast's params name, or None (a broadcast without downlink update compression)."""
    if "version" not in params or "crc" not in params:
        return None
    try:
        return int(params["version"]), int(params["crc"])
    except (TypeError, ValueError):
        raise DecodeError(f"dense broadcast: malformed version params {params!r}") from None


META_KEY = "downlink-meta"
REF_PREFIX = "ref/"


def held_to_state(held: Held) -> dict[str, torch.Tensor]:
    """The held model as entries of the client's state file (next to the uplink state)."""
    out = {REF_PREFIX + k: v.contiguous() for k, v in held.state.items()}
    out[META_KEY] = torch.tensor([held.version, held.crc], dtype=torch.int64)
    return out


def split_state(state: Mapping[str, torch.Tensor]) -> tuple[Held | None, dict[str, torch.Tensor]]:
    """(the held model or None, the uplink state) from a client's stored state; ValueError if its meta is not
    the two integers :func:`held_to_state` writes (a damaged file: the caller starts afresh)."""
    uplink = {k: v for k, v in state.items() if not (k.startswith(REF_PREFIX) or k == META_KEY)}
    if META_KEY not in state:
        return None, uplink
    meta = state[META_KEY]
    if meta.dtype != torch.int64 or tuple(meta.shape) != (2,):
        raise ValueError(f"stored {META_KEY} has dtype {meta.dtype} and shape {tuple(meta.shape)}, expected int64 (2,)")
    version, crc = (int(x) for x in meta.tolist())
    model = OrderedDict((k[len(REF_PREFIX) :], v) for k, v in state.items() if k.startswith(REF_PREFIX))
    return Held(model, version, crc), uplink
