"""Normalization statistics measured by the clients and combined by the server (a recalibration round).

A federated model's running statistics are stale: every client's running
mean and variance (and BWCP's running whitening) were gathered while its
own weights moved, under the training-time Gumbel masks, and FedAvg
averages them as if they were weights. BWCP's issue measured it: the
aggregate evaluated at 0.19 after four rounds, 0.65 with its statistics
recalibrated on data. The fix needs data, which only the clients hold, but
not their raw data: per normalization layer, each client reports the mean
m_c and the covariance C_c about it of the layer's input over its n_c
examples (per whitening group for BWCP; the variance per channel for a
BatchNorm). Pooled by the parallel-axis rule, μ = Σ w_c m_c and
C = Σ w_c (C_c + (m_c − μ)(m_c − μ)ᵀ) with w_c = n_c/Σn, they are exactly
the moments over the union of the clients' data (the sums Σz and Σzzᵀ are
linear in the data; sending them centred avoids the cancellation of
E[z²] − μ² in float32 for a channel whose mean dwarfs its spread), and
from them the server sets

- running mean μ and running variance σ² = diag C;
- for BWCP, the whitening of eq. 3–5 for that data: the correlation
  ρ = C/(σσᵀ) of the standardized input, Σ_N =
  (γγᵀ ⊙ ρ)/‖γ‖² (eq. 4) and Σ_N^{-1/2} by eq. 5
  (:meth:`~fedcomp.compressors.model.bwcp.BWCP.set_statistics`).

While measuring, every normalization layer normalizes by its batch's own
statistics (as in training: the layers below a recalibrated one see inputs
normalized the way the new statistics will normalize them, as in the usual
BatchNorm recalibration) and BWCP uses its hard masks, the ones inference
and pruning use. One round trip measures all layers at once; a layer's
input is then normalized below by each client's batch statistics rather
than the combined ones, which agree for IID clients and approximately
otherwise.

On the wire a report is a dense container (codec ``statistics``) of float32
moments, counted both ways like every other byte, and checked like any
reply: exactly the expected tensors, finite, within ``max_abs``.

Clients are untrusted, and one client's in-range moments could set every
other client's statistics (a mean shifted by +500 moves the pooled mean by
500 · w_c). Before pooling, :func:`outliers` refuses the reports that lie
far from the others', by a rule on the unweighted median over clients
(each client one vote, whatever count it claims), per layer and channel j:
with m̃_j and ṽ_j the median of the reported means and variances (the
covariance's diagonal) and a floor τ = 10⁻² · mean_j ṽ_j + 10⁻¹² (so a
channel without spread cannot make a rounding difference look huge), a
report is refused if

- a mean lies more than :data:`MEAN_LIMIT` standard deviations from the
  median, |m_j − m̃_j| > MEAN_LIMIT · √(ṽ_j + τ), or
- a variance differs from the median by more than a factor
  :data:`VARIANCE_LIMIT`, (v_j + τ)/(ṽ_j + τ) outside [1/VARIANCE_LIMIT, VARIANCE_LIMIT].

Honest clients measure the same model on data of one distribution (their
means differ by sampling noise and label skew, well within the input's own
spread), so the rule keeps them; it needs three reports to tell which one
lies (with two, a large disagreement refuses both and the model keeps its
statistics).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from fedcomp.coding import DecodeError, DecodeLimits, TensorSpec, check_decoded, pack, specs_of, unpack
from fedcomp.compressors.model.base import State, dense_bytes, read_whole
from fedcomp.compressors.update.base import MALFORMED

CODEC = "statistics"


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers whose statistics are measured: BatchNorm2d and BWCP modules, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) or _whitened(m)]


def _whitened(module: nn.Module) -> bool:
    return hasattr(module, "set_statistics") and hasattr(module, "group")


def statistics_specs(model: nn.Module) -> list[TensorSpec]:
    """What a report holds for ``model``: per layer ``<name>.mean`` (C,) and ``<name>.cov`` ((G, g, g) or (C,))."""
    specs = []
    for name, m in norm_layers(model):
        c = m.num_features
        specs.append(TensorSpec(f"{name}.mean", (c,), torch.float32))
        second = (c // m.group, m.group, m.group) if _whitened(m) else (c,)
        specs.append(TensorSpec(f"{name}.cov", second, torch.float32))
    return specs


@torch.no_grad()
def measure(model: nn.Module, batches: Iterable[torch.Tensor]) -> tuple[State, int]:
    """Mean and covariance (per group) of every normalization layer's input over ``batches``; and the examples.

    The model runs in eval mode except its normalization layers, which use
    their batch's statistics (and BWCP its hard masks, see the module
    docstring). ``model`` is left in eval mode with its buffers as they were.
    """
    layers = norm_layers(model)
    if not layers:
        raise ValueError("the model has no BatchNorm2d or BWCP layer whose statistics could be measured")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    sums: dict[str, list[torch.Tensor]] = {}
    counts: dict[str, int] = {}

    def record(name: str, module: nn.Module):  # noqa: ANN202 - a forward pre-hook
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            z = inputs[0].detach().double().transpose(0, 1).reshape(module.num_features, -1)
            if _whitened(module):  # per whitening group: (G, g, g)
                zg = z.reshape(module.num_features // module.group, module.group, -1)
                second = zg @ zg.transpose(1, 2)
            else:
                second = z.pow(2).sum(1)
            parts = [z.sum(1), second]
            old = sums.get(name)
            sums[name] = parts if old is None else [a + b for a, b in zip(old, parts, strict=True)]
            counts[name] = counts.get(name, 0) + z.shape[1]

        return hook

    hooks = [m.register_forward_pre_hook(record(n, m)) for n, m in layers]
    model.eval()
    for _, m in layers:
        if _whitened(m):
            m.calibrating = True
        else:
            m.train()  # batch statistics (its running buffers are restored below)
    examples = 0
    try:
        for x in batches:
            model(x)
            examples += len(x)
    finally:
        for h in hooks:
            h.remove()
        for _, m in layers:
            if _whitened(m):
                m.calibrating = False
        model.eval()
        model.load_state_dict(saved)
    if examples == 0:
        raise ValueError("no examples to measure statistics on")
    out: State = OrderedDict()
    for name, _ in layers:
        if name not in sums:
            raise ValueError(f"layer {name!r} was not reached by the forward pass")
        first, second = sums[name]
        mean, second = first / counts[name], second / counts[name]  # float64: centring here is exact enough
        out[f"{name}.mean"] = mean.float()
        out[f"{name}.cov"] = (second - _outer(mean, second)).float()
    return out, examples


def combine(reports: Sequence[tuple[int, State]]) -> State:
    """The clients' reports pooled by the parallel-axis rule: the moments over the union of their data."""
    if not reports:
        raise ValueError("no statistics to combine")
    total = sum(n for n, _ in reports)
    out: State = OrderedDict()
    for key in reports[0][1]:
        if not key.endswith(".mean"):
            continue
        layer = key[: -len(".mean")]
        means = [(n / total, r[key].double(), r[f"{layer}.cov"].double()) for n, r in reports]
        mu = sum(w * m for w, m, _ in means)
        out[key] = mu
        out[f"{layer}.cov"] = sum(w * (c + _outer(m - mu, c)) for w, m, c in means)
    return out


MEAN_LIMIT = 10.0
"""A reported mean further than this many standard deviations from the clients' median is refused."""
VARIANCE_LIMIT = 100.0
"""A reported variance more than this factor from the clients' median (either way) is refused."""


def outliers(reports: Sequence[State]) -> dict[int, str]:
    """Position → why, for the reports refused by the rule of the module docstring (none with one report)."""
    if len(reports) < 2:
        return {}
    refused: dict[int, str] = {}
    for key in reports[0]:
        if not key.endswith(".mean"):
            continue
        layer = key[: -len(".mean")]
        means = torch.stack([r[key].double() for r in reports])
        variances = torch.stack([_variances(r[f"{layer}.cov"].double()) for r in reports])
        mid_mean = torch.quantile(means, 0.5, dim=0)
        mid_var = torch.quantile(variances, 0.5, dim=0)
        floor = 1e-2 * float(mid_var.mean()) + 1e-12
        shift = ((means - mid_mean).abs() / (mid_var + floor).sqrt()).amax(dim=1)
        ratio = ((variances + floor) / (mid_var + floor)).log().abs().amax(dim=1)
        for i in range(len(reports)):
            if i in refused:
                continue
            if float(shift[i]) > MEAN_LIMIT:
                refused[i] = (f"{layer}: a mean {float(shift[i]):.3g} standard deviations from the clients' "
                              f"median (more than {MEAN_LIMIT:g})")  # fmt: skip
            elif float(ratio[i]) > math.log(VARIANCE_LIMIT):
                refused[i] = (f"{layer}: a variance {math.exp(float(ratio[i])):.3g}× off the clients' median "
                              f"(more than {VARIANCE_LIMIT:g}×)")  # fmt: skip
    return refused


def _variances(cov: torch.Tensor) -> torch.Tensor:
    """Per channel: the covariance's diagonal (per whitening group (G, g, g)) or the variances (C,) as they are."""
    return cov if cov.dim() == 1 else cov.diagonal(dim1=1, dim2=2).reshape(-1)


def _outer(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """vvᵀ per whitening group when ``like`` is a (G, g, g) covariance, else v² per channel."""
    if like.dim() == 1:
        return v.pow(2)
    vg = v.reshape(like.shape[0], -1)
    return vg[:, :, None] * vg[:, None, :]


@torch.no_grad()
def apply(model: nn.Module, moments: State) -> None:
    """Set every normalization layer's running statistics (BWCP: and whitening) from ``moments`` (in place)."""
    for name, m in norm_layers(model):
        mean, cov = moments[f"{name}.mean"].double(), moments[f"{name}.cov"].double()
        if _whitened(m):
            m.set_statistics(mean, cov)
        else:
            m.running_mean.copy_(mean)
            m.running_var.copy_(cov.clamp_min(0))


def encode(moments: State) -> bytes:
    """A report as it travels (float32, dense)."""
    return pack(CODEC, {}, specs_of(moments), dense_bytes(moments.values()))


def decode(payload: bytes, specs: Sequence[TensorSpec], max_abs: float) -> State:
    """A client's report, checked: exactly ``specs``, finite, within ``max_abs``; DecodeError otherwise."""
    parsed = unpack(payload, DecodeLimits.for_specs(specs, slack_bytes=1 << 16, max_abs=max_abs))
    if parsed.codec != CODEC:
        raise DecodeError(f"statistics report was made by {parsed.codec!r}, expected {CODEC!r}")
    try:  # as every codec's decoder: what the parser raises on input it was not written for is a DecodeError
        moments = read_whole(parsed)
    except MALFORMED as exc:
        raise DecodeError(f"statistics report: malformed ({type(exc).__name__}: {exc})") from exc
    check_decoded(moments, specs, max_abs, "statistics report")
    return moments
