"""DRIVE: one bit a coordinate after a randomized Hadamard rotation (Vargaftik et al., NeurIPS 2021).

DRIVE ("One-bit Distributed Mean Estimation") is EDEN's one-bit case, which
EDEN (:mod:`.eden`) generalizes: the sender rotates, y = R(x) = H·D·x/√d,
sends sign(y) (d bits) and one scale, and the receiver estimates
x̂ = R⁻¹(S·sign(y)) with

    S = ‖y‖₁ / d              (the scale of least error: ‖x̂ − x‖²/‖x‖² → 1 − 2/π ≈ 0.363, biased), or
    S = ‖x‖₂² / ‖y‖₁          (the unbiased scale: E[x̂] = x, ‖x̂ − x‖²/‖x‖² → π/2 − 1 ≈ 0.571),

the limits for a uniformly random rotation as d grows. ``scale`` chooses
("min_mse" or "unbiased", the default, as for averaging many clients).
Both are EDEN's formulas with its 1-bit Lloyd–Max levels ±√(2/π), whose
size cancels in S·q: the code, the chunking, the seeded rotation, the
departures and the wire format are EDEN's (:mod:`.eden`), with ``bits``
fixed at 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedcomp.compressors.update.base import UPDATE_COMPRESSORS
from fedcomp.compressors.update.eden import MAX_CHUNK, MIN_CHUNK, SCALES, EdenCompressor, is_chunk_size
from fedcomp.params import require


@dataclass
class DriveParams:
    chunk_size: int = 1 << 14
    """Coordinates rotated together (a power of two, 64..2^24); the rest is cut as EDEN cuts it."""
    scale: str = "unbiased"
    """"unbiased": S = ‖x‖²/‖y‖₁ (E[x̂] = x); "min_mse": S = ‖y‖₁/d (least error, biased)."""
    error_feedback: bool | str | None = None
    """Keep what was not sent and add it next round (default off)."""
    lossless: str = "none"
    """A lossless stage after the codec: "none" or "zstd" (the body as one zstd frame, when that is shorter)."""

    def validate(self, path: str) -> None:
        require(is_chunk_size(self.chunk_size), f"{path}.chunk_size", f"a power of two in {MIN_CHUNK}..{MAX_CHUNK}")
        require(self.scale in SCALES, f"{path}.scale", f"one of {list(SCALES)}, got {self.scale!r}")


@UPDATE_COMPRESSORS.register("drive", "DRIVE: randomized Hadamard rotation, one sign bit a coordinate (Vargaftik 2021)")
class DriveCompressor(EdenCompressor):
    name = "drive"
    Params = DriveParams

    def bits_for(self) -> int:
        return 1
