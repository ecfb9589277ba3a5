"""LC, the learning-compression algorithm, run federatedly (Carreira-Perpiñán & Idelbayev, LC Part V).

LC solves min_{w,Θ} L(w) s.t. w = Δ(Θ) by alternating

- the **L step**, min_w L(w) + μ/2 ‖w − Δ(Θ) − λ/μ‖², and
- the **C step**, Θ = argmin_Θ ‖(w − λ/μ) − Δ(Θ)‖² (the forms of
  :mod:`.lc_forms`, additive combinations by eq. 4),
- then the multiplier step λ ← λ − μ(w − Δ(Θ)) and μ ← μ₀·a^j,

after a direct-compression start (Θ = Π(w), λ = 0). Each matched tensor
gets its own Θ (its own codebook, its own rank); tensors no group matches
(biases, BatchNorm) stay as they are.

**Federated adaptation.** The L step is ``rounds_per_step`` (R_L) federated
rounds: every client minimizes its loss plus μ/2‖w − t‖² with the same
centre t, so FedAvg over the penalized client losses is a FedProx-like
solver of the global L step. Θ, λ, μ and the C step live at the server,
which runs the C step and the multiplier update after every R_L rounds
(and after the last round, so the final model is exactly Δ(Θ)). Rounds
before ``start_round`` train the reference model without penalty. Three
variants, differing in what is broadcast:

- ``augmented_lagrangian`` (LC as published): clients start from the dense
  w̄ and get the dense t = Δ(Θ) + λ/μ; the downlink is about twice the
  model, and is counted as such.
- ``quadratic_penalty`` (λ = 0): t = Δ(Θ), so Θ travels compressed next to
  the dense w̄ (about one model plus Θ).
- ``compressed_start`` — **a heuristic, no longer LC**: clients receive
  only Θ (and the uncompressed tensors) and start from Δ(Θ), with t = Δ(Θ);
  every broadcast is compressed. The server's w is then Δ(Θ) plus the
  averaged update, so the L step no longer starts where LC's would.

**Direct compression** (``direct_compression = true``; the baseline LC's
papers compare against, DC: the C step applied once to the trained
reference, Θ = Π(w) = argmin_Θ ‖w − Δ(Θ)‖², λ = 0). The federation trains the
dense model without penalty and every broadcast is that model, dense (so a
``[downlink]`` codec may carry its change); from ``start_round`` on, the
model evaluated after each round is one C step, from a cold start, on that
round's aggregated model (nothing carries over between rounds: each row is
DC of that round's model, never fed back), and the final model is the C
step on the last one. Same forms, same Θ encoding as LC.

Δ(Θ) is always what the wire carries: each C step's Θ is encoded (Part V
appendix B: fp32 codebook + ⌈log₂ k⌉ bits per weight, sparse corrections
as Golomb-coded index gaps + fp16 values, low-rank factors in fp16) and
decoded again, and that decoded Θ is the one the server evaluates, uses in
the multiplier step, warm-starts from and saves. So the final ``model.pt``
is exactly the model a client decodes from ``final_model.bin``.
"""

from __future__ import annotations

import fnmatch
import math
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from fedcomp.coding import DecodeError, Payload, TensorSpec, pack, specs_of
from fedcomp.compressors.model.base import (
    MODEL_COMPRESSORS,
    Broadcast,
    ModelCompressor,
    ProximalTerm,
    Received,
    Snapshot,
    State,
    dense_bytes,
    read_dense,
)
from fedcomp.compressors.model.lc_forms import (
    DP_MAX_BYTES,
    AdaptiveQuantization,
    Binarization,
    Form,
    LowRank,
    PruneL0,
    RankSelection,
    Ternarization,
    additive_c_step,
    decode_theta,
    dp_bytes,
    encode_theta,
    joint_additive_c_step,
)
from fedcomp.compressors.model.structure import Architecture, Structure
from fedcomp.params import ConfigError, require

Variant = Literal["augmented_lagrangian", "quadratic_penalty", "compressed_start"]
# Payload phases: the dense reference model; the three variants' broadcasts.
PHASES = {"reference": 0, "augmented_lagrangian": 1, "quadratic_penalty": 2, "compressed_start": 3}


@dataclass
class FormParams:
    """One compression form of a group (``form`` plus the parameters that form uses)."""

    form: Literal["quantize", "binarize", "ternarize", "prune", "lowrank", "rank_selection"] = "quantize"
    k: int = 2
    """quantize: codebook size."""
    exact: bool = False
    """quantize: globally optimal 1-D k-means by dynamic programming instead of warm-started Lloyd."""
    keep: float = 0.0
    """prune: fraction of the entries kept (κ = ⌈keep·n⌉), unless ``kappa`` is set."""
    kappa: int = 0
    """prune: number of entries kept."""
    scope: Literal["tensor", "net"] = "tensor"
    """prune: κ per tensor, or one κ over all the group's tensors together (the paper's net-wide κ:
    the κ largest entries of the whole group, wherever they are; ``keep`` is then of the group's entries)."""
    rank: int = 0
    """lowrank: the rank; rank_selection: the largest rank considered (0 = full)."""
    alpha: float = 1e-6
    """rank_selection: α in α·C(r) + μ/2·Σ_{i>r} s_i², per stored parameter (or see ``normalize``)."""
    normalize: bool = False
    """rank_selection: α per the group's whole dense storage instead of per parameter (α / Σ m·n over
    the group's tensors): the same α then means the same trade-off on a small or a large model."""

    def validate(self, path: str) -> None:
        if self.form == "quantize":
            require(2 <= self.k <= 1 << 16, f"{path}.k", "a codebook size between 2 and 65536")
        if self.form == "prune":
            require(self.kappa > 0 or 0 < self.keep <= 1, path, "prune with kappa > 0 or keep in (0, 1]")
            require(self.kappa >= 0, f"{path}.kappa", "an integer >= 0")
        if self.form == "lowrank":
            require(self.rank >= 1, f"{path}.rank", "an integer >= 1")
        if self.form == "rank_selection":
            require(self.rank >= 0, f"{path}.rank", "an integer >= 0 (0 = full rank)")
            require(self.alpha > 0, f"{path}.alpha", "a number > 0")
        require(self.scope in ("tensor", "net"), f"{path}.scope", '"tensor" or "net"')
        require(self.scope == "tensor" or self.form == "prune", f"{path}.scope", '"net" only with form = "prune"')
        require(not self.normalize or self.form == "rank_selection", f"{path}.normalize", "only with rank_selection")

    def build(self, numel: int, group_numel: int = 0) -> Form:
        """The form for one tensor of ``numel`` entries in a group of ``group_numel`` (net-wide settings)."""
        if self.form == "quantize":
            return AdaptiveQuantization(self.k, exact=self.exact)
        if self.form == "binarize":
            return Binarization()
        if self.form == "ternarize":
            return Ternarization()
        if self.form == "prune":
            return PruneL0(self.kappa_of(group_numel if self.scope == "net" else numel))
        if self.form == "lowrank":
            return LowRank(self.rank)
        return RankSelection(self.rank, self.alpha / group_numel if self.normalize else self.alpha)

    def kappa_of(self, entries: int) -> int:
        """prune: κ over ``entries`` (the tensor's, or the whole group's with a net-wide scope)."""
        return self.kappa if self.kappa > 0 else max(1, math.ceil(self.keep * entries))


@dataclass
class GroupParams:
    """Tensors matched by ``layers`` (patterns over state-dict names), each compressed by the sum of ``forms``."""

    layers: list[str] = field(default_factory=lambda: ["*"])
    """fnmatch patterns; only floating tensors with two or more dimensions (weights) are matched."""
    forms: list[FormParams] = field(default_factory=lambda: [FormParams()])


@dataclass
class LCParams:
    variant: Variant = "augmented_lagrangian"
    start_round: int = 1
    """The first round of LC; rounds before it train the reference model without penalty."""
    rounds_per_step: int = 1
    """R_L: federated rounds per L step (one C step and multiplier update after each)."""
    mu0: float = 9e-5
    """μ₀ of the schedule μ_j = μ₀·a^j (the authors' LeNet-300 value)."""
    mu_growth: float = 1.1
    """a of the schedule (the authors' LeNet-300 value)."""
    sweeps: int = 10
    """Alternations of an additive combination's C step (eq. 4; the toolkit uses 10)."""
    groups: list[GroupParams] = field(default_factory=lambda: [GroupParams()])
    """The first group whose pattern matches a tensor compresses it."""
    direct_compression: bool = False
    """DC, the baseline: train dense without penalty, and evaluate (from ``start_round`` on) and ship one C step
    on each round's aggregated model, Θ = Π(w), λ = 0, cold (module docstring)."""

    def schedule_problem(self, rounds: int) -> str:
        if self.start_round > rounds:
            return f"start_round = {self.start_round} is after the last round ({rounds}): LC would never compress"
        return ""

    def validate(self, path: str) -> None:
        require(self.start_round >= 1, f"{path}.start_round", "an integer >= 1")
        require(self.rounds_per_step >= 1, f"{path}.rounds_per_step", "an integer >= 1")
        require(self.mu0 > 0, f"{path}.mu0", "a number > 0")
        require(self.mu_growth >= 1, f"{path}.mu_growth", "a number >= 1")
        require(self.sweeps >= 1, f"{path}.sweeps", "an integer >= 1")
        require(bool(self.groups), f"{path}.groups", "at least one group")
        require(not self.direct_compression or self.variant != "compressed_start", f"{path}.direct_compression",
                'false with variant = "compressed_start" (direct compression broadcasts the dense model)')  # fmt: skip
        for g, group in enumerate(self.groups):
            require(bool(group.layers), f"{path}.groups[{g}].layers", "at least one pattern")
            require(bool(group.forms), f"{path}.groups[{g}].forms", "at least one form")
            for f, form in enumerate(group.forms):
                form.validate(f"{path}.groups[{g}].forms[{f}]")


@MODEL_COMPRESSORS.register(
    "lc", "learning-compression: quantize/prune/low-rank and their sums, trained in the federation"
)
class LCCompressor(ModelCompressor):
    name = "lc"
    Params = LCParams
    payload_factor = 2.0  # the augmented-Lagrangian broadcast: w̄ and t, both dense

    def __init__(self, params: LCParams | None, arch: Architecture, seed: int = 0) -> None:
        super().__init__(params, arch, seed)
        specs = arch.specs(())
        self.specs = {s.name: s for s in specs}
        self.forms: OrderedDict[str, list[Form]] = OrderedDict()
        members = self._group_members(specs)
        totals = [sum(self.specs[n].numel for n in names) for names in members]
        self.net_groups: list[tuple[list[str], int, int]] = []
        """(tensors, index of their net-wide prune form, κ) per group with a net-wide form."""
        for g, group in enumerate(self.params.groups):
            net = [i for i, f in enumerate(group.forms) if f.form == "prune" and f.scope == "net"]
            require(len(net) <= 1, f"server_compression.groups[{g}].forms", "at most one net-wide pruning")
            if net and members[g]:
                self.net_groups.append((members[g], net[0], group.forms[net[0]].kappa_of(totals[g])))
        for spec in specs:
            for g, group in enumerate(self.params.groups):
                if spec.name in members[g]:
                    self.forms[spec.name] = [f.build(spec.numel, totals[g]) for f in group.forms]
                    for i, form in enumerate(self.forms[spec.name]):
                        if isinstance(form, AdaptiveQuantization) and form.exact:
                            need = dp_bytes(form.k, spec.numel)
                            require(need <= DP_MAX_BYTES, f"server_compression.groups[*].forms[{i}].exact",
                                    f"exact = false for k = {form.k} on {spec.name} ({spec.numel:,} weights): "
                                    f"the exact k-means would need {need / 1e9:.1f} GB")  # fmt: skip
                    break
        if not self.forms:
            patterns = [p for g in self.params.groups for p in g.layers]
            raise ConfigError(f"server_compression: no weight of the model matches the LC groups' layers {patterns}")
        # Server state: Θ as sent (bytes per tensor), Δ(Θ) decoded from them, λ, the step j.
        self.theta_bytes: dict[str, bytes] = {}
        self.thetas: dict[str, list[Any]] = {}
        self.delta: dict[str, torch.Tensor] = {}
        self.lam: dict[str, torch.Tensor] = {}
        self.step = 0

    def _group_members(self, specs: list[TensorSpec]) -> list[list[str]]:
        """The weights each group compresses: floating tensors of two or more dimensions, first match wins."""
        members: list[list[str]] = [[] for _ in self.params.groups]
        for spec in specs:
            if not spec.dtype.is_floating_point or len(spec.shape) < 2:
                continue
            for g, group in enumerate(self.params.groups):
                if any(fnmatch.fnmatchcase(spec.name, p) for p in group.layers):
                    members[g].append(spec.name)
                    break
        return members

    @property
    def active(self) -> bool:
        return bool(self.delta)

    @property
    def mu(self) -> float:
        return self.params.mu0 * self.params.mu_growth**self.step

    # ------------------------------------------------------------------ the C step
    def c_step(self, state: State) -> None:
        """Θ = argmin ‖(w − λ/μ) − Δ(Θ)‖² per tensor (λ = 0 outside the augmented Lagrangian); Θ as decoded."""
        mu = self.mu
        targets = {}
        for name, forms in self.forms.items():
            w = state[name].detach().to(torch.float64)
            if name in self.lam:
                w = w - self.lam[name].to(torch.float64) / mu
            for form in forms:
                if isinstance(form, RankSelection):
                    form.mu = mu
            targets[name] = w.numpy()
        joint = {n for names, _, _ in self.net_groups for n in names}
        for name, forms in self.forms.items():
            if name in joint:
                continue
            warm = self.thetas.get(name)
            if len(forms) == 1:
                thetas = [forms[0].c_step(targets[name], warm[0] if warm else None)]
            else:
                thetas, _ = additive_c_step(forms, targets[name], warm, self.params.sweeps)
            self._set_theta(name, encode_group(forms, thetas, self.specs[name].shape))
        for names, net, kappa in self.net_groups:  # a net-wide κ: the group's tensors in one C step
            thetas_of, _ = joint_additive_c_step(
                {n: self.forms[n] for n in names},
                {n: targets[n] for n in names},
                {n: self.thetas.get(n) for n in names},
                net,
                kappa,
                self.params.sweeps,
            )
            for n in names:
                self._set_theta(n, encode_group(self.forms[n], thetas_of[n], self.specs[n].shape))

    def _set_theta(self, name: str, data: bytes) -> None:
        spec = self.specs[name]
        thetas = decode_group(self.forms[name], data, spec.shape)
        self.theta_bytes[name] = data
        self.thetas[name] = thetas
        self.delta[name] = delta_of(self.forms[name], thetas, spec)

    def multiplier_step(self, state: State) -> None:
        """λ ← λ − μ(w − Δ(Θ)) (augmented Lagrangian only)."""
        mu = self.mu
        for name in self.forms:
            diff = state[name].detach().to(torch.float64) - self.delta[name].to(torch.float64)
            self.lam[name] = self.lam.get(name, torch.zeros_like(diff)) - mu * diff

    def direct_compression(self, state: State) -> None:
        """DC: Θ = Π(w) by one C step on ``state`` from a cold start (no Θ to warm-start from, λ = 0, μ = μ₀)."""
        self.theta_bytes, self.thetas, self.delta, self.lam = {}, {}, {}, {}
        self.step = 0
        self.c_step(state)

    def compressed_state(self, state: State) -> State:
        """w with every compressed tensor replaced by Δ(Θ)."""
        return OrderedDict((k, self.delta[k].clone() if k in self.delta else v) for k, v in state.items())

    # ------------------------------------------------------------------ server
    @classmethod
    def broadcasts_dense_model(cls, params: Any) -> bool:
        return bool(params.direct_compression)

    def broadcast(self, server_round: int, state: State, structure: Structure) -> Broadcast:
        if server_round < self.params.start_round or self.params.direct_compression:
            return Broadcast(self._payload("reference", state), state, structure)
        if not self.active:  # direct compression: Θ = Π(w), λ = 0
            self.c_step(state)
        variant = self.params.variant
        start = self.compressed_state(state) if variant == "compressed_start" else state
        metrics = {"lc_step": float(self.step), "lc_mu": self.mu}
        return Broadcast(self._payload(variant, state), start, structure, metrics)

    def end_of_round(self, server_round: int, state: State, structure: Structure, last: bool) -> Snapshot:
        p = self.params
        if p.direct_compression:
            if server_round < p.start_round and not last:
                return Snapshot(state, structure)
            self.direct_compression(state)
        else:
            if not self.active and not last:
                return Snapshot(state, structure)
            due = self.active and (server_round - p.start_round + 1) % p.rounds_per_step == 0
            if due or last:
                self.c_step(state)
                if p.variant == "augmented_lagrangian":
                    self.multiplier_step(state)
                if due:
                    self.step += 1
        compressed = self.compressed_state(state)
        num = sum(float((state[k].double() - self.delta[k].double()).pow(2).sum()) for k in self.forms)
        den = sum(float(state[k].double().pow(2).sum()) for k in self.forms)
        metrics = {
            "lc_step": float(self.step),
            "lc_mu": self.mu,
            "lc_relative_distortion": num / den if den else 0.0,
            "lc_theta_bytes": float(sum(len(b) for b in self.theta_bytes.values())),
        }
        payload = self._payload("compressed_start", compressed) if last else None
        return Snapshot(compressed, structure, metrics, payload, is_global=False)

    def _payload(self, phase: str, state: State) -> bytes:
        """The body per phase: dense w̄ (all but compressed_start), then t dense (AL) or Θ (QP, CS)."""
        parts: list[bytes] = []
        if phase != "compressed_start":
            parts.append(dense_bytes(state.values()))
        else:
            parts.append(dense_bytes(v for k, v in state.items() if k not in self.forms))
        if phase == "augmented_lagrangian":
            mu = self.mu
            parts.append(
                dense_bytes(
                    (self.delta[k].double() + self.lam.get(k, torch.zeros(())).double() / mu).float()
                    for k in self.forms
                )
            )
        elif phase in ("quadratic_penalty", "compressed_start"):
            parts += [struct.pack("<I", len(self.theta_bytes[k])) + self.theta_bytes[k] for k in self.forms]
        params = {"phase": PHASES[phase], "mu": self.mu}
        return pack(self.name, params, specs_of(state), b"".join(parts), by_digest=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "theta": {k: torch.frombuffer(bytearray(v), dtype=torch.uint8) for k, v in self.theta_bytes.items()},
            "lam": dict(self.lam),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        for name, data in state.get("theta", {}).items():
            self._set_theta(name, bytes(data.numpy().tobytes()))
        self.lam = {k: v.clone() for k, v in state.get("lam", {}).items()}

    # ------------------------------------------------------------------ client
    def decode_body(self, parsed: Payload, structure: Structure) -> Received:
        phase = parsed.params.get("phase")
        if type(phase) is not int or phase not in PHASES.values():
            raise DecodeError(f"lc: unknown phase {phase!r:.40}")
        mu = _penalty(parsed.params.get("mu"))
        specs = parsed.specs
        compressed = [s for s in specs if s.name in self.forms]
        body, pos = parsed.body, 0
        if phase != PHASES["compressed_start"]:
            state, pos = read_dense(body, pos, specs)
        else:
            state, pos = read_dense(body, pos, [s for s in specs if s.name not in self.forms])
        centre: dict[str, torch.Tensor] = {}
        if phase == PHASES["augmented_lagrangian"]:
            t_specs = [type(s)(s.name, s.shape, torch.float32) for s in compressed]
            centre, pos = read_dense(body, pos, t_specs)
        elif phase != PHASES["reference"]:
            for spec in compressed:
                data, pos = read_sized(body, pos, f"lc: Θ of {spec.name!r}")
                forms = self.forms[spec.name]
                thetas = decode_group(forms, data, spec.shape)
                centre[spec.name] = delta_of(forms, thetas, spec)
        if pos != len(body):
            raise DecodeError(f"lc: {len(body) - pos} bytes left after the broadcast")
        if phase == PHASES["compressed_start"]:
            state = OrderedDict((s.name, centre[s.name] if s.name in centre else state[s.name]) for s in specs)
        loss = ProximalTerm(centre, mu) if phase != PHASES["reference"] and mu > 0 else None
        return Received(state, structure, loss)


def _penalty(mu: Any) -> float:
    """μ from the params: a finite number ≥ 0 (an int of 400 digits is no μ either)."""
    try:
        value = float(mu) if type(mu) in (int, float) else math.nan
    except OverflowError:
        value = math.inf
    if not (math.isfinite(value) and value >= 0):
        raise DecodeError(f"lc: μ must be a finite number >= 0, got {mu!r:.40}")
    return value


def delta_of(forms: list[Form], thetas: list[Any], spec: TensorSpec) -> torch.Tensor:
    """Δ(Θ) = Σ_f Δ_f(θ_f) (eq. 1), in the tensor's dtype."""
    total = np.zeros(spec.shape)
    for form, theta in zip(forms, thetas, strict=True):
        total += form.decompress(theta, spec.shape)
    return torch.from_numpy(total).to(spec.dtype)


def read_sized(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    """A u32-length-prefixed section at ``pos``; DecodeError naming ``what`` if it does not fit."""
    if pos + 4 > len(data):
        raise DecodeError(f"{what}: the data ends before its length")
    (size,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if pos + size > len(data):
        raise DecodeError(f"{what} declares {size} bytes, {len(data) - pos} left")
    return data[pos : pos + size], pos + size


def encode_group(forms: list[Form], thetas: list[Any], shape: tuple[int, ...]) -> bytes:
    """Θ of one tensor: each form's θ (appendix B layout), a u32 length before each when there are several."""
    if len(forms) == 1:
        return encode_theta(forms[0], thetas[0], shape)
    out = []
    for form, theta in zip(forms, thetas, strict=True):
        data = encode_theta(form, theta, shape)
        out.append(struct.pack("<I", len(data)) + data)
    return b"".join(out)


def decode_group(forms: list[Form], data: bytes, shape: tuple[int, ...]) -> list[Any]:
    """Inverse of :func:`encode_group`; DecodeError for anything that does not fit."""
    if len(forms) == 1:
        return [decode_theta(forms[0], data, shape)]
    thetas, pos = [], 0
    for form in forms:
        part, pos = read_sized(data, pos, f"the {type(form).__name__} part of Θ")
        thetas.append(decode_theta(form, part, shape))
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} bytes after the last form's θ")
    return thetas
