"""Small helpers several test files share (one copy each, instead of one per file)."""

from __future__ import annotations

from typing import Any

from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.compressors.update.base import UpdateCompressor


def update_compressor(name: str, seed: int = 0, section: str = "uplink", **params: Any) -> UpdateCompressor:
    """The registered update compressor ``name`` with ``params`` checked as a config's ``[section]`` checks them."""
    cls = UPDATE_COMPRESSORS.get(name)
    return cls(cls.parse_params(params, section), seed=seed)
