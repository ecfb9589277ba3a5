"""PowerSGD: rank-r power iteration with warm start and error feedback (Vogels et al. 2019).

Each tensor of two or more dimensions is viewed as a matrix M (n × m: its
first dimension by the rest) and sent as two thin factors (Algorithm 1,
one power-iteration step):

    P ← M Q,    P̂ ← orthogonalize(P),    Q ← Mᵀ P̂,    M̂ = P̂ Qᵀ,

r·(n + m) values instead of n·m. Q starts as a seeded Gaussian and is
then *warm-started*: each round begins from the Q this client computed
the round before (kept in its state), so repeated rounds run the power
method on the slowly changing update (the paper's warm start). Error feedback
(on by default, as in the paper) keeps M − M̂ for the next round.
One-dimensional tensors (biases, norms) are sent dense, as in the paper.
At r ≥ min(n, m) the step is exact: M̂ = M up to rounding.

Departure: the paper all-reduces P and then Q across workers, so that
all workers share one factorization. Federated clients send to a server
that only averages what it receives, so each client factorizes its own
(error-corrected) update and sends P̂ and Q; the server averages the
decoded M̂. That is the paper's algorithm with one worker per client,
paying both factors where all-reduce pays them once.

Wire format: params ``{"rank": r}``; body: tensor after tensor in spec
order, P̂ (n × r') then Q (m × r') for a matrix, r' = min(r, n, m), the
dense values for the others, all fp32.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedcomp.coding import DecodeError, TensorSpec, pack, pack_values, specs_of, unpack_values
from fedcomp.compressors.update.base import (
    UPDATE_COMPRESSORS,
    EncodeContext,
    Encoded,
    State,
    Update,
    UpdateCompressor,
    float32_update,
)
from fedcomp.params import require
from fedcomp.seeding import POWERSGD_INIT, torch_generator

MAX_RANK = 1 << 12
Q_PREFIX = "powersgd_q/"


@dataclass
class PowerSGDParams:
    rank: int = 2
    """r, the rank of each matrix's approximation (the paper's experiments use 1, 2 and 4)."""
    warm_start: bool = True
    """Start each round's power iteration from last round's Q (the paper's default)."""
    error_feedback: bool | str | None = None
    """Keep M − M̂ and add it next round (default on, as in the paper)."""
    lossless: str = "none"
    """A lossless stage after the codec: "none" or "zstd" (the body as one zstd frame, when that is shorter)."""

    def validate(self, path: str) -> None:
        require(1 <= self.rank <= MAX_RANK, f"{path}.rank", f"an integer in 1..{MAX_RANK}")


def matrix_shape(shape: Sequence[int]) -> tuple[int, int] | None:
    """(n, m) for a tensor sent as factors, None for one sent dense."""
    if len(shape) < 2:
        return None
    n = int(shape[0])
    return n, (int(torch.Size(shape).numel()) // n if n else 0)


def orthogonalize(p: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning P's (the paper's Gram–Schmidt, as a reduced QR)."""
    return torch.linalg.qr(p, mode="reduced").Q


@UPDATE_COMPRESSORS.register("powersgd", "PowerSGD: rank-r power iteration, warm start, error feedback (Vogels 2019)")
class PowerSGDCompressor(UpdateCompressor):
    name = "powersgd"
    Params = PowerSGDParams
    error_feedback_default = True

    def encode(self, update: Update, state: State | None = None, ctx: EncodeContext | None = None) -> Encoded:
        ctx = ctx or EncodeContext()
        p: PowerSGDParams = self.params
        gen = torch_generator(self.seed, POWERSGD_INIT, ctx.client_id)
        tensors = float32_update(update)
        state = dict(state or {})
        new_state: State = {}
        chunks, sent = [], OrderedDict()
        for name, t in tensors.items():
            shape = matrix_shape(t.shape)
            if shape is None or 0 in shape:
                chunks.append(pack_values(t))
                sent[name] = t.clone()
                continue
            n, m = shape
            r = min(p.rank, n, m)
            mat = t.reshape(n, m).double()
            q = state.get(Q_PREFIX + name)
            if not p.warm_start or q is None or tuple(q.shape) != (m, r):
                q = torch.randn(m, r, generator=gen, dtype=torch.float64)
            p_hat = orthogonalize(mat @ q.double())
            q = mat.T @ p_hat
            p32, q32 = _as_sent(p_hat), _as_sent(q)
            chunks += [pack_values(p32), pack_values(q32)]
            sent[name] = (p32 @ q32.T).view(t.shape)
            new_state[Q_PREFIX + name] = q32
        specs = specs_of(tensors)
        payload = pack(self.name, {"rank": p.rank}, specs, b"".join(chunks), by_digest=True)
        values = sum(len(c) for c in chunks) // 4
        return Encoded(payload, sent, {"density": values / max(sum(t.numel() for t in tensors.values()), 1)}, new_state)

    def decode_body(self, params: dict[str, Any], specs: Sequence[TensorSpec], body: bytes) -> dict[str, torch.Tensor]:
        rank = params.get("rank")
        if set(params) != {"rank"} or type(rank) is not int or not 1 <= rank <= MAX_RANK:
            raise DecodeError(f"powersgd: params must be an integer rank in 1..{MAX_RANK}, got {str(params)[:80]}")
        sizes = []
        for spec in specs:
            shape = matrix_shape(spec.shape)
            if shape is None or 0 in shape:
                sizes.append(spec.numel)
            else:
                r = min(rank, *shape)
                sizes += [shape[0] * r, shape[1] * r]
        if len(body) != 4 * sum(sizes):
            raise DecodeError(f"powersgd: body is {len(body)} bytes, rank {rank} needs {4 * sum(sizes)}")
        out, pos = OrderedDict(), 0

        def take(count: int) -> torch.Tensor:
            nonlocal pos
            values = unpack_values(body[4 * pos : 4 * (pos + count)], "fp32", count)
            pos += count
            return values

        for spec in specs:
            shape = matrix_shape(spec.shape)
            if shape is None or 0 in shape:
                out[spec.name] = take(spec.numel).view(spec.shape)
                continue
            (n, m), r = shape, min(rank, *shape)
            p_hat, q = take(n * r).view(n, r), take(m * r).view(m, r)
            out[spec.name] = (p_hat @ q.T).view(spec.shape)
        return out


def _as_sent(x: torch.Tensor) -> torch.Tensor:
    """The float32 values the payload carries (the decoder multiplies these)."""
    return x.to(torch.float32).contiguous()
