r"""UDFC: unified data-free compression (Bai et al., ICCV 2023), at the server.

Data-free and one shot: prune a fraction of the output channels of every
untied conv–BN–ReLU layer, quantize the remaining weights to b bits, and
compensate both in closed form, with no data and no fine-tuning.

**Notation.** Layer l's conv has filters W_i (output channel i), followed by
BatchNorm B(z)_i = γ_i (z − μ_i)/σ_i + β_i (σ_i = √(var_i + ε)) and ReLU;
layer l+1 has weights W_{k,i} on its input channel i. Fold the BN into the
filters: ŵ_i = (γ_i/σ_i)·W_i (flattened) and b̂_i = β_i − γ_i μ_i/σ_i, so
B(Z_i) = ŵ_i ⊗ X + b̂_i.

**Pruning channel j (appendix eq. 7, 10, 11).** Channel j is reconstructed
from the kept channels K, X_j ≈ Σ_{i∈K} ŝ_i X_i, and eq. 7 folds that into
layer l+1: W_{k,i} ← W_{k,i} + ŝ_i W_{k,j} for i ∈ K. Eq. 10 writes the
error before layer l+1 as (ŵ_j − Σ ŝ_i ŵ_i) ⊗ X + (b̂_j − Σ ŝ_i b̂_i), and
eq. 11 bounds the error after the ReLU by ½(A + |A|) with A that pre-ReLU
error, so it is enough to make A small. Without data, X is unknown: bound
the weight part by ‖ŵ_j − Σ ŝ_i ŵ_i‖ and weight the bias part by α₁:

    min_ŝ ‖ŵ_j − Ŵ_K ŝ‖² + α₁ (b̂_j − b̂_Kᵀ ŝ)²      (Ŵ_K: columns ŵ_i, i ∈ K)

a linear least-squares problem in ŝ: with M = [Ŵ_K ; √α₁ b̂_Kᵀ] and
y = [ŵ_j ; √α₁ b̂_j], setting the gradient 2Mᵀ(Mŝ − y) to zero gives the
normal equations MᵀM ŝ = Mᵀy, so ŝ = (Ŵ_KᵀŴ_K + α₁ b̂_K b̂_Kᵀ)⁻¹ (Ŵ_Kᵀŵ_j + α₁ b̂_j b̂_K)
when M has full column rank, and the minimum-norm minimizer ŝ = M⁺y
otherwise (more kept channels than filter coefficients); with ``nonnegative``
the same objective under ŝ ≥ 0 (below). :func:`prune_scales`.

**Quantizing channel m (eq. 13).** W_m becomes W̃_m; the next layer sees
s̃_m X̃_m. Eq. 13 gives the error (γ_m/σ_m)(W_m − s̃_m W̃_m) ⊗ X +
(1 − s̃_m) b̂_m (its constant terms collect to (s̃_m − 1)(γ_m μ_m/σ_m − β_m)).
With a = (γ_m/σ_m)² and α₂ on the bias part:

    min_s̃ a ‖W_m − s̃ W̃_m‖² + α₂ b̂_m² (1 − s̃)²

and d/ds̃ = −2a⟨W̃_m, W_m − s̃W̃_m⟩ − 2α₂ b̂_m²(1 − s̃) = 0 gives
s̃_m = (a⟨W̃_m, W_m⟩ + α₂ b̂_m²) / (a‖W̃_m‖² + α₂ b̂_m²). :func:`quant_scale`.
s̃_m multiplies channel m after the BN, which is the BN with γ_m, β_m scaled
by s̃_m (for s̃_m > 0 the ReLU commutes with it, so this is the paper's
"next layer's input channel m"); folding it into the BN also covers convs
whose output is added to a residual, where no single next layer exists.
α₁ = 0.01 and α₂ = 0.008 are the reported values (defaults).

**The weighting, against eq. 10.** Eq. 10 as printed factors γ_j/σ_j
out of the weight part: (γ_j/σ_j)·{X ⊗ (W_j − Σ ŝ_i (γ_iσ_j/σ_i) W_i)}
(the inner factor needs a further 1/γ_j to equal the line before it). Its
objective would bound the bracket, ‖W_j − Σ ŝ_i c_i W_i‖² + α₁(b̂_j − b̂_Kᵀŝ)²
(c_i = γ_iσ_j/(σ_iγ_j)),
whereas ours is ‖ŵ_j − Ŵ_K ŝ‖² + α₁(…)², which is the bracket (with the
1/γ_j) times (γ_j/σ_j)². Same minimizer for α₁ = 0; for α₁ > 0 the bias
term is weighted relatively (σ_j/γ_j)² less here than there, per channel.
We keep the folded form: it is the pre-activation error the next layer
sees, in the BN output's units, the same units as the bias term b̂ (for
which α₁ is then a plain trade-off); α₁ = 0.01 was reported for the
paper's form, whose weighting we cannot confirm without its method section.
Eq. 13's a = (γ_m/σ_m)² applies the same folded weighting to quantization.

**Which channels (``criterion``).** Per layer, the channels with the
smallest |γ_i| (BN-scale magnitude, ``"gamma"``, the default): the standard
data-free channel importance (Liu et al., 2017, "Learning efficient
convolutional networks through network slimming"), since a channel's BN
output is γ_i x̂ + β_i and |γ_i| is its spread. ``"l2"`` (the smallest
‖ŵ_i‖) and ``"random"`` (seeded by the compressor's seed; a baseline) are
kept for comparison (how they rank: docs/server_compression.md, UDFC).

**Non-negative ŝ (``nonnegative``, an option, off by default).** Eq. 7's fold relies on
ReLU(B_j) ≈ Σ ŝ_i ReLU(B_i) when B_j ≈ Σ ŝ_i B_i (B: pre-activations). For
ŝ ≥ 0, ReLU is positively homogeneous and subadditive, so
ReLU(Σ ŝ_i B_i) ≤ Σ ŝ_i ReLU(B_i), with equality wherever the B_i share a
sign; for a negative ŝ_i no such relation holds (B_j = B_1 − 2B_2 is
reconstructed as ReLU(B_1) − 2·ReLU(B_2), wrong wherever B_2 > 0; on such
a network, tests/test_udfc.py's channel filter W_1 − 2W_2, the signed
compensation is worse than none). With the option, ŝ is the non-negative
least-squares solution of the same objective (Lawson–Hanson active set,
:func:`nnls`; scipy is not a dependency). The paper's signed closed form
stays the default: on trained ResNet-20s it did better (measurements:
docs/server_compression.md, UDFC).

**Mean correction of the next layer (``mean_correction``, default on).**
A removed channel's activation has a non-zero mean, which vanishes from the
next layer's input; the next BatchNorm's running mean would then be wrong.
Data-free, take the BN output of channel j as N(β_j, τ_j²) with
τ_j = |γ_j|·√(var_j/(var_j + ε)) (the BN's own statistics). For x ~ N(β, τ²),
with u = β/τ, E[ReLU(x)] = ∫_{-u}^{∞} (β + τz) φ(z) dz = β·Φ(u) + τ·φ(u)
(Φ, φ: standard normal cdf and pdf; max(β, 0) for τ = 0), :func:`relu_mean`.
After pruning, the next layer receives Σ_i ŝ_i X_i in place of X_j, so its
input loses r_j = E[X_j] − Σ_{i∈K} ŝ_i E[X_i] in expectation (ŝ = 0 without
compensation). Through the next conv (weights V_{k,j,u,v}), the expected
pre-BN output k changes by Δ_k = −Σ_j (Σ_{u,v} V_{k,j,u,v}) r_j, the spatial
sum of the kernel, **assuming every tap sees the mean** (zero-padding at
the borders, where taps read zeros, is ignored; pooling between the layers
is taken to preserve the mean, which is exact for average pooling). The
next BN's running mean becomes μ_k + Δ_k, so that (z − μ) keeps its
expectation; if the next layer has no BN but a bias, the bias becomes
b_k − Δ_k. Part of UDFC's compensation (``compensation = "udfc"``) only.

**BatchNorm recalibration on distilled inputs (``recalibrate``, default
on; a departure: the paper stops at the closed forms).** The closed forms
and the mean correction fix each next layer's input in expectation, but
not its variance, and every BN below keeps normalizing by statistics of
the unpruned network. Still without data: :func:`distill_inputs` fits
``distill_samples`` inputs, from N(0, 1) noise, by ``distill_steps`` Adam
steps to the *unpruned* model's own BN running statistics (ZeroQ, Cai et
al. 2020, eq. 4), and :func:`recalibrate_bn` sets every BN of the pruned,
quantized model from one pass over them (what it gains, measured:
docs/server_compression.md, UDFC). It is a switch of its own, applied the
same way whatever the compensation, so that each baseline can have it.

**The baselines (``compensation``).** ``"udfc"``: the closed forms above.
``"merging"``: Neuron Merging (Kim et al. 2020, :func:`merge_scales`) at the
same channels: removed filter j folded into the kept filter i of highest
cosine similarity of the BN-folded filters, V_{:,i} += (‖ŵ_j‖/‖ŵ_i‖)·V_{:,j};
the quantization then has no s̃. ``"none"``: plain pruning + quantization.
With ``recalibrate`` each gets the same recalibration; ``"udfc"`` without it
is the paper's method as written.

**Other choices the seed text leaves open, stated.** Only untied layers are
pruned (:mod:`.channels`: the conv's channels feed one BN → ReLU → one
conv/linear; residual outputs stay). How many channels per layer
(:func:`prune_counts`): round(prune·c) of a layer's c channels, at most
c − 1, what that cap takes off the narrow layers moved to wider ones; so no
layer is skipped or emptied at high ratios, and the total Σ round(prune·c)
is the fraction within rounding (at most L/2 channels off for L layers)
until N − L caps it (N channels; 0.99 on ResNet-20 removes 327 of 336, 97.3 %).
Quantization: uniform, symmetric, per output channel, b bits
(levels −(2^{b−1}−1) … 2^{b−1}−1, scale max|W_m|/(2^{b−1}−1)), every conv
and linear weight; only convs followed by a BN get the s̃ compensation.
Pruning happens once; later broadcasts re-quantize the thinner model.

**Wire format.** Codec ``udfc``: the ``resize`` structure edits of the
thinner model, then per tensor in state order: for conv/linear weights an
fp32 scale per output channel and the b-bit codes packed; everything else
dense in its dtype.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from fedcomp.coding import BitReader, BitWriter, DecodeError, Payload, pack, specs_of, tensor_to_bytes
from fedcomp.compressors.model.base import (
    MODEL_COMPRESSORS,
    Broadcast,
    ModelCompressor,
    Received,
    Snapshot,
    State,
    read_dense,
)
from fedcomp.compressors.model.channels import Triple, channel_graph, resize_edits
from fedcomp.compressors.model.structure import Architecture, Structure, structure_to_json
from fedcomp.params import require


@dataclass
class UDFCParams:
    prune: float = 0.3
    """Fraction of the output channels removed in every untied conv–BN–ReLU layer (:func:`prune_counts`)."""
    bits: int = 6
    """Bit width of the weight codes."""
    alpha1: float = 0.01
    """Weight of the bias term in the pruning compensation (eq. 10)."""
    alpha2: float = 0.008
    """Weight of the bias term in the quantization compensation (eq. 13)."""
    compensate: bool = True
    """False: no compensation of any kind (the same as ``compensation = "none"``; kept for older configs)."""
    compensation: Literal["udfc", "merging", "none"] = "udfc"
    """How a removed channel is made up for in the next layer: UDFC's closed forms (ŝ of eq. 7/10, the mean
    correction, and s̃ of eq. 13 on the quantization), Neuron Merging (each removed filter merged into its most
    similar kept one; plain quantization), or nothing (plain pruning + quantization). The baselines of the paper."""
    criterion: Literal["gamma", "l2", "random"] = "gamma"
    """Which channels go: smallest |γ| (BN scale, network slimming), smallest ‖ŵ‖ (as first landed), or random."""
    mean_correction: bool = True
    """Correct the next BatchNorm's running mean for the removed channels' mean activations (UDFC's compensation)."""
    recalibrate: bool = True
    """Re-estimate the pruned model's BatchNorm statistics on inputs distilled from the unpruned model's own
    BatchNorm statistics (ZeroQ; no data): the next BN's variance is what pruning breaks. Independent of the
    compensation: plain pruning and Neuron Merging get exactly the same step (a fair comparison needs it)."""
    distill_samples: int = 64
    """Distilled inputs for ``recalibrate``."""
    distill_steps: int = 50
    """Adam steps that fit the distilled inputs to the unpruned model's BatchNorm statistics."""
    nonnegative: bool = False
    """Constrain the pruning scales ŝ ≥ 0 (non-negative least squares): what the fold through the ReLU needs in
    principle; off by default because with the mean correction the paper's signed ŝ measured better on trained
    models (see the module docstring)."""
    start_round: int = 1
    """The first round whose broadcast is compressed (rounds before it broadcast the dense model)."""
    final_only: bool = False
    """Broadcast dense every round; compress only the final model."""

    def schedule_problem(self, rounds: int) -> str:
        if not self.final_only and self.start_round > rounds:
            return (f"start_round = {self.start_round} is after the last round ({rounds}): "
                    "for the final model only, set final_only = true")  # fmt: skip
        return ""

    @property
    def method(self) -> str:
        """The compensation in effect: ``compensation``, or "none" with ``compensate = false``."""
        return self.compensation if self.compensate else "none"

    def validate(self, path: str) -> None:
        require(0 <= self.prune < 1, f"{path}.prune", "a fraction in [0, 1)")
        require(self.compensation in ("udfc", "merging", "none"), f"{path}.compensation",
                '"udfc", "merging" or "none"')  # fmt: skip
        require(self.compensate or self.compensation == "udfc", f"{path}.compensate",
                'true when compensation is set (compensate = false means compensation = "none": set only that)')  # fmt: skip
        require(not self.nonnegative or self.method == "udfc", f"{path}.nonnegative",
                'false unless compensation = "udfc" (ŝ ≥ 0 constrains UDFC\'s closed form only)')  # fmt: skip
        require(2 <= self.bits <= 16, f"{path}.bits", "a bit width between 2 and 16")
        require(self.alpha1 >= 0 and self.alpha2 >= 0, f"{path}.alpha1/alpha2", "numbers >= 0")
        require(self.criterion in ("gamma", "l2", "random"), f"{path}.criterion", '"gamma", "l2" or "random"')
        require(self.distill_samples >= 2, f"{path}.distill_samples", "an integer >= 2")
        require(self.distill_steps >= 1, f"{path}.distill_steps", "an integer >= 1")
        require(self.start_round >= 1, f"{path}.start_round", "an integer >= 1")


# ----------------------------------------------------------------------------- the closed forms


def bn_fold(state: State, bn: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(γ/σ, b̂ = β − γμ/σ) of a BatchNorm, σ = √(var + ε)."""
    gamma = state[f"{bn}.weight"].double().numpy()
    beta = state[f"{bn}.bias"].double().numpy()
    mean = state[f"{bn}.running_mean"].double().numpy()
    sigma = np.sqrt(state[f"{bn}.running_var"].double().numpy() + eps)
    return gamma / sigma, beta - gamma * mean / sigma


def prune_scales(
    w_hat: np.ndarray, b_hat: np.ndarray, j: int, kept: np.ndarray, alpha1: float, nonnegative: bool = False
) -> np.ndarray:
    """ŝ = argmin ‖ŵ_j − Ŵ_K ŝ‖² + α₁(b̂_j − b̂_Kᵀŝ)² = M⁺y, or under ŝ ≥ 0 (module docstring; eq. 7 and 10)."""
    root = math.sqrt(alpha1)
    m = np.vstack([w_hat[kept].T, root * b_hat[kept][None, :]])
    y = np.concatenate([w_hat[j], [root * b_hat[j]]])
    return nnls(m, y) if nonnegative else np.linalg.lstsq(m, y, rcond=None)[0]


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin_{x ≥ 0} ‖ax − b‖² (Lawson & Hanson 1974, active set; scipy.optimize.nnls is the same algorithm).

    The passive set P grows by the coordinate with the largest gradient −∂/∂x = aᵀ(b − ax) while that is
    positive; the unconstrained least squares on P is taken if it is positive, otherwise the step towards
    it stops at the first coordinate reaching 0, which leaves P. Ends at the KKT point: x_P > 0 with zero
    gradient on P, gradient ≤ tol off it. Rank-deficient a: minimum-norm solves on P.
    """
    n = a.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * max(a.shape) * max(float(np.abs(a).sum(axis=0).max(initial=0.0)), 1.0)
    tol *= max(float(np.abs(b).max(initial=0.0)), 1.0)
    for _ in range(3 * n + 1):
        grad = a.T @ (b - a @ x)
        grad[passive] = -np.inf
        t = int(np.argmax(grad)) if n else 0
        if not n or grad[t] <= tol:
            break
        passive[t] = True
        for _ in range(3 * n + 1):
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if np.all(z[passive] > 0):
                x = z
                break
            bad = passive & (z <= 0)
            step = float(np.min(x[bad] / (x[bad] - z[bad])))
            x = x + step * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
            if not passive.any():
                break
    return x


def relu_mean(beta: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """E[ReLU(x)] for x ~ N(β, τ²): β·Φ(β/τ) + τ·φ(β/τ), and max(β, 0) where τ = 0 (module docstring)."""
    beta, tau = np.asarray(beta, dtype=float), np.abs(np.asarray(tau, dtype=float))
    safe = np.where(tau > 0, tau, 1.0)
    u = beta / safe
    cdf = 0.5 * (1 + np.vectorize(math.erf)(u / math.sqrt(2))) if u.size else u
    pdf = np.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    return np.where(tau > 0, beta * cdf + tau * pdf, np.maximum(beta, 0.0))


def prune_counts(channels: list[int], fraction: float) -> list[int]:
    """Channels to remove per layer: round(fraction·c) of each layer's c, but at most c − 1.

    What that cap takes off the narrow layers at a high fraction goes to the layers with room (largest
    remainder first), so the total stays Σ round(fraction·c) while N − L allows (N channels, L layers):
    no layer is skipped and none is emptied.
    """
    caps = [c - 1 for c in channels]
    rounded = [int(round(fraction * c)) for c in channels]
    target = min(sum(rounded), sum(caps))
    counts = [min(r, cap) for r, cap in zip(rounded, caps, strict=True)]
    exact = [fraction * c for c in channels]
    order = sorted(range(len(channels)), key=lambda i: (-(exact[i] - counts[i]), -channels[i], i))
    while sum(counts) < target:
        for i in order:
            if sum(counts) < target and counts[i] < caps[i]:
                counts[i] += 1
    return counts


def select_channels(
    w_hat: np.ndarray, gamma: np.ndarray, n_prune: int, criterion: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(removed, kept) channel indices, each sorted, by ``criterion`` (module docstring)."""
    channels = w_hat.shape[0]
    if criterion == "random":
        order = rng.permutation(channels)
    else:
        score = np.abs(gamma) if criterion == "gamma" else np.linalg.norm(w_hat, axis=1)
        order = np.argsort(score, kind="stable")
    return np.sort(order[:n_prune]), np.sort(order[n_prune:])


def prune_layer(
    state: State,
    triple: Triple,
    next_bn: str | None,
    eps: float,
    n_prune: int,
    params: UDFCParams,
    rng: np.random.Generator,
) -> np.ndarray:
    """Remove ``n_prune`` output channels of ``triple.conv`` in ``state`` (in place); return the removed ones.

    ``params.method`` "udfc": ŝ per removed channel folded into ``triple.next`` (eq. 7) and, with
    ``params.mean_correction``, the expected lost activation taken out of ``next_bn``'s running mean
    (or added to the next layer's bias when it has no BatchNorm) (module docstring). "merging": Neuron
    Merging (:func:`merge_scales`). "none": the channels are removed, nothing else.
    """
    conv_w = state[f"{triple.conv}.weight"].double().numpy()
    channels = conv_w.shape[0]
    g, b_hat = bn_fold(state, triple.bn, eps)
    gamma = state[f"{triple.bn}.weight"].double().numpy()
    w_hat = g[:, None] * conv_w.reshape(channels, -1)
    pruned, kept = select_channels(w_hat, gamma, n_prune, params.criterion, rng)
    nxt = state[f"{triple.next}.weight"].double().numpy().copy()
    original = nxt.copy()
    shape = (1, -1) + (1,) * (nxt.ndim - 2)
    scales = np.zeros((len(pruned), len(kept)))
    method = params.method
    if method == "udfc":
        for row, j in enumerate(pruned):
            scales[row] = prune_scales(w_hat, b_hat, int(j), kept, params.alpha1, params.nonnegative)
    elif method == "merging":
        scales = merge_scales(w_hat, pruned, kept)
    for row, j in enumerate(pruned):
        if scales[row].any():
            nxt[:, kept] += scales[row].reshape(shape) * original[:, j : j + 1]
    if method == "udfc" and params.mean_correction:
        var = state[f"{triple.bn}.running_var"].double().numpy()
        tau = np.abs(gamma) * np.sqrt(var / (var + eps))
        means = relu_mean(state[f"{triple.bn}.bias"].double().numpy(), tau)
        lost = means[pruned] - scales @ means[kept]  # r_j = E[X_j] − Σ ŝ_i E[X_i]
        spatial = original[:, pruned].reshape(original.shape[0], len(pruned), -1).sum(axis=2)
        delta = -(spatial @ lost)  # Δ_k: the change of the next layer's expected pre-BN output
        if next_bn is not None:
            key = f"{next_bn}.running_mean"
            state[key] = (state[key].double() + torch.from_numpy(delta)).to(state[key].dtype)
        elif f"{triple.next}.bias" in state:
            key = f"{triple.next}.bias"
            state[key] = (state[key].double() - torch.from_numpy(delta)).to(state[key].dtype)
    idx = torch.from_numpy(kept)
    for key in [f"{triple.conv}.weight", f"{triple.conv}.bias"] + [
        f"{triple.bn}.{x}" for x in ("weight", "bias", "running_mean", "running_var")
    ]:
        if key in state:
            state[key] = state[key].index_select(0, idx)
    dtype = state[f"{triple.next}.weight"].dtype
    state[f"{triple.next}.weight"] = torch.from_numpy(nxt[:, kept]).to(dtype).contiguous()
    return pruned


def merge_scales(w_hat: np.ndarray, pruned: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Neuron Merging (Kim et al. 2020) as scales over the kept channels, one row per removed channel.

    Each removed channel j goes into the kept channel i whose BN-folded filter ŵ_i is most similar to ŵ_j
    (cosine), with the scale ‖ŵ_j‖/‖ŵ_i‖: exact when ŵ_j and b̂_j are a positive multiple of channel i's
    (ReLU is positively homogeneous). Departure: the paper merges only above a similarity threshold; here
    every removed channel is merged (at UDFC's channels and counts, so the comparison differs in the
    compensation alone).
    """
    norms = np.linalg.norm(w_hat, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    scales = np.zeros((len(pruned), len(kept)))
    if not len(kept):
        return scales
    cosine = (w_hat[pruned] @ w_hat[kept].T) / np.outer(safe[pruned], safe[kept])
    for row, j in enumerate(pruned):
        col = int(np.argmax(cosine[row]))
        scales[row, col] = norms[j] / safe[kept[col]]
    return scales


DISTILL_LR = 0.2
"""Adam's step on the distilled inputs (in the model's normalized input units)."""


def distill_inputs(model: torch.nn.Module, shape: tuple[int, ...], samples: int, steps: int, seed: int) -> torch.Tensor:
    """Inputs whose BatchNorm batch statistics match ``model``'s running ones (ZeroQ, Cai et al. 2020, eq. 4).

    From N(0, 1) noise, Adam on min_x Σ_l (‖μ̃_l(x) − μ_l‖² + ‖σ̃_l(x) − σ_l‖²)/C_l over the BatchNorms l
    (μ̃, σ̃: the batch mean and standard deviation of the BN's input, per channel; C_l its channels; the mean
    over channels so that wide layers do not dominate). Needs no data: only the model's stored statistics.
    """
    model = model.eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    seen: list[tuple[torch.nn.BatchNorm2d, torch.Tensor]] = []
    hooks = [bn.register_forward_hook(lambda m, inp, _out: seen.append((m, inp[0]))) for bn in bns]
    x = torch.randn(samples, *shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=DISTILL_LR)
    try:
        for _ in range(steps):
            seen.clear()
            opt.zero_grad()
            model(x)
            loss = sum(_bn_mismatch(bn, inp) for bn, inp in seen)
            (x.grad,) = torch.autograd.grad(loss, [x])  # the inputs' gradient only: the weights stay untouched
            opt.step()
    finally:
        for h in hooks:
            h.remove()
    return x.detach()


def _bn_mismatch(bn: torch.nn.BatchNorm2d, inp: torch.Tensor) -> torch.Tensor:
    mean, var = inp.mean((0, 2, 3)), inp.var((0, 2, 3), unbiased=False)
    sd_gap = var.clamp_min(0).add(bn.eps).sqrt() - bn.running_var.add(bn.eps).sqrt()
    return ((mean - bn.running_mean) ** 2 + sd_gap**2).mean()


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, inputs: torch.Tensor) -> None:
    """Every BatchNorm's running mean and variance := the statistics of its input on ``inputs`` (in place)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: one pass gives the batch statistics
        bn.train()
    model(inputs)
    model.eval()


def quant_scale(w: np.ndarray, w_q: np.ndarray, g: float, b_hat: float, alpha2: float) -> float:
    """s̃ = (a⟨W̃, W⟩ + α₂b̂²) / (a‖W̃‖² + α₂b̂²), a = (γ/σ)² (module docstring; eq. 13)."""
    a = g * g
    num = a * float(np.dot(w_q, w)) + alpha2 * b_hat * b_hat
    den = a * float(np.dot(w_q, w_q)) + alpha2 * b_hat * b_hat
    return num / den if den > 0 else 1.0


def quantize_rows(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric uniform b-bit codes per row (output channel) and the row scales."""
    qmax = (1 << (bits - 1)) - 1
    rows = w.reshape(w.shape[0], -1)
    scales = np.abs(rows).max(axis=1) / qmax
    safe = np.where(scales > 0, scales, 1.0)
    codes = np.clip(np.rint(rows / safe[:, None]), -qmax, qmax).astype(np.int64)
    return codes, scales.astype(np.float32)


# ----------------------------------------------------------------------------- the compressor


@MODEL_COMPRESSORS.register("udfc", "UDFC: data-free channel pruning + b-bit quantization, compensated in closed form")
class UDFCCompressor(ModelCompressor):
    name = "udfc"
    Params = UDFCParams

    def __init__(self, params: UDFCParams | None, arch: Architecture, seed: int = 0) -> None:
        super().__init__(params, arch, seed)
        self.graph = channel_graph(arch)
        if self.params.prune > 0 and not self.graph.triples:  # said before the engine starts (preflight)
            raise ValueError(
                "server_compression: UDFC found no untied conv–BN–ReLU layer whose channels it can remove "
                "(set prune = 0 to quantize only)"
            )
        base = arch.build()
        self.eps = {n: m.eps for n, m in base.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
        self.pruned = False

    # ------------------------------------------------------------------ the method
    def prune(self, state: State) -> tuple[State, dict[str, float]]:
        """Remove channels of every untied layer (:func:`prune_counts`); compensate in the next layer (eq. 7)."""
        p = self.params
        w_state = OrderedDict((k, v.clone()) for k, v in state.items())
        widths = [w_state[f"{t.conv}.weight"].shape[0] for t in self.graph.triples]
        rng = np.random.default_rng(self.seed)
        removed = 0
        for t, n_prune in zip(self.graph.triples, prune_counts(widths, p.prune), strict=True):
            if n_prune == 0:
                continue
            prune_layer(w_state, t, self.graph.conv_bn.get(t.next), self.eps[t.bn], n_prune, p, rng)
            removed += n_prune
        self.pruned = True
        return w_state, {
            "udfc_channels_removed": float(removed),
            "udfc_channel_fraction_removed": removed / max(sum(widths), 1),
        }

    def recalibrate(self, original: State, structure: Structure, pruned: State, thin: Structure) -> State:
        """``pruned`` (structure ``thin``) with every BatchNorm's statistics measured on inputs distilled from
        ``original`` (structure ``structure``) (ZeroQ; module docstring).

        The inputs depend only on ``original`` and the compressor's seed.
        """
        p = self.params
        teacher = self.arch.build(structure)
        teacher.load_state_dict(original)
        inputs = distill_inputs(teacher, self.arch.input_shape, p.distill_samples, p.distill_steps, self.seed)
        student = self.arch.build(thin)
        student.load_state_dict(pruned)
        recalibrate_bn(student, inputs)
        stats = {k: v for k, v in student.state_dict().items() if k.endswith(("running_mean", "running_var"))}
        return OrderedDict((k, stats[k].to(v.dtype) if k in stats else v) for k, v in pruned.items())

    def quantize(self, state: State) -> tuple[State, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """b-bit codes for every conv/linear weight; s̃ (eq. 13) folded into the following BN.

        Returns the quantized model and, per weight, the (codes, row scales) the payload carries.
        """
        p = self.params
        out = OrderedDict((k, v.clone()) for k, v in state.items())
        packed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in _quantized(state):
            w = state[name].double().numpy()
            codes, scales = quantize_rows(w, p.bits)
            packed[name] = (codes, scales)
            w_q = (codes * scales[:, None].astype(np.float64)).reshape(w.shape)
            out[name] = torch.from_numpy(w_q).to(state[name].dtype)
            layer = name.removesuffix(".weight")
            bn = self.graph.conv_bn.get(layer)
            if p.method == "udfc" and bn is not None:
                g, b_hat = bn_fold(state, bn, self.eps[bn])
                flat, flat_q = w.reshape(w.shape[0], -1), w_q.reshape(w.shape[0], -1)
                s = np.array([quant_scale(flat[m], flat_q[m], g[m], b_hat[m], p.alpha2) for m in range(w.shape[0])])
                for key in (f"{bn}.weight", f"{bn}.bias"):
                    out[key] = (out[key].double() * torch.from_numpy(s)).to(out[key].dtype)
        return out, packed

    def compress(self, state: State, structure: Structure) -> tuple[bytes, State, Structure, dict[str, float]]:
        """Prune (once), quantize, recalibrate (after pruning); the payload and the model exactly as decoded."""
        p = self.params
        metrics: dict[str, float] = {}
        if self.pruned or p.prune == 0:
            quantized, packed = self.quantize(state)
        else:
            pruned, metrics = self.prune(state)
            thin = resize_edits(self.arch, pruned)
            quantized, packed = self.quantize(pruned)
            if p.recalibrate:  # the statistics of the model the clients will run, whatever the compensation
                quantized = self.recalibrate(state, structure, quantized, thin)
            structure = thin
        self.pruned = True
        decoded = self.decode(payload := self._payload(quantized, packed, structure))
        return payload, decoded.state, decoded.structure, metrics

    # ------------------------------------------------------------------ server
    @classmethod
    def broadcasts_dense_model(cls, params: Any) -> bool:
        return bool(params.final_only)

    def broadcast(self, server_round: int, state: State, structure: Structure) -> Broadcast:
        p = self.params
        if p.final_only or server_round < p.start_round:
            return Broadcast(self._payload(state, {}, structure), state, structure)
        payload, start, structure, metrics = self.compress(state, structure)
        return Broadcast(payload, start, structure, metrics)

    def end_of_round(self, server_round: int, state: State, structure: Structure, last: bool) -> Snapshot:
        if not last:
            return Snapshot(state, structure)
        payload, final, final_structure, metrics = self.compress(state, structure)
        return Snapshot(final, final_structure, metrics, payload, is_global=False)

    def state_dict(self) -> dict[str, object]:
        return {"pruned": self.pruned}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.pruned = bool(state.get("pruned", False))

    def _payload(self, state: State, packed: dict[str, tuple[np.ndarray, np.ndarray]], structure: Structure) -> bytes:
        """Weights in ``packed`` as row scales + their b-bit codes; everything else dense (all of it if empty)."""
        bits = self.params.bits if packed else 0
        parts = []
        for name, tensor in state.items():
            if name not in packed:
                parts.append(tensor_to_bytes(tensor))
                continue
            codes, scales = packed[name]
            writer = BitWriter()
            writer.write_array((codes.ravel() + (1 << (bits - 1)) - 1).astype(np.uint64), bits)
            parts.append(scales.astype("<f4").tobytes() + writer.getvalue())
        params: dict[str, object] = {"bits": bits}
        if structure:
            params["structure"] = structure_to_json(structure)
        return pack(self.name, params, specs_of(state), b"".join(parts), by_digest=True)

    # ------------------------------------------------------------------ client
    def decode_body(self, parsed: Payload, structure: Structure) -> Received:
        bits = parsed.params.get("bits")
        if type(bits) is not int or not (bits == 0 or 2 <= bits <= 16):
            raise DecodeError(f"udfc: bit width must be 0 or 2..16, got {bits!r}")
        body, pos = parsed.body, 0
        quantized = set(_quantized_specs(parsed.specs)) if bits else set()
        qmax = (1 << (bits - 1)) - 1 if bits else 0
        state: State = OrderedDict()
        for spec in parsed.specs:
            if spec.name not in quantized:
                part, pos = read_dense(body, pos, [spec])
                state.update(part)
                continue
            rows = spec.shape[0]
            per_row = spec.numel // rows
            size = 4 * rows + math.ceil(spec.numel * bits / 8)
            if pos + size > len(body):
                raise DecodeError(f"udfc: body ends inside {spec.name!r}")
            scales = np.frombuffer(body[pos : pos + 4 * rows], dtype="<f4").astype(np.float64)
            if not np.all(np.isfinite(scales)):
                raise DecodeError(f"udfc: scales of {spec.name!r} are not finite")
            codes = BitReader(body[pos + 4 * rows : pos + size]).read_array(spec.numel, bits, f"{spec.name} codes")
            codes = codes.astype(np.int64) - qmax
            if codes.size and int(np.abs(codes).max()) > qmax:
                raise DecodeError(f"udfc: a code of {spec.name!r} is outside ±{qmax}")
            values = codes.reshape(rows, per_row) * scales[:, None]
            state[spec.name] = torch.from_numpy(values.reshape(spec.shape)).to(spec.dtype)
            pos += size
        if pos != len(body):
            raise DecodeError(f"udfc: {len(body) - pos} bytes after the last tensor")
        return Received(state, structure)


def _quantized(state: State) -> list[str]:
    return [k for k, v in state.items() if k.endswith(".weight") and v.is_floating_point() and v.ndim >= 2]


def _quantized_specs(specs) -> list[str]:  # noqa: ANN001 - TensorSpec sequence
    return [s.name for s in specs if s.name.endswith(".weight") and s.dtype.is_floating_point and len(s.shape) >= 2]
