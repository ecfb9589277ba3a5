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
otherwise (more kept channels than filter coefficients). :func:`prune_scales`.

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

**Choices the seed text leaves open, stated.** Channels to prune: per
layer, the ``prune`` fraction with the smallest ℓ2 norm of the BN-scaled
filter ŵ_i. Only untied layers are pruned (:mod:`.channels`: the conv's
channels feed one BN → ReLU → one conv/linear; residual outputs stay).
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

import numpy as np
import torch

from fedcomp.coding import BitReader, BitWriter, DecodeError, Payload, pack, specs_of, tensor_to_bytes
from fedcomp.compressors.model import MODEL_COMPRESSORS
from fedcomp.compressors.model.base import Broadcast, ModelCompressor, Received, Snapshot, State, read_dense
from fedcomp.compressors.model.channels import channel_graph, resize_edits
from fedcomp.compressors.model.structure import Architecture, Structure, structure_to_json
from fedcomp.config import require


@dataclass
class UDFCParams:
    prune: float = 0.3
    """Fraction of the output channels removed in every untied conv–BN–ReLU layer."""
    bits: int = 6
    """Bit width of the weight codes."""
    alpha1: float = 0.01
    """Weight of the bias term in the pruning compensation (eq. 10)."""
    alpha2: float = 0.008
    """Weight of the bias term in the quantization compensation (eq. 13)."""
    compensate: bool = True
    """False: plain pruning + quantization, the baseline UDFC is compared with."""
    start_round: int = 1
    """The first round whose broadcast is compressed (rounds before it broadcast the dense model)."""
    final_only: bool = False
    """Broadcast dense every round; compress only the final model."""

    def validate(self, path: str) -> None:
        require(0 <= self.prune < 1, f"{path}.prune", "a fraction in [0, 1)")
        require(2 <= self.bits <= 16, f"{path}.bits", "a bit width between 2 and 16")
        require(self.alpha1 >= 0 and self.alpha2 >= 0, f"{path}.alpha1/alpha2", "numbers >= 0")
        require(self.start_round >= 1, f"{path}.start_round", "an integer >= 1")


# ----------------------------------------------------------------------------- the closed forms


def bn_fold(state: State, bn: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(γ/σ, b̂ = β − γμ/σ) of a BatchNorm, σ = √(var + ε)."""
    gamma = state[f"{bn}.weight"].double().numpy()
    beta = state[f"{bn}.bias"].double().numpy()
    mean = state[f"{bn}.running_mean"].double().numpy()
    sigma = np.sqrt(state[f"{bn}.running_var"].double().numpy() + eps)
    return gamma / sigma, beta - gamma * mean / sigma


def prune_scales(w_hat: np.ndarray, b_hat: np.ndarray, j: int, kept: np.ndarray, alpha1: float) -> np.ndarray:
    """ŝ = argmin ‖ŵ_j − Ŵ_K ŝ‖² + α₁(b̂_j − b̂_Kᵀŝ)² = M⁺y (module docstring; eq. 7 and 10)."""
    root = math.sqrt(alpha1)
    m = np.vstack([w_hat[kept].T, root * b_hat[kept][None, :]])
    y = np.concatenate([w_hat[j], [root * b_hat[j]]])
    return np.linalg.lstsq(m, y, rcond=None)[0]


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
        base = arch.build()
        self.eps = {n: m.eps for n, m in base.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
        self.pruned = False

    # ------------------------------------------------------------------ the method
    def prune(self, state: State) -> tuple[State, dict[str, float]]:
        """Remove the weakest channels of every untied layer; compensate in the next layer (eq. 7)."""
        p = self.params
        w_state = OrderedDict((k, v.clone()) for k, v in state.items())
        removed = 0
        for t in self.graph.triples:
            conv_w = w_state[f"{t.conv}.weight"].double().numpy()
            channels = conv_w.shape[0]
            n_prune = int(round(p.prune * channels))
            if n_prune == 0 or n_prune >= channels:
                continue
            g, b_hat = bn_fold(w_state, t.bn, self.eps[t.bn])
            w_hat = g[:, None] * conv_w.reshape(channels, -1)
            order = np.argsort(np.linalg.norm(w_hat, axis=1), kind="stable")
            pruned, kept = np.sort(order[:n_prune]), np.sort(order[n_prune:])
            nxt = w_state[f"{t.next}.weight"].double().numpy().copy()
            if p.compensate:
                for j in pruned:
                    s = prune_scales(w_hat, b_hat, int(j), kept, p.alpha1)
                    shape = (1, -1) + (1,) * (nxt.ndim - 2)
                    nxt[:, kept] += s.reshape(shape) * nxt[:, j : j + 1]
            idx = torch.from_numpy(kept)
            for key in [f"{t.conv}.weight", f"{t.conv}.bias"] + [
                f"{t.bn}.{x}" for x in ("weight", "bias", "running_mean", "running_var")
            ]:
                if key in w_state:
                    w_state[key] = w_state[key].index_select(0, idx)
            dtype = w_state[f"{t.next}.weight"].dtype
            w_state[f"{t.next}.weight"] = torch.from_numpy(nxt[:, kept]).to(dtype).contiguous()
            removed += n_prune
        self.pruned = True
        total = sum(w_state[f"{t.conv}.weight"].shape[0] for t in self.graph.triples) + removed
        return w_state, {
            "udfc_channels_removed": float(removed),
            "udfc_channel_fraction_removed": removed / max(total, 1),
        }

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
            if p.compensate and bn is not None:
                g, b_hat = bn_fold(state, bn, self.eps[bn])
                flat, flat_q = w.reshape(w.shape[0], -1), w_q.reshape(w.shape[0], -1)
                s = np.array([quant_scale(flat[m], flat_q[m], g[m], b_hat[m], p.alpha2) for m in range(w.shape[0])])
                for key in (f"{bn}.weight", f"{bn}.bias"):
                    out[key] = (out[key].double() * torch.from_numpy(s)).to(out[key].dtype)
        return out, packed

    def compress(self, state: State, structure: Structure) -> tuple[bytes, State, Structure, dict[str, float]]:
        """Prune (once) and quantize; the payload and the model exactly as decoded from it."""
        metrics: dict[str, float] = {}
        if not self.pruned and self.params.prune > 0:
            state, metrics = self.prune(state)
            structure = resize_edits(self.arch, state)
        self.pruned = True
        payload = self._payload(*self.quantize(state), structure)
        decoded = self.decode(payload)
        return payload, decoded.state, decoded.structure, metrics

    # ------------------------------------------------------------------ server
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
