"""A lossless stage after any codec: the payload's body as one zstd frame (RFC 8878), bounded on the way back.

:func:`compress` writes one frame with its content size in the header, no
checksum (the container's CRC32 covers the frame) and a window of at most
2^:data:`WINDOW_LOG` bytes. :func:`decompress` is where a hostile frame
(a zip bomb: a few bytes that expand to gigabytes) meets the receiver, so
it checks the header first — one frame of the zstd format, content size
declared and at most ``max_size``, window within the limit — then feeds
the frame to a streaming decompressor :data:`FEED` bytes at a time and
stops as soon as the output passes ``max_size``: the memory it allocates
is ``max_size`` plus at most one feed's expansion (:data:`FEED` bytes of
RLE blocks, 128 KiB each), whatever the frame declares. Every failure is a
:class:`~fedcomp.coding.errors.DecodeError`.

zstandard (the maintained binding of the reference C library, with wheels
for every platform fedcomp runs on) is used rather than the standard
library's zlib or bz2 because it is faster at a better ratio and lets the
decoder bound the window and the output.
"""

from __future__ import annotations

import zstandard

from fedcomp.coding.errors import DecodeError, LimitExceededError

LEVEL = 3
"""zstd's default level: its speed/ratio knee for payloads of kilobytes to megabytes."""
WINDOW_LOG = 23
"""Largest window (8 MiB) the encoder uses and the decoder accepts."""
FEED = 256
"""Compressed bytes handed to the decompressor per step: bounds its output per step to 256·128 KiB / 4 at worst."""
MODES = ("none", "zstd")


def compress(body: bytes, level: int = LEVEL) -> bytes:
    """``body`` as one zstd frame (content size in the header, no checksum, window ≤ 2^WINDOW_LOG)."""
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(body), window_log=min(WINDOW_LOG, max(10, len(body).bit_length())),
        write_content_size=True, write_checksum=False,
    )  # fmt: skip
    return zstandard.ZstdCompressor(compression_params=params).compress(body)


def decompress(frame: bytes, max_size: int, what: str = "lossless body") -> bytes:
    """The bytes one zstd frame holds, at most ``max_size`` of them; DecodeError for anything else.

    Refused: data that is not exactly one frame (trailing bytes included),
    a frame without its content size, a declared or actual size above
    ``max_size``, a window above 2^WINDOW_LOG, a dictionary, and a frame
    whose output differs from its declared size.
    """
    try:
        header = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"{what}: not a zstd frame ({str(exc)[:80]})") from None
    size = header.content_size
    if size == zstandard.CONTENTSIZE_UNKNOWN or size == zstandard.CONTENTSIZE_ERROR:
        raise DecodeError(f"{what}: the zstd frame does not declare its content size")
    if size > max_size:
        raise LimitExceededError(f"{what}: the zstd frame declares {size} bytes, at most {max_size} accepted")
    if header.window_size > 1 << WINDOW_LOG:
        raise LimitExceededError(f"{what}: zstd window of {header.window_size} bytes, limit {1 << WINDOW_LOG}")
    if header.dict_id:
        raise DecodeError(f"{what}: the zstd frame needs dictionary {header.dict_id}; none is shared")
    stream = zstandard.ZstdDecompressor(max_window_size=1 << WINDOW_LOG).decompressobj()
    out = bytearray()
    try:
        for start in range(0, len(frame), FEED):
            out += stream.decompress(frame[start : start + FEED])
            if len(out) > size:
                raise LimitExceededError(f"{what}: the zstd frame expands past the {size} bytes it declares")
            if stream.eof:
                break
    except zstandard.ZstdError as exc:
        raise DecodeError(f"{what}: corrupt zstd frame ({str(exc)[:80]})") from None
    if not stream.eof:
        raise DecodeError(f"{what}: the zstd frame ends early ({len(out)} of {size} bytes)")
    if stream.unused_data or start + FEED < len(frame):
        raise DecodeError(f"{what}: bytes after the zstd frame")
    if len(out) != size:
        raise DecodeError(f"{what}: the zstd frame holds {len(out)} bytes, its header says {size}")
    return bytes(out)
