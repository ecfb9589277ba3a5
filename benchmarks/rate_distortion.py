"""Rate–distortion of every uplink compressor at equal bytes, against the Laplacian's R(D).

For each source vector and each byte budget (``max_bytes``, the whole
payload), every sparsifying compressor encodes the vector once; the
decoded update's normalized distortion ‖g − ĝ‖²/‖g‖² is plotted against
its measured rate, 8·len(payload)/n bits per coordinate. Sources:

- ``laplace``: i.i.d. Laplacian values in LeNet-5-Caffe's tensor shapes
  (431,080 coordinates), the paper's model of NN weights and gradients;
- ``update``: a real client update (w_local − w_global of one SGD step)
  from a short FedSGD training of LeNet-5-Caffe on the embedded digits,
  10 IID clients, fedcomp's own ``train_local`` (no Flower);
- ``ef``: the same client's error-feedback vector at that round (its
  update plus the residual that top-k at 0.1% left it over the earlier
  rounds): what an error-feedback compressor actually compresses.

**The bound** (drawn on the Laplacian panel): the rate–distortion function
of the Laplacian source under mean squared error, computed numerically by
the Blahut–Arimoto algorithm on a fine grid (reproduction alphabet = source
grid; its points are achievable test channels, so the curve is R(D) from
above, to the convergence tolerance), with the Shannon lower bound
R ≥ h(X) − ½·log₂(2πeD) = ½·log₂(e/(π·D/σ²)) (a strict lower bound here)
and the Gaussian curve ½·log₂(σ²/D) (an upper bound for any source of that
variance) for reference. (The paper's Lemma 1, R(D) = −log(λD), is the
Laplacian's R(D) under ℓ₁ distortion; under MSE there is no closed form and
the SLB is not tight, so the curve is computed, not assumed.) A code of
n = 431,080 symbols at 0.02 bits per coordinate sits where Blahut–Arimoto
converges slowest; points near the curve there are within its tolerance.

The quantizers and PowerSGD (QSGD at s = 1, 2, 4, 16; TernGrad; the
scaled sign; PowerSGD at rank 1, 2, 4, 8; EDEN at 1, 2, 4 bits; DRIVE with
both scales; NF4; blockwise 8-bit, dynamic and linear; quantized_ec at
0.1–2 bits a coordinate) are measured at their own settings, with top-k,
STC and SuRP given that payload's length as their ``max_bytes``.
quantized_ec (whose step follows ``max_bytes``) and top-k with the zstd
stage (``lossless = "zstd"``) also run at the budgets.

Prints a table of distortions, a table of ratios against top-k at each
budget (< 1: better than top-k at equal bytes), the quantizers' table, writes ``rate_distortion.png``
and ``rate_distortion.json`` to ``--out`` (default
``runs/rate_distortion``, ignored by git), and ends with a JSON line.
Seeds and threads are fixed (one torch thread).

    python benchmarks/rate_distortion.py [--quick] [--out DIR] [--rounds R]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from fedcomp.clients.training import float_state, model_delta, train_local
from fedcomp.coding import DecodeLimits, specs_of
from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.compressors.update.base import EncodeContext
from fedcomp.compressors.update.feedback import RESIDUAL_PREFIX, encode_with_feedback
from fedcomp.config import ClientConfig
from fedcomp.data import load_dataset
from fedcomp.data.partition import partition_indices
from fedcomp.models import build_model

# (label, registry name, parameters besides density and max_bytes)
COMPRESSORS = (
    ("topk", "topk", {}),
    ("topk_fp16", "topk", {"values": "fp16"}),
    ("stc", "stc", {}),
    ("randomk", "randomk", {}),
    ("rtopk", "rtopk", {"r_factor": 2.0}),
    ("dgc", "dgc", {"momentum_correction": False}),
    ("surp", "surp", {}),
    ("surp_iterative", "surp", {"mode": "iterative"}),
    ("topk_zstd", "topk", {"lossless": "zstd"}),
    ("quantized_ec", "quantized_ec", {"bits": 32.0}),  # the step grows until max_bytes holds
)
# The quantizers and PowerSGD take no byte budget: each is measured at its own settings, and top-k, STC and SuRP
# are measured at the same bytes as each of those payloads (label, registry name, settings).
RATE_POINTS = (
    ("qsgd", "qsgd", tuple({"levels": s} for s in (1, 2, 4, 16))),
    ("terngrad", "terngrad", ({},)),
    ("signsgd", "signsgd", ({},)),
    ("powersgd", "powersgd", tuple({"rank": r} for r in (1, 2, 4, 8))),
    ("eden", "eden", tuple({"bits": b} for b in (1, 2, 4))),
    ("drive", "drive", ({}, {"scale": "min_mse"})),
    ("nf4", "nf4", ({},)),
    ("blockwise8", "blockwise8", ({}, {"code": "linear"})),
    ("quantized_ec", "quantized_ec", tuple({"bits": b} for b in (0.1, 0.5, 1.0, 2.0))),
)
RATES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
QUICK_RATES = (0.02, 0.1, 0.5)
"""Budgets in bits per coordinate (max_bytes = rate·n/8)."""


# ----------------------------------------------------------------------------- sources


def lenet_shapes() -> OrderedDict[str, tuple[int, ...]]:
    model = build_model("lenet5_caffe", (1, 28, 28), 10)
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items() if v.is_floating_point())


def laplace_source(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return OrderedDict((k, torch.from_numpy(rng.laplace(size=s).astype(np.float32))) for k, s in lenet_shapes().items())


def training_sources(rounds: int, seed: int = 0) -> dict[str, OrderedDict[str, torch.Tensor]]:
    """Client 0's update and error-feedback vector after ``rounds`` FedSGD rounds (10 IID clients, lr 0.1).

    The server averages the clients' uncompressed updates; client 0 also
    keeps the residual of top-k at 0.1% with error feedback, so its
    error-feedback vector (update + residual) is the one such a client sends.
    """
    data = load_dataset("mnist5k")
    parts = partition_indices(data.train.labels, 10, "iid", seed=seed)
    clients = [data.train.subset(p) for p in parts]
    torch.manual_seed(seed)
    model = build_model("lenet5_caffe", data.input_shape, data.num_classes)
    cfg = ClientConfig(local_steps=1, batch_size=64, lr=0.1)
    ef_codec = UPDATE_COMPRESSORS.get("topk")(UPDATE_COMPRESSORS.get("topk").Params(density=0.001), seed=seed)
    ef_state: dict = {}
    device = torch.device("cpu")
    for r in range(1, rounds + 1):
        start = float_state(model)
        deltas = []
        for c, part in enumerate(clients):
            model.load_state_dict(start, strict=False)
            train_local(model, part, cfg, torch.Generator().manual_seed(seed * 100_003 + r * 101 + c), device)
            deltas.append(model_delta(float_state(model), start))
        update = deltas[0]
        residual = {k[len(RESIDUAL_PREFIX) :]: v for k, v in ef_state.items() if k.startswith(RESIDUAL_PREFIX)}
        ef_vector = OrderedDict((k, v + residual.get(k, torch.zeros_like(v))) for k, v in update.items())
        ef_state = encode_with_feedback(ef_codec, update, ef_state, EncodeContext(r, 0, 10)).state
        mean = OrderedDict((k, sum(d[k] for d in deltas) / len(deltas)) for k in start)
        model.load_state_dict(OrderedDict((k, start[k] + mean[k]) for k in start), strict=False)
    return {"update": update, "ef": ef_vector}


# ----------------------------------------------------------------------------- the bound


def laplace_rd_mse(points: int = 601, slopes: int = 40, iterations: int = 4000) -> list[tuple[float, float]]:
    """R(D) of the unit-variance Laplacian under MSE by Blahut–Arimoto: [(D/σ², R bits per symbol)].

    The source is discretized on ``points`` cells over ±8σ (mass outside
    < 1e-4); the reproduction alphabet is the same grid. Each slope s gives
    one test channel Q and its point (D(Q), I(Q)) (Blahut 1972); every such
    point is achievable, so the curve is an upper bound on R(D) that meets
    it as the iterations converge (stopped when q moves by < 1e-9, or after
    ``iterations``). Points that have not converged (D above σ²) are
    dropped and the lower convex hull is kept.
    """
    lam = math.sqrt(2.0)  # unit variance: σ² = 2/λ²
    x = np.linspace(-8.0, 8.0, points)
    p = np.exp(-lam * np.abs(x))
    p /= p.sum()
    var = float((p * x * x).sum())
    d = (x[:, None] - x[None, :]) ** 2
    curve = [(1.0, 0.0)]
    for s in np.geomspace(0.3, 60.0, slopes):
        a = np.exp(-s * var * d)
        q = np.full(points, 1.0 / points)
        for _ in range(iterations):
            c = np.maximum(a @ q, 1e-300)  # Σ_y q(y) e^{-s d(x,y)}
            new = q * (a.T @ (p / c))
            new /= new.sum()
            done = float(np.abs(new - q).max()) < 1e-9
            q = new
            if done:
                break
        c = np.maximum(a @ q, 1e-300)
        cond = a * q[None, :] / c[:, None]
        dist = float((p[:, None] * cond * d).sum()) / var
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(cond > 0, cond / np.maximum(q[None, :], 1e-300), 1.0)
            rate = float((p[:, None] * cond * np.log2(np.where(ratio > 0, ratio, 1.0))).sum())
        if dist < 1.0:
            curve.append((dist, max(rate, 0.0)))
    return lower_hull(curve)


def lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower convex hull of (D, R) points, by increasing D (R(D) is convex and decreasing)."""
    hull: list[tuple[float, float]] = []
    for pt in sorted(points):
        while len(hull) >= 2:
            (d1, r1), (d2, r2) = hull[-2], hull[-1]
            if (d2 - d1) * (pt[1] - r1) - (r2 - r1) * (pt[0] - d1) <= 0:
                hull.pop()
            else:
                break
        hull.append(pt)
    return hull


def shannon_lower_bound(d: np.ndarray) -> np.ndarray:
    """SLB of the Laplacian under MSE in bits: h(X) − ½log₂(2πeD) = ½log₂(e/(π·D/σ²)), floored at 0."""
    return np.maximum(0.5 * np.log2(math.e / (math.pi * d)), 0.0)


# ----------------------------------------------------------------------------- measuring


def measure(source: OrderedDict[str, torch.Tensor], rates: tuple[float, ...], seed: int) -> dict[str, list[dict]]:
    """For each compressor and budget: the payload's bits per coordinate and the normalized distortion."""
    n = sum(v.numel() for v in source.values())
    out: dict[str, list[dict]] = {}
    for label, name, extra in COMPRESSORS:
        rows = []
        for rate in rates:
            budget = int(rate * n / 8)
            density = min(1.0, 8 * budget / (2 * n))  # no codec sends a nonzero in under 2 bits
            params = {"density": density, "max_bytes": budget, **extra}
            if "density" not in {f.name for f in dataclasses.fields(UPDATE_COMPRESSORS.get(name).Params)}:
                del params["density"]  # quantized_ec: the budget alone sets its step
            rows.append({"budget_bytes": budget, **encode_distortion(source, name, params, seed)})
        out[label] = rows
    return out


def encode_distortion(source: OrderedDict[str, torch.Tensor], name: str, params: dict, seed: int) -> dict:
    """One encode of ``source`` (no error feedback) through its bytes: its size, distortion and encode time."""
    n = sum(v.numel() for v in source.values())
    g = torch.cat([v.reshape(-1) for v in source.values()]).double()
    cls = UPDATE_COMPRESSORS.get(name)
    comp = cls(cls.parse_params({"error_feedback": False, **params}, "uplink"), seed=seed)
    t0 = time.perf_counter()
    enc = comp.encode(source, {}, EncodeContext(1, 0, 10))
    seconds = time.perf_counter() - t0
    dec = comp.decode(enc.payload, DecodeLimits.for_specs(specs_of(source)))
    h = torch.cat([dec[k].reshape(-1) for k in source]).double()
    return {
        "bytes": len(enc.payload),
        "bits_per_coord": 8 * len(enc.payload) / n,
        "distortion": float(((g - h) ** 2).sum()) / float((g * g).sum()),
        "nonzeros": int((h != 0).sum()),
        "encode_s": round(seconds, 4),
    }


def measure_points(source: OrderedDict[str, torch.Tensor], seed: int) -> dict[str, list[dict]]:
    """Each quantizer setting, with top-k, STC and SuRP at its bytes (``max_bytes`` = its payload's length)."""
    n = sum(v.numel() for v in source.values())
    out: dict[str, list[dict]] = {}
    for label, name, settings in RATE_POINTS:
        rows = []
        for params in settings:
            point = {"params": params, **encode_distortion(source, name, params, seed)}
            for rival in ("topk", "stc", "surp"):
                density = min(1.0, point["bytes"] / (2 * n / 8))  # far above what the budget allows
                at = encode_distortion(source, rival, {"density": density, "max_bytes": point["bytes"]}, seed)
                point[f"{rival}_distortion"] = at["distortion"]
            point["ratio_to_topk"] = point["distortion"] / point["topk_distortion"]
            rows.append(point)
        out[label] = rows
    return out


def ratios_to_topk(results: dict[str, list[dict]]) -> dict[str, list[float]]:
    """Distortion / top-k's distortion at each budget (equal max_bytes)."""
    base = [r["distortion"] for r in results["topk"]]
    return {
        label: [round(r["distortion"] / b, 4) if b > 0 else math.nan for r, b in zip(rows, base, strict=True)]
        for label, rows in results.items()
    }


def plot(all_results: dict, bound: list[tuple[float, float]], path: Path, points: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_results), figsize=(5.5 * len(all_results), 4.5), squeeze=False)
    for ax, (source, results) in zip(axes[0], all_results.items(), strict=True):
        for label, rows in results.items():
            ax.plot([r["bits_per_coord"] for r in rows], [r["distortion"] for r in rows], marker="o", label=label)
        for label, rows in (points or {}).get(source, {}).items():
            ax.plot(
                [r["bits_per_coord"] for r in rows], [r["distortion"] for r in rows], ls=":", marker="s", label=label
            )
        if source == "laplace":
            dd, rr = zip(*bound, strict=True)
            ax.plot(rr, dd, "k-", lw=2, label="Laplacian R(D), MSE (Blahut–Arimoto)")
            d = np.geomspace(0.01, 1.0, 200)
            ax.plot(shannon_lower_bound(d), d, "k:", label="Shannon lower bound")
            ax.plot(0.5 * np.log2(1 / d), d, "k--", lw=0.8, label="Gaussian (upper bound)")
        ax.set_xscale("log")
        ax.set_xlim(0.005, 1.5)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("bits per coordinate (whole payload)")
        ax.set_ylabel("‖g − ĝ‖² / ‖g‖²")
        ax.set_title(source)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="three budgets, 5 training rounds, a coarser bound")
    parser.add_argument("--rounds", type=int, help="FedSGD rounds before the update is captured (default 30)")
    parser.add_argument("--out", default="runs/rate_distortion", help="folder for the figure and the JSON")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rates = QUICK_RATES if args.quick else RATES
    rounds = args.rounds or (5 if args.quick else 30)
    t0 = time.perf_counter()
    sources = {"laplace": laplace_source(args.seed), **training_sources(rounds, args.seed)}
    all_results = {name: measure(src, rates, args.seed) for name, src in sources.items()}
    points = {name: measure_points(src, args.seed) for name, src in sources.items()}
    bound = laplace_rd_mse(*((241, 16, 3000) if args.quick else (601, 40, 6000)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(all_results, bound, out / "rate_distortion.png", points)

    n = sum(v.numel() for v in sources["laplace"].values())
    print(f"rate–distortion at equal bytes: n = {n:,}, budgets {list(rates)} bits per coordinate")
    ratios = {}
    for source, results in all_results.items():
        ratios[source] = ratios_to_topk(results)
        print(f"\n{source}: distortion ‖g − ĝ‖²/‖g‖² (bits per coordinate as sent)")
        print(f"{'method':<16}" + "".join(f"{r:>16}" for r in rates))
        for label, rows in results.items():
            cells = "".join(f"{r['distortion']:>8.4f} @{r['bits_per_coord']:<6.3f}" for r in rows)
            print(f"{label:<16}{cells}")
        print(f"{source}: ratio to top-k at equal bytes (< 1 is better)")
        for label, values in ratios[source].items():
            print(f"{label:<16}" + "".join(f"{v:>16.3f}" for v in values))
        print(f"{source}: the quantizers and PowerSGD, with top-k, STC and SuRP at the same bytes")
        print(
            f"{'method':<14}{'setting':<15}{'bits/coord':>11}{'distortion':>12}{'top-k':>9}{'STC':>9}{'SuRP':>9}{'÷ top-k':>9}"
        )
        for label, rows in points[source].items():
            for r in rows:
                setting = ",".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
                print(
                    f"{label:<14}{setting:<15}{r['bits_per_coord']:>11.3f}{r['distortion']:>12.4f}"
                    f"{r['topk_distortion']:>9.4f}{r['stc_distortion']:>9.4f}{r['surp_distortion']:>9.4f}"
                    f"{r['ratio_to_topk']:>9.3f}"
                )
    bound_at = {str(r): float(np.interp(r, [b[1] for b in bound][::-1], [b[0] for b in bound][::-1])) for r in rates}
    figures = {
        "n": n,
        "rates": list(rates),
        "rounds": rounds,
        "results": all_results,
        "ratio_to_topk": ratios,
        "rate_points": points,
        "laplace_rd_distortion_at_rate": bound_at,
        "figure": str(out / "rate_distortion.png"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "rate_distortion.json").write_text(json.dumps(figures, indent=1))
    summary = {k: v for k, v in figures.items() if k != "results"}
    print(json.dumps(summary))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
