"""Hostile payloads for tests: take a container apart, change any field, frame it again with a valid CRC.

A CRC32 only says the bytes arrived as they were sent. A hostile sender
computes it like anyone else, so a test of a decoder's defences must get
past the checksum: every payload made here carries a valid one.

:class:`Frame` splits a container into its raw fields (codec name, params
JSON, the tensor-list section, body) and :meth:`Frame.to_bytes` frames them
again with every length and the CRC recomputed, so a test can put any
bytes in any field. :func:`damage` is the one random mutator the tests
share: bit flips, byte overwrites, truncations and insertions, in the body
or anywhere, always behind a valid CRC.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedcomp.coding.container import DIGEST_FLAG, FORMAT_VERSION, MAGIC


def reframe(head: bytes) -> bytes:
    """``head`` followed by its CRC32: a container's checksum around arbitrary contents."""
    return head + struct.pack("<I", zlib.crc32(head))


def fix_crc(payload: bytes) -> bytes:
    """The payload with its trailing CRC32 recomputed over everything before it."""
    return reframe(payload[:-4])


@dataclass(frozen=True)
class Frame:
    """The raw fields of a container, each free to hold anything."""

    codec: bytes
    params: bytes
    tensors: bytes
    """The tensor-count field and what follows it up to the body length: the specs or the spec digest."""
    body: bytes
    version: int = FORMAT_VERSION

    @classmethod
    def parse(cls, payload: bytes) -> Frame:
        """Split a well-formed container (one fedcomp made; nothing is checked here)."""
        pos = len(MAGIC)
        version, name_len = struct.unpack_from("<BB", payload, pos)
        pos += 2
        codec = payload[pos : pos + name_len]
        pos += name_len
        (params_len,) = struct.unpack_from("<I", payload, pos)
        params = payload[pos + 4 : pos + 4 + params_len]
        pos += 4 + params_len
        start = pos
        (count,) = struct.unpack_from("<I", payload, pos)
        pos += 4
        if count & DIGEST_FLAG:
            pos += 4
        else:
            for _ in range(count):
                (tname_len,) = struct.unpack_from("<H", payload, pos)
                pos += 2 + tname_len
                _, ndim = struct.unpack_from("<BB", payload, pos)
                pos += 2 + 4 * ndim
        tensors = payload[start:pos]
        (body_len,) = struct.unpack_from("<Q", payload, pos)
        body = payload[pos + 8 : pos + 8 + body_len]
        return cls(codec, params, tensors, body, version)

    @property
    def params_dict(self) -> dict[str, Any]:
        return json.loads(self.params)

    def with_params(self, params: dict[str, Any] | str | bytes) -> Frame:
        """The frame with other params: a dict (as JSON), or raw JSON text (``NaN``, 5000-digit ints, ...)."""
        if isinstance(params, dict):
            params = json.dumps(params, sort_keys=True, separators=(",", ":"))
        return replace(self, params=params.encode() if isinstance(params, str) else params)

    def with_body(self, body: bytes) -> Frame:
        return replace(self, body=bytes(body))

    def to_bytes(self) -> bytes:
        """The container, every length and the CRC recomputed."""
        head = b"".join(
            [
                MAGIC,
                struct.pack("<BB", self.version, len(self.codec) & 0xFF),
                self.codec,
                struct.pack("<I", len(self.params)),
                self.params,
                self.tensors,
                struct.pack("<Q", len(self.body)),
                self.body,
            ]
        )
        return reframe(head)


DAMAGE_KINDS = ("flip", "overwrite", "truncate", "flip_body", "overwrite_body", "cut_body", "insert_body")


def _flip(data: bytearray, rng: np.random.Generator, count: int) -> None:
    for pos in rng.integers(0, 8 * len(data), size=count):
        data[pos // 8] ^= 1 << int(pos % 8)


def _overwrite(data: bytearray, rng: np.random.Generator, count: int) -> None:
    for pos in rng.integers(0, len(data), size=count):
        data[pos] = int(rng.integers(256))


def damage(payload: bytes, rng: np.random.Generator, kind: str | None = None) -> tuple[str, bytes]:
    """One random mutation of ``payload`` behind a valid CRC; returns (kind, damaged payload).

    Whole-payload kinds (``flip``, ``overwrite``, ``truncate``) hit the
    header as often as the body; the ``*_body`` kinds change only the body
    and keep its length field right, so the codec's own decoder (not the
    container) meets the damage. Unless ``kind`` is given it is drawn from
    :data:`DAMAGE_KINDS`.
    """
    kind = kind or DAMAGE_KINDS[int(rng.integers(len(DAMAGE_KINDS)))]
    few = int(rng.integers(1, 9))
    if kind in ("flip", "overwrite", "truncate"):
        head = bytearray(payload[:-4])
        if kind == "flip":
            _flip(head, rng, few)
        elif kind == "overwrite":
            _overwrite(head, rng, few)
        else:
            head = head[: int(rng.integers(0, len(head)))]
        return kind, reframe(bytes(head))
    frame = Frame.parse(payload)
    body = bytearray(frame.body)
    if kind == "flip_body" and body:
        _flip(body, rng, few)
    elif kind == "overwrite_body" and body:
        _overwrite(body, rng, few)
    elif kind == "cut_body":
        body = body[: int(rng.integers(0, len(body) + 1))]
    else:  # insert_body (or an empty body): 1 to 64 random bytes at a random place
        at = int(rng.integers(0, len(body) + 1))
        body[at:at] = rng.integers(0, 256, size=int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
    return kind, frame.with_body(bytes(body)).to_bytes()


def dense_payloads(cfg: Any, input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10) -> tuple[bytes, bytes]:
    """(uplink, downlink): the identity payloads a run of ``cfg`` sends for its initial model.

    A client sends its float tensors; the server broadcasts the whole state
    (buffers included). Values do not change an identity payload's length,
    so these lengths are every round's, for the expected byte counts.
    """
    from fedcomp.clients.training import float_state
    from fedcomp.compressors.update.identity import IdentityCompressor
    from fedcomp.servers.app import initial_model

    model = initial_model(cfg, input_shape, num_classes)
    return IdentityCompressor().encode(float_state(model)).payload, IdentityCompressor().encode(
        model.state_dict()
    ).payload


def identity_payload_length(tensors: Any) -> int:
    """What an identity payload of ``tensors`` (a broadcast's model, or a client's update) must weigh, from the
    container layout in fedcomp/coding/container.py, not from fedcomp's encoder: tensors named by digest, no
    params, every tensor dense in its own dtype.

    magic 4, version 1, codec name 1 + 8 (``identity``), params 4 + 2 (``{}``), tensor count 4, spec digest 4,
    body length 8, the body, CRC32 4.
    """
    header = 4 + 1 + (1 + len("identity")) + (4 + len("{}")) + 4 + 4 + 8
    return header + sum(t.numel() * t.element_size() for t in tensors) + 4
