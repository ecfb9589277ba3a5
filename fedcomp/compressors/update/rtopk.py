"""rTop-k (Barnes, Inan, Isik & Özgür 2020): a random k of the top r.

With error feedback (on by default) the residual is added first; then the
r = ⌈r_factor·k⌉ largest-magnitude coordinates of each tensor are found and
a uniformly random k of them is sent, without rescaling (the memory keeps
the rest). ``r_factor = 1`` is plain top-k. Indices and values go through
the shared sparse format.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedcomp.compressors.update.base import UPDATE_COMPRESSORS
from fedcomp.compressors.update.sparse import SparseParams, top_magnitude
from fedcomp.compressors.update.topk import SparseCompressor
from fedcomp.params import require


@dataclass
class RTopKParams(SparseParams):
    r_factor: float = 2.0
    """r / k: how many top coordinates the random k are drawn from."""

    def validate(self, path: str) -> None:
        super().validate(path)
        require(self.r_factor >= 1, f"{path}.r_factor", f"a number >= 1, got {self.r_factor}")


@UPDATE_COMPRESSORS.register("rtopk", "rTop-k: random k of the top r per tensor (Barnes et al. 2020)")
class RTopKCompressor(SparseCompressor):
    name = "rtopk"
    Params = RTopKParams

    def select(self, name: str, flat: torch.Tensor, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        r = min(flat.numel(), max(k, int(round(self.params.r_factor * k))))
        top = top_magnitude(flat, r)
        idx = top[torch.randperm(r, generator=gen)[:k]].sort().values
        return idx, flat[idx]
