"""Typed errors for everything that reads bytes off the wire."""

from __future__ import annotations


class DecodeError(ValueError):
    """A payload could not be decoded; the message says what and where."""


class TruncatedPayloadError(DecodeError):
    """The payload ends before a field it declares."""


class ChecksumError(DecodeError):
    """The CRC32 over the payload does not match: it was corrupted in transit."""


class LimitExceededError(DecodeError):
    """A declared size, count or shape is beyond what the receiver allows."""


class SpecMismatchError(DecodeError):
    """The payload's tensors are not the ones the receiver expects."""
