r"""BWCP: batch-whitening channel pruning (Shao et al.), trained in by the clients, applied by the server.

**The module** (:class:`BWCP`, Algorithm 1 of the paper) replaces the
BatchNorm of a conv–BN–ReLU block:

- standardize: x̄ = (z − μ)/√(σ² + ε) (batch statistics in training, running
  ones at inference, as BatchNorm);
- batch whitening (eq. 3): x̂ = Σ_N^{-1/2}(γ ⊙ x̄ + β), with the normalized
  covariance Σ_N = (γγᵀ ⊙ ρ)/‖γ‖² (eq. 4 and §4.1; ρ the correlation of x̄
  in the batch), per group of ``group_size`` channels (the paper: 16) so
  large layers stay cheap;
- Σ_N^{-1/2} by T Newton iterations Σ_k = ½(3Σ_{k−1} − Σ_{k−1}³Σ_N),
  Σ_0 = I (eq. 5; Σ_N has trace 1, so ‖I − Σ_N‖₂ < 1 and it converges), and
  a moving average Σ̂_N^{-1/2} ← (1 − g)Σ̂_N^{-1/2} + gΣ_N^{-1/2} for inference;
- the equivalent γ̂ = Σ_N^{-1/2}γ, β̂ = Σ_N^{-1/2}β and the activation
  probability of Proposition 2, P(X̂_c > δ) = ½(1 + erf((β̂_c − δ)/(√2|γ̂_c|))),
  δ = 0.05 (appendix A.5);
- the mask (eq. 6): in training a binary Gumbel-softmax sample
  m_c = σ((log p − log(1 − p) + g₁ − g₂)/τ), g ~ Gumbel(0, 1), τ = 0.5;
  at inference the hard mask m_c = 1[p_c > 0.5]. Output x̂ ⊙ m (eq. 2).

T and g are not given in the paper. We take IterNorm's defaults (Huang et
al. 2019, whose normalization BWCP follows): T = 5 iterations — enough for
Σ_N with trace 1 and a condition number up to ~10² (tested against an
eigendecomposition) — and momentum g = 0.1, BatchNorm's own. Both are
parameters (``iterations``, ``momentum``). Measured on 16-channel groups
with condition number ~80: T = 5 is ~45% of the way (partial whitening, as
IterNorm intends), T ≈ 10 reaches 1e-9; far beyond convergence the
uncoupled form of eq. 5 amplifies rounding errors (by T ≈ 16 it diverges),
which is why ``iterations`` is capped at 12.

**Two departures that make it train in short runs** (both parameters; the
paper's behaviour is ``sharpness = 1, beta_init = 0``). The paper uses "a
sigmoid-alike transformation to make the activation probability approach 0
or 1 in training" (§4.4, Final architecture) without giving it; we sample
the Gumbel mask from σ(κ·logit p), κ = ``sharpness`` (default 10), which
keeps ½ fixed, so the hard mask is unchanged. And β starts at ``beta_init``
(default 0.3) instead of BatchNorm's 0: at β = 0 every channel sits at
p ≈ 0.5 (whitening scales γ̂ and β̂ alike, by about √group), so training is a
per-batch coin flip of every channel and the eval-mode network (hard masks,
running statistics gathered under those flips) computes something else;
from 0.3 every channel starts on and the regularizer turns the weak ones
off. Measured in ``benchmarks/model_compressors.py`` (three epochs of
ResNet-20 on the digits): as written, the pruned model is near chance
(0.14–0.39) at any λ; with both it reaches 0.92 with 31% and 0.89 with 66%
of the inner channels removed (plain BatchNorm: 0.975).

**The regularizer** (eq. 7) λ₁Σ|γ| + λ₂Σβ over every BWCP module is the
loss term clients add, from round ``regularize_from`` on (the paper turns it
on after a warm-up on ImageNet).

**In FL.** The server broadcasts the model with the BWCP modules (a
``bwcp`` structure edit replaces each BatchNorm of an untied conv–BN–ReLU
layer, found on the dependency graph as for UDFC); clients train it; FedAvg
averages every parameter and buffer, the running whitening matrices
included (a convex combination of the clients' moving averages). At a
pruning round the server computes the hard masks from the aggregated
parameters and removes the masked channels physically: in eval mode the
block computes out_c = m_c[(A W_conv)_c ⊛ x + (A b₀ + b)_c] with
A = Σ̂_N^{-1/2}·diag(γ/σ), b = Σ̂_N^{-1/2}(β − γμ/σ), so the conv becomes
one with weights A·W_conv and that bias, its masked rows deleted, the BWCP
module an identity, and the next layer's matching input channels deleted.
That pruned model computes exactly the masked model's eval-mode function
(tested), and from then on the broadcast and every update are smaller.
Residual outputs keep their BatchNorms (the channels tied by additions are
not pruned; the paper's shared residual masks, appendix A.6, are not done).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fedcomp.coding import Payload
from fedcomp.compressors.model import MODEL_COMPRESSORS
from fedcomp.compressors.model.base import (
    Broadcast,
    ModelCompressor,
    Received,
    Snapshot,
    State,
    dense_payload,
    read_whole,
)
from fedcomp.compressors.model.channels import channel_graph
from fedcomp.compressors.model.structure import Architecture, Edit, Structure, structure_op
from fedcomp.config import require

DELTA = 0.05
TAU = 0.5


def newton_inverse_sqrt(sigma: torch.Tensor, iterations: int) -> torch.Tensor:
    """Σ^{-1/2} by eq. 5: Σ_k = ½(3Σ_{k−1} − Σ_{k−1}³Σ), Σ_0 = I (batched over leading dims)."""
    eye = torch.eye(sigma.shape[-1], dtype=sigma.dtype, device=sigma.device).expand_as(sigma)
    s = eye
    for _ in range(iterations):
        s = 0.5 * (3 * s - s @ s @ s @ sigma)
    return s


def activation_probability(gamma_hat: torch.Tensor, beta_hat: torch.Tensor, delta: float = DELTA) -> torch.Tensor:
    """Proposition 2 (Proposition 1 when there is no whitening): P(X̂ > δ) = ½(1 + erf((β̂ − δ)/(√2|γ̂|)))."""
    return 0.5 * (1 + torch.erf((beta_hat - delta) / (math.sqrt(2) * gamma_hat.abs() + 1e-12)))


def sharpen(p: torch.Tensor, sharpness: float) -> torch.Tensor:
    """The "sigmoid-alike transformation" of §4.4 that pushes p towards 0 or 1: σ(κ·logit p).

    The paper names it without a formula; this one is the identity at κ = 1,
    keeps ½ fixed (so the hard mask 1[p > ½] is unchanged) and, for κ > 1,
    makes the Gumbel mask of a channel that is clearly on (or off) nearly
    deterministic, so training sees the network inference will run.
    """
    if sharpness == 1:
        return p
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.sigmoid(sharpness * (torch.log(p) - torch.log1p(-p)))


def group_size_for(channels: int, wanted: int) -> int:
    """The largest divisor of ``channels`` not above ``wanted`` (whitening groups are equal-sized)."""
    return max(g for g in range(1, min(wanted, channels) + 1) if channels % g == 0)


class BWCP(nn.Module):
    """BatchNorm + batch whitening + soft sampling (eq. 2–6); see the module docstring."""

    def __init__(
        self,
        num_features: int,
        group_size: int = 16,
        iterations: int = 5,
        momentum: float = 0.1,
        sharpness: float = 1.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.sharpness = sharpness
        self.group = group_size_for(num_features, group_size)
        self.iterations = iterations
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        groups = num_features // self.group
        self.register_buffer("running_whitening", torch.eye(self.group).repeat(groups, 1, 1))
        self.generator: torch.Generator | None = None
        """Where the Gumbel noise comes from (the client sets its round's generator)."""

    def _grouped(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(-1, self.group)

    def whitening(self, x_bar: torch.Tensor) -> torch.Tensor:
        """Σ_N^{-1/2} per group from a standardized batch (training), also folded into the moving average."""
        n, c = x_bar.shape[:2]
        xg = x_bar.transpose(0, 1).reshape(c // self.group, self.group, -1)
        rho = xg @ xg.transpose(1, 2) / xg.shape[-1]
        g = self._grouped(self.weight)
        sigma_n = (g[:, :, None] * g[:, None, :]) * rho / (g.pow(2).sum(1)[:, None, None] + 1e-12)
        w = newton_inverse_sqrt(sigma_n, self.iterations)
        with torch.no_grad():
            self.running_whitening.lerp_(w.detach(), self.momentum)
        return w

    def probability(self, w: torch.Tensor) -> torch.Tensor:
        """Per channel P(X̂_c > δ) with γ̂ = Σ_N^{-1/2}γ, β̂ = Σ_N^{-1/2}β (Proposition 2)."""
        gamma_hat = (w @ self._grouped(self.weight)[..., None]).reshape(-1)
        beta_hat = (w @ self._grouped(self.bias)[..., None]).reshape(-1)
        return activation_probability(gamma_hat, beta_hat)

    def hard_mask(self) -> torch.Tensor:
        """m_c = 1[P(X̂_c > δ) > 0.5] from the running whitening: the channels inference keeps."""
        with torch.no_grad():
            return (self.probability(self.running_whitening) > 0.5).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_bar = F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training, self.momentum, self.eps)
        if self.training:
            self.num_batches_tracked.add_(1)
            w = self.whitening(x_bar)
        else:
            w = self.running_whitening
        n, c, *spatial = x.shape
        y = x_bar * self.weight.view(1, c, *([1] * len(spatial))) + self.bias.view(1, c, *([1] * len(spatial)))
        yg = y.reshape(n, c // self.group, self.group, -1)
        x_hat = torch.einsum("kij,nkjs->nkis", w, yg).reshape(x.shape)
        p = self.probability(w)
        if self.training:
            mask = gumbel_mask(sharpen(p, self.sharpness), TAU, self.generator)
        else:
            mask = (p > 0.5).to(x.dtype)
        return x_hat * mask.view(1, c, *([1] * len(spatial)))


def gumbel_mask(p: torch.Tensor, tau: float, generator: torch.Generator | None) -> torch.Tensor:
    """Binary Gumbel-softmax (eq. 6): σ((log p − log(1 − p) + g₁ − g₂)/τ)."""
    p = p.clamp(1e-6, 1 - 1e-6)
    u = torch.rand((2, *p.shape), generator=generator, dtype=p.dtype).clamp(1e-10, 1 - 1e-10).to(p.device)
    g = -torch.log(-torch.log(u))
    return torch.sigmoid((torch.log(p) - torch.log1p(-p) + g[0] - g[1]) / tau)


@structure_op("bwcp")
def _bwcp_layer(layer: nn.Module, args: tuple[int, ...]) -> nn.Module:
    """Structure edit ``bwcp`` (group size, iterations, momentum‰, sharpness×10): a BatchNorm2d's BWCP module."""
    if not isinstance(layer, nn.BatchNorm2d) or len(args) != 4:
        raise ValueError("bwcp replaces a BatchNorm2d and takes (group size, iterations, momentum‰, sharpness×10)")
    group, iterations, momentum, sharpness = args
    if not (1 <= group <= 256 and 1 <= iterations <= 12 and 1 <= momentum <= 1000 and 10 <= sharpness <= 1000):
        raise ValueError(f"bwcp arguments out of range: {args}")
    return BWCP(layer.num_features, group, iterations, momentum / 1000, sharpness / 10, layer.eps)


@structure_op("identity")
def _identity(layer: nn.Module, args: tuple[int, ...]) -> nn.Module:
    """Structure edit ``identity``: a layer folded into its neighbour (BWCP after pruning)."""
    if args:
        raise ValueError("identity takes no arguments")
    return nn.Identity()


@structure_op("conv_out")
def _conv_out(layer: nn.Module, args: tuple[int, ...]) -> nn.Module:
    """Structure edit ``conv_out`` (out channels): the conv with fewer outputs and a bias (BN folded in)."""
    if not isinstance(layer, nn.Conv2d) or layer.groups != 1 or len(args) != 1 or not 1 <= args[0] <= 1 << 16:
        raise ValueError(f"conv_out takes an ungrouped Conv2d and one channel count, got {args}")
    return nn.Conv2d(layer.in_channels, args[0], layer.kernel_size, layer.stride, layer.padding, layer.dilation)


@structure_op("conv_in")
def _conv_in(layer: nn.Module, args: tuple[int, ...]) -> nn.Module:
    """Structure edit ``conv_in`` (in channels): a Conv2d or Linear with fewer inputs."""
    if len(args) != 1 or not 1 <= args[0] <= 1 << 16:
        raise ValueError(f"conv_in takes one channel count, got {args}")
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        return nn.Conv2d(args[0], layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                         bias=layer.bias is not None)  # fmt: skip
    if isinstance(layer, nn.Linear):
        return nn.Linear(args[0], layer.out_features, bias=layer.bias is not None)
    raise ValueError(f"conv_in cannot take a {type(layer).__name__}")


# ----------------------------------------------------------------------------- the compressor


@dataclass
class BWCPParams:
    lambda1: float = 4e-5
    """Weight of Σ|γ| (eq. 7; the paper's CIFAR-10 value)."""
    lambda2: float = 8e-5
    """Weight of Σβ (eq. 7; the paper's CIFAR-10 value)."""
    regularize_from: int = 1
    """First round in which clients add the regularizer (a warm-up before it)."""
    prune_at: list[int] = field(default_factory=list)
    """Rounds whose broadcast removes the masked channels (default none: only the final model is pruned)."""
    group_size: int = 16
    """Whitening group (the paper: 16)."""
    iterations: int = 5
    """Newton iterations T (IterNorm's default; not given in the paper)."""
    momentum: float = 0.1
    """Moving-average momentum g of the whitening matrix (BatchNorm's and IterNorm's default)."""
    sharpness: float = 10.0
    """κ of the sigmoid-alike transformation σ(κ·logit p) applied before sampling masks (1 = none; §4.4)."""
    beta_init: float = 0.3
    """Added to every BWCP module's β when the configured model becomes a BWCP model (0 = BatchNorm's init)."""

    def validate(self, path: str) -> None:
        require(self.lambda1 >= 0 and self.lambda2 >= 0, f"{path}.lambda1/lambda2", "numbers >= 0")
        require(self.regularize_from >= 1, f"{path}.regularize_from", "an integer >= 1")
        require(all(r >= 1 for r in self.prune_at), f"{path}.prune_at", "rounds >= 1")
        require(1 <= self.group_size <= 256, f"{path}.group_size", "an integer in 1..256")
        require(
            1 <= self.iterations <= 12, f"{path}.iterations", "an integer in 1..12 (eq. 5 is unstable past convergence)"
        )
        require(0.001 <= self.momentum <= 1, f"{path}.momentum", "a number in [0.001, 1]")
        require(1 <= self.sharpness <= 100, f"{path}.sharpness", "a number in [1, 100] (1 = no transformation)")
        require(0 <= self.beta_init <= 10, f"{path}.beta_init", "a number in [0, 10]")


class SparseRegularizer:
    """λ₁Σ|γ| + λ₂Σβ over every BWCP module of the model (eq. 7)."""

    def __init__(self, lambda1: float, lambda2: float) -> None:
        self.lambda1, self.lambda2 = lambda1, lambda2

    def __call__(self, model: nn.Module) -> torch.Tensor:
        terms = [
            self.lambda1 * m.weight.abs().sum() + self.lambda2 * m.bias.sum()
            for m in model.modules()
            if isinstance(m, BWCP)
        ]
        return torch.stack(terms).sum() if terms else torch.zeros(())


@MODEL_COMPRESSORS.register("bwcp", "BWCP: channels pruned by batch whitening + soft masks, trained in")
class BWCPCompressor(ModelCompressor):
    name = "bwcp"
    Params = BWCPParams

    def __init__(self, params: BWCPParams | None, arch: Architecture, seed: int = 0) -> None:
        super().__init__(params, arch, seed)
        self.triples = channel_graph(arch).triples
        if not self.triples:
            raise ValueError("server_compression: BWCP found no untied conv–BN–ReLU layer in this model")
        p = self.params
        args = (p.group_size, p.iterations, max(1, round(p.momentum * 1000)), round(p.sharpness * 10))
        self.bwcp_edits = tuple(Edit("bwcp", t.bn, args) for t in self.triples)
        self.pruned = False

    def to_bwcp(self, state: State) -> State:
        """The configured model's state with each untied BatchNorm as a BWCP module (identity whitening, β + beta_init)."""
        model = self.arch.build(self.bwcp_edits)
        shifted = {f"{e.layer}.bias" for e in self.bwcp_edits}
        out: State = OrderedDict()
        for key, ref in model.state_dict().items():
            out[key] = state[key].clone() if key in state else ref.clone()
            if key in shifted:
                out[key] += self.params.beta_init
        return out

    def prune(self, state: State, structure: Structure) -> tuple[State, Structure, dict[str, float]]:
        """Fold BN + whitening into each conv, keep the hard-mask channels (exact in eval mode)."""
        model = self.arch.build(structure)
        model.load_state_dict(state)
        model.eval()
        new_edits = [e for e in structure if e.op != "bwcp"]
        folded: dict[str, torch.Tensor] = {}
        removed = total = 0
        for t in self.triples:
            bw = model.get_submodule(t.bn)
            if not isinstance(bw, BWCP):
                continue
            conv, nxt = model.get_submodule(t.conv), model.get_submodule(t.next)
            with torch.no_grad():
                sigma = torch.sqrt(bw.running_var + bw.eps)
                scale = bw.weight / sigma
                w = torch.block_diag(*bw.running_whitening)  # Σ̂_N^{-1/2}, block diagonal
                a = w * scale[None, :]  # Σ̂^{-1/2} diag(γ/σ)
                b = w @ (bw.bias - bw.weight * bw.running_mean / sigma)
                weight = (a @ conv.weight.reshape(conv.out_channels, -1)).reshape(conv.weight.shape)
                bias = b + (a @ conv.bias if conv.bias is not None else 0)
                keep = bw.hard_mask().bool()
                if not keep.any():  # never remove a whole layer: keep its most probable channel
                    keep[bw.probability(bw.running_whitening).argmax()] = True
            kept = int(keep.sum())
            removed += conv.out_channels - kept
            total += conv.out_channels
            folded[f"{t.conv}.weight"] = weight[keep]
            folded[f"{t.conv}.bias"] = bias[keep]
            folded[f"{t.next}.weight"] = nxt.weight.detach()[:, keep]
            new_edits += [
                Edit("conv_out", t.conv, (kept,)),
                Edit("identity", t.bn, ()),
                Edit("conv_in", t.next, (kept,)),
            ]
        order = {name: i for i, (name, _) in enumerate(self.arch.build().named_modules())}
        new_structure = tuple(sorted(new_edits, key=lambda e: order.get(e.layer, -1)))
        new_state: State = OrderedDict()
        for key, ref in self.arch.build(new_structure).state_dict().items():
            value = folded[key] if key in folded else state[key]
            new_state[key] = value.detach().clone().to(ref.dtype)
        return (
            new_state,
            new_structure,
            {"bwcp_channels_removed": float(removed), "bwcp_channel_fraction_removed": removed / max(total, 1)},
        )

    # ------------------------------------------------------------------ server
    def broadcast(self, server_round: int, state: State, structure: Structure) -> Broadcast:
        metrics: dict[str, float] = {}
        if not structure and not self.pruned:  # the configured model: BatchNorms become BWCP modules
            state, structure = self.to_bwcp(state), self.bwcp_edits
        if server_round in self.params.prune_at and not self.pruned:
            state, structure, metrics = self.prune(state, structure)
            self.pruned = True
        regularize = not self.pruned and server_round >= self.params.regularize_from
        params = {"regularize": int(regularize)}
        return Broadcast(dense_payload(self.name, state, structure, params), state, structure, metrics)

    def end_of_round(self, server_round: int, state: State, structure: Structure, last: bool) -> Snapshot:
        if not last or self.pruned:
            return super().end_of_round(server_round, state, structure, last)
        pruned, new_structure, metrics = self.prune(state, structure)  # the shipped copy
        return Snapshot(
            pruned, new_structure, metrics, dense_payload(self.name, pruned, new_structure), is_global=False
        )

    def state_dict(self) -> dict[str, object]:
        return {"pruned": self.pruned}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.pruned = bool(state.get("pruned", False))

    # ------------------------------------------------------------------ client
    def decode_body(self, parsed: Payload, structure: Structure) -> Received:
        regularize = parsed.params.get("regularize", 0) == 1
        loss = SparseRegularizer(self.params.lambda1, self.params.lambda2) if regularize else None
        return Received(read_whole(parsed), structure, loss)
