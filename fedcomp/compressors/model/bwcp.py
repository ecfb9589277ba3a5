r"""BWCP: batch-whitening channel pruning (Shao et al.), trained in by the clients, applied by the server.

**The module** (:class:`BWCP`, Algorithm 1 of the paper) replaces the
BatchNorm of a conv–BN–ReLU block:

- standardize: x̄ = (z − μ)/√(σ² + ε) (batch statistics in training, running
  ones at inference, as BatchNorm);
- batch whitening (eq. 3): x̂ = Σ_N^{-1/2}(γ ⊙ x̄ + β) (scaled, see below), with the normalized
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
parameters (``iterations``, ``momentum``). T = 5 whitens partially, as
IterNorm intends; far beyond convergence the uncoupled form of eq. 5
amplifies rounding errors and diverges, which is why ``iterations`` is
capped at 12 (measured: docs/server_compression.md, departures).

**The whitening keeps BatchNorm's scale.** Eq. 4 normalizes Σ_N to trace
1, so Σ_N^{-1/2} multiplies the output by about √group (4 for groups of 16:
for uncorrelated channels of equal γ, Σ_N = I/16). We use Σ_N^{-1/2}/√group
(the inverse root of Σ_N scaled to trace ``group``, the identity in that
case; eq. 5 still runs on the trace-1 matrix, where it converges), and the
running average starts from the identity, i.e. from BatchNorm. Where a conv
and BatchNorm follow, the scale cancels and only δ's scale changes (now
BatchNorm's, as in Proposition 1); in a residual stream it does not cancel:
every block adds a √group-times larger branch to the identity path, and
ResNet-20 with every BatchNorm whitened diverges (docs/server_compression.md).

**Two departures that make it train in short runs** (both parameters; the
paper's behaviour is ``sharpness = 1, beta_init = 0``). The paper uses "a
sigmoid-alike transformation to make the activation probability approach 0
or 1 in training" (§4.4, Final architecture) without giving it; we sample
the Gumbel mask from σ(κ·logit p), κ = ``sharpness`` (default 10), which
keeps ½ fixed, so the hard mask is unchanged. And β starts at ``beta_init``
(default 0.3) instead of BatchNorm's 0: at β = 0 every channel sits at
p = Φ(−δ/|γ̂|) ≈ 0.48, so training is a
per-batch coin flip of every channel and the eval-mode network (hard masks,
running statistics gathered under those flips) computes something else;
from 0.3 every channel starts on and the regularizer turns the weak ones
off. What each changes is measured by ``benchmarks/model_compressors.py``
(the numbers: docs/server_compression.md, BWCP).

**The baseline** (``variant = "network_slimming"``; the paper's Tables 1
and 3, Liu et al. 2017): plain BatchNorm, clients add λ₁Σ|γ| over the
BatchNorms of the untied conv–BN–ReLU layers (:class:`SlimmingRegularizer`,
Liu et al.'s eq. 1 restricted to the channels that can go), and at the
pruning round the server removes the channels with the smallest |γ|, one
threshold over all those layers (each keeps one channel), the fewest that
remove ``flops_removed`` of the FLOPs (:meth:`BWCPCompressor.slim`; set it
to the ``bwcp_flops_removed`` a BWCP run reports for matched FLOPs). No
compensation, no whitening; the same statistics round before the pruning.
Departures: Liu et al. regularize every BatchNorm and set the threshold by
a channel percentile; here residual streams (tied channels) are neither
regularized nor pruned, and the threshold is set by FLOPs.

**The regularizer** (eq. 7) λ₁Σ|γ| + λ₂Σβ over every BWCP module is the
loss term clients add, from round ``regularize_from`` on (the paper turns it
on after a warm-up on ImageNet).

**In FL.** The server broadcasts the model with the BWCP modules (a
``bwcp`` structure edit replaces each BatchNorm of an untied conv–BN–ReLU
layer, found on the dependency graph as for UDFC; ``bwcp_shared`` those of
the residual streams below); clients train it; FedAvg
averages every parameter and buffer, the running whitening matrices
included (a convex combination of the clients' moving averages). Such
averaged statistics are stale (each client's were gathered under its own
moving weights and Gumbel masks), and the hard masks and the fold read
them; so before each pruning (``recalibrate``, default on) the server runs
a statistics round: the round's clients measure every normalization
layer's input moments on their data under the hard masks, and the server
sets the running mean, variance and whitening from their example-weighted
mean (:mod:`.statistics`, :mod:`fedcomp.flower.recalibration`). At a
pruning round the server computes the hard masks from the aggregated
parameters and removes the masked channels physically: in eval mode the
block computes out_c = m_c[(A W_conv)_c ⊛ x + (A b₀ + b)_c] with
A = Σ̂_N^{-1/2}·diag(γ/σ), b = Σ̂_N^{-1/2}(β − γμ/σ), so the conv becomes
one with weights A·W_conv and that bias, its masked rows deleted, the BWCP
module a BatchNorm that is the identity in eval mode (so training after
the pruning round is still normalized), and the next layer's matching input
channels deleted. That pruned model computes exactly the masked model's
eval-mode function (tested), and from then on the broadcast and every
update are smaller.

**Residual streams** (appendix A.6). Channels tied by additions (a
stage's block outputs, the stem or a conv–BN shortcut feeding them, found
on the dependency graph as :class:`~fedcomp.compressors.model.channels.Stream`)
get BWCP modules too, and the stream shares one mask: the first BW layer in
module order (the stem's, or the first block's of a stage) is its source and
every other one multiplies by the source's mask — the paper's "for shortcut
with identity mappings, we use the mask in the previous layer". A
parameter-free shortcut that changes the width (ResNet-20's option A: it
subsamples and zero-pads) has no BW layer of its own; its output is
multiplied by the stream's mask too (:class:`MaskedShortcut`), as the paper
masks both branches of a sum. Simplification: for a conv–BN shortcut the
paper uses the product of the shortcut's and the block's masks, here the
block's (the stream's source) alone. At pruning, every member conv is folded
and thinned with the stream's mask, every consumer loses the matching input
channels and a width-changing shortcut becomes a ``channel_map`` that
copies what survives on both sides — again exactly the masked model (tested
on ResNet-20 and torchvision's ResNet-18). ``share_residual = false`` prunes
the untied layers only.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedcomp.coding import Payload
from fedcomp.compressors.model.base import (
    MODEL_COMPRESSORS,
    Broadcast,
    ModelCompressor,
    Received,
    Snapshot,
    State,
    dense_payload,
    read_whole,
)
from fedcomp.compressors.model.channels import channel_graph, resize_edits
from fedcomp.compressors.model.structure import Architecture, Edit, Structure, after_build, structure_op
from fedcomp.compressors.model.udfc import UDFCParams, prune_layer
from fedcomp.params import ConfigError, require

DELTA = 0.05
TAU = 0.5

logger = logging.getLogger(__name__)


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


def logit(p: torch.Tensor) -> torch.Tensor:
    """log p − log(1 − p), with p kept off 0 and 1."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


def sharpen(p: torch.Tensor, sharpness: float) -> torch.Tensor:
    """The "sigmoid-alike transformation" of §4.4 that pushes p towards 0 or 1: σ(κ·logit p).

    The paper names it without a formula; this one is the identity at κ = 1,
    keeps ½ fixed (so the hard mask 1[p > ½] is unchanged) and, for κ > 1,
    makes the Gumbel mask of a channel that is clearly on (or off) nearly
    deterministic, so training sees the network inference will run.
    """
    if sharpness == 1:
        return p
    return torch.sigmoid(sharpness * logit(p))


def group_size_for(channels: int, wanted: int) -> int:
    """The largest divisor of ``channels`` not above ``wanted`` (whitening groups are equal-sized)."""
    return max(g for g in range(1, min(wanted, channels) + 1) if channels % g == 0)


class SharedMask:
    """A layer of a residual stream (appendix A.6): the stream's source publishes its mask, the others read it.

    ``stream`` < 0: not in a stream. Links are set by :func:`link_streams`
    after the model is built; the published mask lives for one forward pass
    of the whole model (a hook on the root clears it).
    """

    stream: int = -1
    is_source: bool = False

    def _init_shared(self, stream: int, is_source: bool) -> None:
        self.stream, self.is_source = stream, is_source
        self._source: list[SharedMask] = []  # a list, so the source is not registered as a child module
        self._published: list[torch.Tensor] = []

    def publish(self, mask: torch.Tensor) -> torch.Tensor:
        if self.stream >= 0 and self.is_source:
            self._published[:] = [mask]
        return mask

    def shared(self) -> torch.Tensor:
        """The stream's mask of this forward pass."""
        if not self._source or not self._source[0]._published:
            raise RuntimeError(f"BWCP stream {self.stream}: a shared mask was read before the stream's source ran")
        return self._source[0]._published[0]


@after_build
def link_streams(model: nn.Module) -> None:
    """Point every follower of a stream at its source; one source per stream (ValueError otherwise)."""
    layers = [m for m in model.modules() if isinstance(m, SharedMask) and m.stream >= 0]
    if not layers:
        return
    sources: dict[int, SharedMask] = {}
    for m in layers:
        if m.is_source and sources.setdefault(m.stream, m) is not m:
            raise ValueError(f"BWCP stream {m.stream} has two sources")
    for m in layers:
        if m.stream not in sources:
            raise ValueError(f"BWCP stream {m.stream} has no source")
        m._source[:] = [] if m.is_source else [sources[m.stream]]
    model.register_forward_hook(_forget_masks)


def _forget_masks(model: nn.Module, _inputs: object, _output: object) -> None:
    for m in model.modules():
        if isinstance(m, SharedMask) and m.is_source:
            m._published.clear()


class BWCP(SharedMask, nn.Module):
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
        self._init_shared(-1, False)  # untied; bwcp_shared puts it in a stream
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
        self.calibrating = False
        """Measuring statistics (:func:`~fedcomp.compressors.model.statistics.measure`): batch statistics, hard masks."""

    def _grouped(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(-1, self.group)

    def whitening(self, x_bar: torch.Tensor) -> torch.Tensor:
        """Σ_N^{-1/2}/√group per group from a standardized batch (training), also folded into the moving average.

        Eq. 5 runs on Σ_N of trace 1 (where it converges); dividing by √group
        keeps BatchNorm's scale (see the module docstring).
        """
        n, c = x_bar.shape[:2]
        xg = x_bar.transpose(0, 1).reshape(c // self.group, self.group, -1)
        w = self._whitening_of(xg @ xg.transpose(1, 2) / xg.shape[-1], self._grouped(self.weight))
        if self.training:
            with torch.no_grad():
                self.running_whitening.lerp_(w.detach(), self.momentum)
        return w

    def _whitening_of(self, rho: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Σ_N = (γγᵀ ⊙ ρ)/‖γ‖² (eq. 4) per group, then Σ_N^{-1/2}/√group by eq. 5."""
        sigma_n = (g[:, :, None] * g[:, None, :]) * rho / (g.pow(2).sum(1)[:, None, None] + 1e-12)
        return newton_inverse_sqrt(sigma_n, self.iterations) / math.sqrt(self.group)

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, cov: torch.Tensor) -> None:
        """Running mean, variance and whitening from the mean (C,) and covariance (G, g, g) of the input.

        σ² = diag C, ρ = C/(σ̃σ̃ᵀ) with σ̃ = √(σ² + ε): the correlation of
        x̄ = (z − μ)/σ̃, which training computes per batch, over the data the
        moments came from; then eq. 4–5 as in training
        (:mod:`~fedcomp.compressors.model.statistics`). The variance is the
        biased one (BatchNorm keeps the unbiased; the counts are thousands).
        """
        cov = cov.double()
        cov = 0.5 * (cov + cov.transpose(1, 2))
        var = torch.diagonal(cov, dim1=1, dim2=2).clamp_min(0)
        s = torch.sqrt(var + self.eps)
        rho = cov / (s[:, :, None] * s[:, None, :])
        w = self._whitening_of(rho, self._grouped(self.weight).double())
        self.running_mean.copy_(mean)
        self.running_var.copy_(var.reshape(-1))
        self.running_whitening.copy_(w)

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
        if self.calibrating:  # batch statistics and whitening, hard masks, no buffer moves (statistics.measure)
            x_bar = F.batch_norm(x, None, None, None, None, True, 0.0, self.eps)
            w = self.whitening(x_bar)
        elif self.training:
            x_bar = F.batch_norm(x, self.running_mean, self.running_var, None, None, True, self.momentum, self.eps)
            self.num_batches_tracked.add_(1)
            w = self.whitening(x_bar)
        else:
            x_bar = F.batch_norm(x, self.running_mean, self.running_var, None, None, False, 0.0, self.eps)
            w = self.running_whitening
        n, c, *spatial = x.shape
        y = x_bar * self.weight.view(1, c, *([1] * len(spatial))) + self.bias.view(1, c, *([1] * len(spatial)))
        yg = y.reshape(n, c // self.group, self.group, -1)
        x_hat = torch.einsum("kij,nkjs->nkis", w, yg).reshape(x.shape)
        if self.stream >= 0 and not self.is_source:
            mask = self.shared()  # A.6: the stream's mask, not this layer's own
        elif self.training:
            mask = self.publish(gumbel_mask(sharpen(self.probability(w), self.sharpness), TAU, self.generator))
        else:
            mask = self.publish(self.hard_mask().to(x.dtype))  # w is the running whitening here
        return x_hat * mask.view(1, c, *([1] * len(spatial)))


class MaskedShortcut(SharedMask, nn.Module):
    """A channel-mapping shortcut whose output is multiplied by its stream's mask (A.6: both branches share it)."""

    def __init__(self, inner: nn.Module, stream: int) -> None:
        super().__init__()
        self._init_shared(stream, False)
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out * self.shared().view(1, -1, *([1] * (out.dim() - 2)))


def gumbel_mask(p: torch.Tensor, tau: float, generator: torch.Generator | None) -> torch.Tensor:
    """Binary Gumbel-softmax (eq. 6): σ((log p − log(1 − p) + g₁ − g₂)/τ)."""
    u = torch.rand((2, *p.shape), generator=generator, dtype=p.dtype).clamp(1e-10, 1 - 1e-10).to(p.device)
    g = -torch.log(-torch.log(u))
    return torch.sigmoid((logit(p) + g[0] - g[1]) / tau)


@structure_op("bwcp", wraps=True)
def _bwcp_layer(layer: nn.Module, args: tuple[int, ...]) -> nn.Module:
    """Structure edit ``bwcp`` (group size, iterations, momentum‰, sharpness×10): a BatchNorm2d's BWCP module."""
    if not isinstance(layer, nn.BatchNorm2d) or len(args) != 4:
        raise ValueError("bwcp replaces a BatchNorm2d and takes (group size, iterations, momentum‰, sharpness×10)")
    group, iterations, momentum, sharpness = args
    if not (1 <= group <= 256 and 1 <= iterations <= 12 and 1 <= momentum <= 1000 and 10 <= sharpness <= 1000):
        raise ValueError(f"bwcp arguments out of range: {args}")
    return BWCP(layer.num_features, group, iterations, momentum / 1000, sharpness / 10, layer.eps)


@structure_op("bwcp_shared", wraps=True)
def _bwcp_shared(layer: nn.Module, args: tuple[int, ...]) -> nn.Module:
    """Structure edit ``bwcp_shared`` (the ``bwcp`` arguments, stream, 1 if its source): a BWCP layer of a stream."""
    if len(args) != 6 or args[4] > 4096 or args[5] > 1:
        raise ValueError("bwcp_shared takes (group size, iterations, momentum‰, sharpness×10, stream, is source)")
    bw = _bwcp_layer(layer, args[:4])
    bw._init_shared(args[4], bool(args[5]))
    return bw


@structure_op("shared_mask", wraps=True)
def _shared_mask(layer: nn.Module, args: tuple[int, ...]) -> nn.Module:
    """Structure edit ``shared_mask`` (stream): a channel-mapping shortcut masked by its stream."""
    if not hasattr(layer, "channel_sources") or len(args) != 1 or args[0] > 4096:
        raise ValueError("shared_mask wraps a channel-mapping shortcut and takes (stream,)")
    return MaskedShortcut(layer, args[0])


@structure_op("conv_out")
def _conv_out(layer: nn.Module, args: tuple[int, ...]) -> nn.Module:
    """Structure edit ``conv_out`` (out channels[, in channels]): the conv thinner, with a bias (BN folded in)."""
    if not isinstance(layer, nn.Conv2d) or layer.groups != 1 or len(args) not in (1, 2):
        raise ValueError(f"conv_out takes an ungrouped Conv2d and (out[, in]) channel counts, got {args}")
    if not all(1 <= a <= 1 << 16 for a in args):
        raise ValueError(f"conv_out channel counts out of range: {args}")
    inputs = args[1] if len(args) == 2 else layer.in_channels
    return nn.Conv2d(inputs, args[0], layer.kernel_size, layer.stride, layer.padding, layer.dilation)


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
    """Rounds whose broadcast removes the masked channels (default none: only the final model is pruned).

    Several rounds prune progressively: after each but the last, the thinned layers get BWCP modules again
    (identity whitening, the folded statistics: the same function), the regularizer stays on, and the next
    pruning removes what has closed since; after the last, plain BatchNorm trains on."""
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
    share_residual: bool = True
    """Also prune channels tied by residual additions, one mask per stream (appendix A.6); off: untied layers only."""
    recalibrate: bool = True
    """Before each pruning (and the final one) ask the round's clients for the normalization layers' moments under
    the hard masks and set the running statistics and whitening from them (:mod:`.statistics`)."""
    recalibrate_samples: int = 512
    """Examples each client measures statistics on (at most its own data)."""
    recalibrate_eval: bool = False
    """Also run a statistics round before each server-side evaluation while the model has BWCP modules, so the
    rows before the last pruning report the model under its measured statistics instead of the averaged ones.
    It costs the model, dense, to each of the round's clients per evaluation (counted in the row), and changes
    only what is evaluated: training continues from the aggregated model."""

    variant: Literal["bwcp", "network_slimming"] = "bwcp"
    """"network_slimming": the baseline of the paper's Tables 1 and 3 (Liu et al. 2017) instead of BWCP: plain
    BatchNorm, clients add λ₁Σ|γ| over the prunable layers' BatchNorms, and the server removes the channels with
    the smallest |γ| (one threshold over all layers) until ``flops_removed`` of the FLOPs are gone."""
    flops_removed: float = 0.5
    """network_slimming: the fraction of the model's FLOPs (multiply-accumulates of conv and linear layers) its
    pruning removes; set it to what BWCP removed (``bwcp_flops_removed`` in its rows) for matched FLOPs."""

    def schedule_problem(self, rounds: int) -> str:
        late = [r for r in self.prune_at if r > rounds]
        if late:
            return f"prune_at = {late} is after the last round ({rounds}): those rounds never come"
        if len(set(self.prune_at)) != len(self.prune_at):
            return f"prune_at = {self.prune_at} names a round twice"
        if self.regularize_from > rounds:
            return f"regularize_from = {self.regularize_from} is after the last round ({rounds})"
        if self.prune_at and self.regularize_from >= max(self.prune_at):
            return (f"regularize_from = {self.regularize_from} is not before the last pruning (round "
                    f"{max(self.prune_at)}): the regularizer would never act on a model still to be pruned")  # fmt: skip
        return ""

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
        # The structure edit carries them as integers (momentum in thousandths, sharpness in tenths): refuse
        # what would not travel exactly (main ran momentum 0.0015 as 0.002).
        require(_exact(self.momentum, 1000), f"{path}.momentum", f"a multiple of 0.001, got {self.momentum}")
        require(_exact(self.sharpness, 10), f"{path}.sharpness", f"a multiple of 0.1, got {self.sharpness}")
        require(0 <= self.beta_init <= 10, f"{path}.beta_init", "a number in [0, 10]")
        require(1 <= self.recalibrate_samples <= 1_000_000, f"{path}.recalibrate_samples", "an integer in 1..1000000")
        require(self.variant in ("bwcp", "network_slimming"), f"{path}.variant", '"bwcp" or "network_slimming"')
        require(0 < self.flops_removed < 1, f"{path}.flops_removed", "a fraction of the FLOPs in (0, 1)")
        slimming = self.variant == "network_slimming"
        require(slimming or self.flops_removed == 0.5, f"{path}.flops_removed",
                'set only with variant = "network_slimming" (BWCP\'s masks decide what it removes)')  # fmt: skip
        require(not slimming or len(self.prune_at) <= 1, f"{path}.prune_at",
                "at most one round with variant = \"network_slimming\" (it prunes once)")  # fmt: skip


def _exact(value: float, scale: int) -> bool:
    return abs(value * scale - round(value * scale)) < 1e-9 * scale


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


class SlimmingRegularizer:
    """λ₁Σ|γ| over the named BatchNorms (network slimming's sparsity term, Liu et al. 2017, eq. 1)."""

    def __init__(self, lambda1: float, layers: list[str]) -> None:
        self.lambda1, self.layers = lambda1, list(layers)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        terms = [model.get_submodule(name).weight.abs().sum() for name in self.layers]
        return self.lambda1 * torch.stack(terms).sum() if terms else torch.zeros(())


def output_positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Per conv and linear layer, the output positions of one example (a conv's H·W; 1 for a linear layer)."""
    positions: dict[str, int] = {}

    def record(name: str):  # noqa: ANN202 - a forward hook
        def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
            positions[name] = out[0, 0].numel() if out.dim() > 2 else out[0].numel() // out.shape[-1]

        return hook

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(record(n)) for n, m in layers]
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return positions


@MODEL_COMPRESSORS.register("bwcp", "BWCP: channels pruned by batch whitening + soft masks, trained in the federation")
class BWCPCompressor(ModelCompressor):
    name = "bwcp"
    Params = BWCPParams

    def __init__(self, params: BWCPParams | None, arch: Architecture, seed: int = 0) -> None:
        super().__init__(params, arch, seed)
        graph = channel_graph(arch)
        self.triples = graph.triples
        self.slimming = self.params.variant == "network_slimming"
        self.streams = graph.streams if self.params.share_residual and not self.slimming else ()
        if not self.triples and not self.streams:
            raise ValueError("server_compression: BWCP found no conv–BN layer whose channels it can remove")
        p = self.params
        if not self.slimming:
            self._check_groups(arch)
        args = (p.group_size, p.iterations, max(1, round(p.momentum * 1000)), round(p.sharpness * 10))
        edits = [Edit("bwcp", t.bn, args) for t in self.triples]
        for k, stream in enumerate(self.streams):
            edits += [Edit("bwcp_shared", bn, (*args, k, int(i == 0))) for i, (_, bn) in enumerate(stream.members)]
            edits += [Edit("shared_mask", m, (k,)) for m in stream.maps_in]
        self.bwcp_edits = () if self.slimming else tuple(edits)
        self.prunes_done = 0
        """Prunings applied so far (``prune_at`` in order; the final model's when ``prune_at`` is empty)."""

    @property
    def pruned(self) -> bool:
        """Every pruning done: the model is plain BatchNorm from here on."""
        return self.prunes_done >= max(1, len(self.params.prune_at))

    def _prunes_now(self, server_round: int) -> bool:
        due = sorted(self.params.prune_at)
        return self.prunes_done < len(due) and server_round == due[self.prunes_done]

    def _check_groups(self, arch: Architecture) -> None:
        """Refuse a ``group_size`` that some layer cannot use as set (main ran 7 as 4 on 16 channels, silently).

        A layer narrower than the group is whitened as one group (a smaller group is the only choice there).
        """
        with torch.random.fork_rng():  # reading the widths must not move the caller's random stream
            base = arch.build()
        names = [t.bn for t in self.triples] + [bn for stream in self.streams for _, bn in stream.members]
        wanted = self.params.group_size
        bad = {}
        for name in names:
            channels = base.get_submodule(name).num_features
            if channels > wanted and channels % wanted:
                bad[name] = (channels, group_size_for(channels, wanted))
        if bad:
            name, (channels, used) = next(iter(bad.items()))
            raise ConfigError(
                f"server_compression.group_size = {wanted} does not divide the {channels} channels of {name!r} "
                f"({len(bad)} layer(s)): it would whiten groups of {used}; use a divisor of every layer's width"
            )

    def to_bwcp(self, state: State) -> State:
        """The configured model's state with its BatchNorms as BWCP modules (identity whitening, β + beta_init).

        Only modules whose own mask is used get β + beta_init: untied layers and
        each stream's source. A stream follower uses its source's mask, so
        shifting its β would only add beta_init to every residual branch
        (main did: mean first-epoch loss 5.13 against plain BatchNorm's 1.96,
        2.80 with the shift where masks are used).
        """
        model = self.arch.build(self.bwcp_edits)
        shifted = {
            f"{e.layer}.bias" for e in self.bwcp_edits if e.op == "bwcp" or (e.op == "bwcp_shared" and e.args[-1] == 1)
        }
        out: State = OrderedDict()
        for key, ref in model.state_dict().items():
            out[key] = state[key].clone() if key in state else ref.clone()
            if key in shifted:
                out[key] += self.params.beta_init
        return out

    def prune(
        self, state: State, structure: Structure, keep_bwcp: bool = False
    ) -> tuple[State, Structure, dict[str, float]]:
        """Fold BN + whitening into each conv and keep the hard-mask channels (exact in eval mode).

        An untied layer keeps the channels of its own mask; a residual stream
        those of its source's mask, in every member conv, every consumer and
        the channel-mapping shortcuts on either side of it. ``keep_bwcp``
        (progressive pruning): the thinned layers become BWCP modules again,
        with identity whitening over the folded statistics, which computes the
        same function (a kept channel has β̂ > δ, so its new hard mask is 1).
        """
        if self.slimming:
            return self.slim(state, structure)
        model = self.arch.build(structure)
        model.load_state_dict(state)
        model.eval()
        work: dict[str, torch.Tensor] = dict(state)
        earlier = [e for e in structure if e.op not in ("bwcp", "bwcp_shared", "shared_mask")]
        edits: list[Edit] = []
        reads: list[tuple[str, torch.Tensor]] = []  # (consumer, kept input channels)
        removed = total = 0
        kept_by_stream: dict[int, torch.Tensor] = {}
        outs: dict[str, int] = {}
        layers = [(((t.conv, t.bn),), (t.next,), -1) for t in self.triples]
        layers += [(st.members, st.consumers, k) for k, st in enumerate(self.streams)]
        for members, consumers, stream in layers:
            source = model.get_submodule(members[0][1])
            if not isinstance(source, BWCP):
                continue
            keep = self._keep(source)
            for conv, bn in members:
                self._fold(model, conv, bn, keep, work)
                outs[conv] = int(keep.sum())
                edits.append(Edit("resize", bn, (int(keep.sum()),)))
                removed += int((~keep).sum())
                total += keep.numel()
            reads += [(c, keep) for c in consumers]
            if stream >= 0:
                kept_by_stream[stream] = keep
        ins: dict[str, int] = {}
        for name, keep in reads:  # after the folds: a conv may be both a member and a consumer
            work[f"{name}.weight"] = work[f"{name}.weight"][:, keep]
            ins[name] = int(keep.sum())
        edits += [Edit("conv_out", c, (n, ins[c]) if c in ins else (n,)) for c, n in outs.items()]
        edits += [Edit("conv_in", c, (n,)) for c, n in ins.items() if c not in outs]
        edits += self._remap_shortcuts(model, kept_by_stream)
        # An earlier pruning's edit of a layer this one edits again is replaced (the new one has the counts).
        replaced = {(e.op, e.layer) for e in edits}
        edits = [e for e in earlier if (e.op, e.layer) not in replaced] + edits
        if keep_bwcp:  # after the resize of the same layer (a stable sort keeps the order)
            edits += list(self.bwcp_edits)
        order = {name: i for i, (name, _) in enumerate(self.arch.build().named_modules())}
        new_structure = tuple(sorted(edits, key=lambda e: order.get(e.layer, -1)))
        new_state: State = OrderedDict()
        for key, ref in self.arch.build(new_structure).state_dict().items():
            # A re-inserted BWCP module starts from identity whitening (the fresh module's).
            value = ref if key.endswith("running_whitening") else work[key]
            new_state[key] = value.detach().clone().to(ref.dtype)
        return (
            new_state,
            new_structure,
            {
                "bwcp_channels_removed": float(removed),
                "bwcp_channel_fraction_removed": removed / max(total, 1),
                "bwcp_flops_removed": 1 - self.macs(new_structure) / self.macs(()),
            },
        )

    def slim(self, state: State, structure: Structure) -> tuple[State, Structure, dict[str, float]]:
        """Network slimming's pruning: the channels of the untied layers with the smallest |γ|, one threshold over
        all of them (each layer keeps one), as few as remove ``flops_removed`` of the model's FLOPs.

        The removed channels go plainly (the conv's rows, the BatchNorm's entries, the next layer's inputs: no
        compensation, :func:`~fedcomp.compressors.model.udfc.prune_layer`); the fewest that reach the target
        are found by bisection over the number of channels taken in the |γ| order (FLOPs of the thinned
        model, measured by a forward pass).
        """
        if structure:
            raise ValueError(f"network slimming prunes the configured model once, got a structure {structure[:2]}")
        with torch.random.fork_rng():  # building the model must not move the caller's random stream
            eps = {n: m.eps for n, m in self.arch.build().named_modules() if isinstance(m, nn.BatchNorm2d)}
        gammas = [state[f"{t.bn}.weight"].detach().double().abs().numpy() for t in self.triples]
        order = sorted((float(g[c]), i, c) for i, g in enumerate(gammas) for c in range(g.size))
        caps = [g.size - 1 for g in gammas]

        def counts(n: int) -> list[int]:
            out = [0] * len(gammas)
            for _, i, _ in order:
                if n == 0:
                    break
                if out[i] < caps[i]:
                    out[i] += 1
                    n -= 1
            return out

        def thinned(per_layer: list[int]) -> State:
            work = OrderedDict((k, v.clone()) for k, v in state.items())
            plain = UDFCParams(compensation="none", criterion="gamma")
            rng = np.random.default_rng(0)  # unused: the |γ| criterion is deterministic
            for t, n in zip(self.triples, per_layer, strict=True):
                if n:
                    prune_layer(work, t, None, eps[t.bn], n, plain, rng)
            return work

        def macs(work: State) -> int:
            return self.macs(resize_edits(self.arch, work))

        base = macs(state)
        target = self.params.flops_removed * base
        lo, hi = 0, sum(caps)
        if base - macs(thinned(counts(hi))) < target:
            logger.warning("network slimming: every untied layer down to one channel removes less than %.0f%% "
                           "of the FLOPs; pruning that far", 100 * self.params.flops_removed)  # fmt: skip
            lo = hi
        while lo < hi:  # the smallest n whose thinned model removes the target (FLOPs fall as n grows)
            mid = (lo + hi) // 2
            if base - macs(thinned(counts(mid))) >= target:
                hi = mid
            else:
                lo = mid + 1
        per_layer = counts(lo)
        work = thinned(per_layer)
        new_structure = resize_edits(self.arch, work)
        removed, total = sum(per_layer), sum(g.size for g in gammas)
        return (
            work,
            new_structure,
            {
                "bwcp_channels_removed": float(removed),
                "bwcp_channel_fraction_removed": removed / max(total, 1),
                "bwcp_flops_removed": 1 - macs(work) / base,
            },
        )

    def macs(self, structure: Structure) -> int:
        """FLOPs of the model in ``structure``: multiply-accumulates of one forward pass, conv weights × output
        positions plus linear weights (the papers' count). Channel pruning keeps every layer's output size, so
        the positions are the configured model's, measured once."""
        if not hasattr(self, "_positions"):
            with torch.random.fork_rng():  # building the model must not move the caller's random stream
                self._positions = output_positions(self.arch.build(), self.arch.input_shape)
        numel = {s.name: s.numel for s in self.arch.specs(structure)}
        return sum(numel.get(f"{n}.weight", 0) * p for n, p in self._positions.items())

    @staticmethod
    def _keep(source: BWCP) -> torch.Tensor:
        """The hard mask as booleans; never a whole layer (its most probable channel stays)."""
        with torch.no_grad():
            keep = source.hard_mask().bool()
            if not keep.any():
                keep[source.probability(source.running_whitening).argmax()] = True
        return keep

    @staticmethod
    def _fold(model: nn.Module, conv_name: str, bn_name: str, keep: torch.Tensor, work: dict) -> None:
        """conv ← Σ̂^{-1/2}diag(γ/σ)·W with bias Σ̂^{-1/2}(β − γμ/σ) (+ the conv's own), kept rows only.

        The BWCP layer becomes a BatchNorm that is the identity in eval mode
        (running mean and bias E[x̂] = Σ̂^{-1/2}β, running variance
        ‖γ_group‖²/group, Var[x̂] when whitened, weight √(var + ε)): the pruned
        model computes the masked one exactly, and when the federation trains
        on, every layer is still normalized (a ResNet with all BatchNorms
        folded away diverges).
        """
        conv, bw = model.get_submodule(conv_name), model.get_submodule(bn_name)
        with torch.no_grad():
            sigma = torch.sqrt(bw.running_var + bw.eps)
            w = torch.block_diag(*bw.running_whitening)  # Σ̂_N^{-1/2}, block diagonal
            a = w * (bw.weight / sigma)[None, :]
            b = w @ (bw.bias - bw.weight * bw.running_mean / sigma)
            weight = (a @ conv.weight.reshape(conv.out_channels, -1)).reshape(conv.weight.shape)
            bias = b + (a @ conv.bias if conv.bias is not None else 0)
            mean = (w @ bw.bias)[keep]
            var = (bw._grouped(bw.weight).pow(2).sum(1) / bw.group).repeat_interleave(bw.group)[keep]
        work[f"{conv_name}.weight"] = weight[keep]
        work[f"{conv_name}.bias"] = bias[keep]
        work[f"{bn_name}.running_mean"], work[f"{bn_name}.running_var"] = mean, var
        work[f"{bn_name}.weight"], work[f"{bn_name}.bias"] = torch.sqrt(var + bw.eps), mean.clone()
        work[f"{bn_name}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)

    def _remap_shortcuts(self, model: nn.Module, kept_by_stream: dict[int, torch.Tensor]) -> list[Edit]:
        """``channel_map`` edits: each shortcut between two streams copies what survives on both sides.

        Read off ``model``'s shortcuts as they are (after an earlier pruning, already channel maps).
        """
        edits = []
        for k, stream in enumerate(self.streams):
            for name in stream.maps_in:
                into = kept_by_stream.get(k)
                feeding = [j for j, st in enumerate(self.streams) if name in st.maps_out]
                layer = model.get_submodule(name)
                layer = layer.inner if isinstance(layer, MaskedShortcut) else layer
                sources = layer.channel_sources()
                kept_in = kept_by_stream.get(feeding[0]) if feeding else None
                kept_in = torch.ones(max(sources) + 1, dtype=torch.bool) if kept_in is None else kept_in
                position = torch.cumsum(kept_in, 0) - 1  # old input channel → its index after pruning
                outputs = range(len(sources)) if into is None else torch.nonzero(into).flatten().tolist()
                new = [int(position[sources[o]]) + 1 if sources[o] >= 0 and kept_in[sources[o]] else 0 for o in outputs]
                edits.append(Edit("channel_map", name, (layer.stride, int(kept_in.sum()), *new)))
        return edits

    # ------------------------------------------------------------------ server
    def statistics_wanted(self, server_round: int, structure: Structure, last: bool, evaluating: bool = False) -> int:
        """Examples per client to recalibrate on before this round's pruning, or before its evaluation with
        ``recalibrate_eval`` (0: none); see :mod:`.statistics`."""
        if self.pruned or not (self.slimming or any(e.op.startswith("bwcp") for e in structure)):
            return 0
        prunes = self.params.recalibrate and (self._prunes_now(server_round) or (last and not self.params.prune_at))
        evaluates = evaluating and self.params.recalibrate_eval
        return self.params.recalibrate_samples if prunes or evaluates else 0

    def broadcast(self, server_round: int, state: State, structure: Structure) -> Broadcast:
        metrics: dict[str, float] = {}
        if not structure and not self.pruned and not self.slimming:  # the configured model: BWCP modules
            state, structure = self.to_bwcp(state), self.bwcp_edits
        if self._prunes_now(server_round):
            more = self.prunes_done + 1 < len(self.params.prune_at)
            state, structure, metrics = self.prune(state, structure, keep_bwcp=more)
            self.prunes_done += 1
            metrics["bwcp_prunings"] = float(self.prunes_done)
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
        return {"prunes_done": self.prunes_done}

    def load_state_dict(self, state: dict[str, object]) -> None:
        done = state.get("prunes_done")
        if done is None:  # a checkpoint from before progressive pruning: one pruning, done or not
            done = max(1, len(self.params.prune_at)) if state.get("pruned", False) else 0
        self.prunes_done = int(done)

    # ------------------------------------------------------------------ client
    def decode_body(self, parsed: Payload, structure: Structure) -> Received:
        regularize = parsed.params.get("regularize", 0) == 1
        if self.slimming:
            loss = SlimmingRegularizer(self.params.lambda1, [t.bn for t in self.triples]) if regularize else None
            return Received(read_whole(parsed), structure, loss)
        loss = SparseRegularizer(self.params.lambda1, self.params.lambda2) if regularize else None
        return Received(read_whole(parsed), structure, loss)
