"""Model compressors' building blocks: ALDS against uniform SVD, and LC C-step times.

ALDS (Algorithm 1) on ResNet-20's 3×3 convolutions at a target of 50% of
their parameters removed, next to the uniform-rank SVD baseline at the same
budget (measured in the same run): time, achieved size and the maximum
relative error (the tabulated measure, and the true operator-norm error of
the worst layer), and ALDS+ (the same search over the four folding
schemes of supplement A.6). Then one LC C step per model and form (adaptive 2-entry
quantization, 1% pruning, Q+P additive combination, rank-8 low rank on the
big matrices), timed over all the model's weight tensors. Then UDFC on
ResNet-20 trained six epochs on the embedded digits (once, cached under
``--out``), at 10% and 30% pruning + 6 bits and 50% + 4 bits: accuracy with
UDFC's defaults next to plain pruning + quantization and to random channels
(same compensation) at the same size, mean ± sd over 3 seeds
(class-stratified test halves; the random channels' seed). Then
BWCP: ResNet-20 trained three epochs (learning rate 0.1, 0.03, 0.01) with
BWCP modules and the sparse regularizer — as the paper writes it, and with
fedcomp's sigmoid-alike transformation and β start, at the paper's λ and at
the stronger ones a short training needs — pruned: accuracy change against
plain BatchNorm trained the same way, and the fraction of FLOPs and
parameters removed.

    python benchmarks/model_compressors.py [--quick] [--out runs/model_compressors]

Prints a table, then a JSON object as its last line. ``--quick`` uses fewer
ALDS initializations and LeNet-5-Caffe only for LC.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from fedcomp.clients.training import evaluate, train_local
from fedcomp.compressors.model.alds import SCHEMES, allocate, tabulate, true_error, uniform_svd
from fedcomp.compressors.model.bwcp import BWCP, BWCPCompressor, BWCPParams, SparseRegularizer
from fedcomp.compressors.model.lc_forms import AdaptiveQuantization, LowRank, PruneL0, additive_c_step
from fedcomp.compressors.model.structure import Architecture
from fedcomp.compressors.model.udfc import UDFCCompressor, UDFCParams
from fedcomp.config import ClientConfig
from fedcomp.data import load_dataset
from fedcomp.models import build_model


def alds_vs_svd(seeds: int) -> dict:
    model = build_model("resnet20", (3, 32, 32), 10)
    weights = {
        n: m.weight.detach().numpy()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.in_channels > 3
    }
    t0 = time.perf_counter()
    tables = [tabulate(n, w) for n, w in weights.items()]
    t_tab = time.perf_counter() - t0
    dense = sum(t.dense_params for t in tables)
    budget = dense // 2
    t0 = time.perf_counter()
    alds = allocate(tables, budget, seeds=seeds)
    t_alds = time.perf_counter() - t0
    t0 = time.perf_counter()
    svd = uniform_svd(tables, budget)
    t_svd = time.perf_counter() - t0
    t0 = time.perf_counter()
    plus = allocate([tabulate(n, w, schemes=SCHEMES) for n, w in weights.items()], budget, seeds=seeds)
    t_plus = time.perf_counter() - t0

    def worst_true(alloc) -> float:
        return max((true_error(weights[n], *c) for n, c in alloc.choice.items() if c is not None), default=0.0)

    return {
        "layers": len(tables),
        "dense_params": dense,
        "target_removed": 0.5,
        "tabulate_s": round(t_tab, 3),
        "alds": {
            "time_s": round(t_alds, 3),
            "removed": round(1 - alds.params / dense, 4),
            "max_error": round(alds.max_error, 4),
            "max_true_error": round(worst_true(alds), 4),
        },
        "alds_plus": {
            "time_s": round(t_plus, 3),  # tabulating the four schemes included
            "removed": round(1 - plus.params / dense, 4),
            "max_error": round(plus.max_error, 4),
            "max_true_error": round(worst_true(plus), 4),
            "schemes": sorted({c[2] for c in plus.choice.values() if c is not None}),
        },
        "uniform_svd": {
            "time_s": round(t_svd, 3),
            "removed": round(1 - svd.params / dense, 4),
            "max_error": round(svd.max_error, 4),
            "max_true_error": round(worst_true(svd), 4),
        },
    }


def lc_c_steps(model_name: str, shape: tuple[int, int, int]) -> dict:
    model = build_model(model_name, shape, 10)
    weights = [p.detach().numpy().astype(np.float64) for n, p in model.named_parameters() if n.endswith("weight")]
    n = sum(w.size for w in weights)
    forms = {
        "quant_k2": lambda w: AdaptiveQuantization(k=2).c_step(w),
        "prune_1pct": lambda w: PruneL0(kappa=max(1, w.size // 100)).c_step(w),
        "quant_k2+prune_1pct": lambda w: additive_c_step(
            [AdaptiveQuantization(k=2), PruneL0(kappa=max(1, w.size // 100))], w
        ),
        "lowrank_8": lambda w: LowRank(rank=8).c_step(w) if w.ndim >= 2 else None,
    }
    out = {"params": n}
    for name, fn in forms.items():
        t0 = time.perf_counter()
        for w in weights:
            fn(w)
        out[name + "_s"] = round(time.perf_counter() - t0, 4)
    return out


def _train_data(split, quick: bool):  # noqa: ANN001, ANN202 - SplitData in, ImageData out
    """All 4,000 training digits, or the first 1,500 with --quick (one minute for the whole benchmark)."""
    return split.train.subset(np.arange(1500)) if quick else split.train


UDFC_EPOCH_LRS = (0.1, 0.1, 0.03, 0.03, 0.01, 0.003)
"""The UDFC reference: six epochs with a decaying learning rate (the test accuracy has levelled off by then)."""
UDFC_THREADS = 2
"""Training and evaluation threads: the float sums, and so the trained reference, depend on the thread count."""
UDFC_SETTINGS = ((0.1, 6), (0.3, 6), (0.5, 4))


def _udfc_reference(arch: Architecture, split, out_dir: Path, quick: bool) -> OrderedDict:  # noqa: ANN001
    """ResNet-20 trained once on the embedded digits and cached under ``out_dir`` (never in the repository)."""
    lrs = UDFC_EPOCH_LRS[:1] if quick else UDFC_EPOCH_LRS
    path = out_dir / f"udfc_reference_resnet20_{'quick' if quick else 'full'}_{len(lrs)}ep_t{UDFC_THREADS}.pt"
    if path.exists():
        return OrderedDict(torch.load(path, weights_only=True))
    torch.manual_seed(0)
    model = arch.build()
    gen = torch.Generator().manual_seed(0)
    for lr in lrs:
        cfg = ClientConfig(local_epochs=1, batch_size=64, lr=lr, momentum=0.9)
        train_local(model, _train_data(split, quick), cfg, gen, torch.device("cpu"))
    state = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def udfc_vs_plain(out_dir: Path, quick: bool = False, seeds: int = 3) -> dict:
    """UDFC's defaults against plain pruning + quantization and against random channels, data-free.

    One reference model (trained once, cached); per seed, a class-stratified half of the test set and the
    seed of the random channels; mean ± sd over the seeds.
    """
    from fedcomp.data.embedded import stratified_split

    old_threads = torch.get_num_threads()
    torch.set_num_threads(UDFC_THREADS)
    try:
        split = load_dataset("mnist5k", "", False, 1000, 0)
        arch = Architecture("resnet20", split.input_shape, split.num_classes)
        state = _udfc_reference(arch, split, out_dir, quick)
        cpu = torch.device("cpu")
        labels = split.test.labels.numpy()
        subsets = [split.test.subset(stratified_split(labels, len(labels) // 2, seed)[1]) for seed in range(seeds)]
        model = arch.build().eval()
        model.load_state_dict(state)
        reference = [evaluate(model, test, cpu)[1] for test in subsets]
        variants = {"plain": {"compensate": False}, "compensated": {}, "random": {"criterion": "random"}}
        rows = []
        for prune, bits in UDFC_SETTINGS:
            acc: dict[str, list[float]] = {k: [] for k in variants}
            size, elapsed = 0, 0.0
            for seed, test in enumerate(subsets):
                for key, kw in variants.items():
                    t0 = time.perf_counter()
                    udfc = UDFCCompressor(UDFCParams(prune, bits=bits, **kw), arch, seed=seed)
                    payload, got, structure, _ = udfc.compress(state, ())
                    if key == "compensated":
                        elapsed, size = time.perf_counter() - t0, len(payload)
                    thin = arch.build(structure).eval()
                    thin.load_state_dict(got)
                    acc[key].append(evaluate(thin, test, cpu)[1])
            row: dict = {"prune": prune, "bits": bits}
            row.update({k: round(float(np.mean(v)), 4) for k, v in acc.items()})
            row["sd"] = {k: round(float(np.std(v, ddof=1)), 4) if len(v) > 1 else 0.0 for k, v in acc.items()}
            row["bytes"], row["time_s"] = size, round(elapsed, 3)
            rows.append(row)
    finally:
        torch.set_num_threads(old_threads)
    return {"reference_accuracy": round(float(np.mean(reference)), 4), "seeds": seeds, "settings": rows}


def flops_and_params(model: torch.nn.Module, shape: tuple[int, int, int]) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass (conv: weights × output positions; linear: weights) and parameters."""
    total = [0]

    def hook(module, _inp, out):  # noqa: ANN001
        positions = out[0, 0].numel() if isinstance(module, torch.nn.Conv2d) else 1
        total[0] += module.weight.numel() * positions

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total[0], sum(p.numel() for p in model.parameters())


BWCP_EPOCH_LRS = (0.1, 0.03, 0.01)
"""Three epochs with a decaying learning rate: one epoch at 0.1 leaves eval-mode accuracy too noisy to compare."""


def _train_epochs(model, data, gen, quick: bool, loss_term=None) -> None:  # noqa: ANN001
    for lr in BWCP_EPOCH_LRS[:1] if quick else BWCP_EPOCH_LRS:
        cfg = ClientConfig(local_epochs=1, batch_size=64, lr=lr, momentum=0.9)
        train_local(model, data, cfg, gen, torch.device("cpu"), loss_term=loss_term)


BWCP_SETTINGS = (  # (lambda1, lambda2, sharpness, beta_init, share_residual)
    (4e-5, 8e-5, 1.0, 0.0, True),  # the paper as written: its λ, no transformation, β from 0
    (4e-3, 8e-3, 1.0, 0.0, True),  # ... with λ strong enough for three epochs
    (4e-5, 8e-5, 10.0, 0.3, True),  # fedcomp's defaults
    (1e-3, 2e-3, 10.0, 0.3, True),
    (4e-3, 8e-3, 10.0, 0.3, True),
    (4e-3, 8e-3, 10.0, 0.3, False),  # untied layers only: no residual stream pruned
)


def bwcp_tradeoff(settings, quick: bool = False) -> dict:  # noqa: ANN001
    """ResNet-20 trained with BWCP modules and the sparse regularizer, pruned; against plain BatchNorm."""
    split = load_dataset("mnist5k", "", False, 1000, 0)
    arch = Architecture("resnet20", split.input_shape, split.num_classes)
    cpu = torch.device("cpu")
    data = _train_data(split, quick)
    torch.manual_seed(0)
    base = arch.build()
    _train_epochs(base, data, torch.Generator().manual_seed(0), quick)
    base_flops, base_params = flops_and_params(base, split.input_shape)
    out: dict = {"baseline_accuracy": evaluate(base, split.test, cpu)[1], "settings": []}
    for lambda1, lambda2, sharpness, beta_init, share in settings:
        params = BWCPParams(lambda1, lambda2, sharpness=sharpness, beta_init=beta_init, share_residual=share)
        comp = BWCPCompressor(params, arch)
        torch.manual_seed(0)
        model = arch.build(comp.bwcp_edits)
        model.load_state_dict(comp.to_bwcp(OrderedDict(arch.build().state_dict())))
        gen = torch.Generator().manual_seed(0)
        for m in model.modules():
            if isinstance(m, BWCP):
                m.generator = gen
        t0 = time.perf_counter()
        _train_epochs(model, data, gen, quick, SparseRegularizer(lambda1, lambda2))
        train_s = time.perf_counter() - t0
        masked_acc = evaluate(model, split.test, cpu)[1]
        state, structure, metrics = comp.prune(OrderedDict(model.state_dict()), comp.bwcp_edits)
        pruned = arch.build(structure)
        pruned.load_state_dict(state)
        flops, n_params = flops_and_params(pruned, split.input_shape)
        out["settings"].append({
            "lambda1": lambda1,
            "lambda2": lambda2,
            "sharpness": sharpness,
            "beta_init": beta_init,
            "share_residual": share,
            "train_s": round(train_s, 1),
            "masked_accuracy": masked_acc,
            "pruned_accuracy": evaluate(pruned, split.test, cpu)[1],
            "channels_removed": metrics["bwcp_channel_fraction_removed"],
            "flops_removed": round(1 - flops / base_flops, 4),
            "params_removed": round(1 - n_params / base_params, 4),
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="4 ALDS initializations, LC on LeNet-5 only, 1,500 training digits"
    )
    parser.add_argument(
        "--out", default="runs/model_compressors", help="folder for cached reference models (outside the repository)"
    )
    args = parser.parse_args(argv)
    alds = alds_vs_svd(seeds=4 if args.quick else 15)
    models = [("lenet5_caffe", (1, 28, 28))] + ([] if args.quick else [("resnet20", (3, 32, 32))])
    lc = {name: lc_c_steps(name, shape) for name, shape in models}
    udfc = udfc_vs_plain(Path(args.out), quick=args.quick)
    bwcp = bwcp_tradeoff(BWCP_SETTINGS[-1:] if args.quick else BWCP_SETTINGS, args.quick)

    print(f"ALDS on ResNet-20's {alds['layers']} 3x3 convs ({alds['dense_params']:,} params), target 50% removed")
    print(f"{'method':<13}{'time s':>9}{'removed':>9}{'max err':>9}{'max true':>10}{'err / svd':>11}")
    for key in ("uniform_svd", "alds", "alds_plus"):
        r = alds[key]
        ratio = r["max_error"] / alds["uniform_svd"]["max_error"]
        print(
            f"{key:<13}{r['time_s']:>9.3f}{r['removed']:>9.3f}{r['max_error']:>9.4f}{r['max_true_error']:>10.4f}"
            f"{ratio:>11.3f}"
        )
    print(f"(tabulating the errors: {alds['tabulate_s']:.3f} s; alds_plus includes tabulating 4 schemes and")
    print(f" measures each layer's error in its own folding; schemes chosen: {alds['alds_plus']['schemes']})")
    print("\nLC C step over every weight tensor, seconds")
    forms = [k for k in next(iter(lc.values())) if k.endswith("_s")]
    print(f"{'model':<14}{'params':>10}" + "".join(f"{f[:-2]:>22}" for f in forms))
    for name, r in lc.items():
        print(f"{name:<14}{r['params']:>10,}" + "".join(f"{r[f]:>22.4f}" for f in forms))
    if args.quick:
        print("\n(--quick: UDFC and BWCP train on 1,500 digits only; a smoke test, not their numbers)")
    print(
        f"\nUDFC on ResNet-20 trained on the embedded digits (accuracy {udfc['reference_accuracy']:.3f}), data-free;"
        f" mean ± sd over {udfc['seeds']} seeds (class-stratified test halves, random channels' seed)"
    )
    print(f"{'prune':>6}{'bits':>6}{'bytes':>10}{'plain':>15}{'udfc':>15}{'random':>15}{'udfc s':>8}")
    for r in udfc["settings"]:
        cells = "".join(f"{r[k]:>8.3f} ±{r['sd'][k]:.3f}" for k in ("plain", "compensated", "random"))
        print(f"{r['prune']:>6.1f}{r['bits']:>6}{r['bytes']:>10,}{cells}{r['time_s']:>8.2f}")
    print("(udfc: the defaults, |γ| channels, ŝ ≥ 0, mean correction; random: random channels, same compensation)")
    epochs = 1 if args.quick else len(BWCP_EPOCH_LRS)
    print(
        f"\nBWCP on ResNet-20, {epochs} epoch(s) on the embedded digits (plain BatchNorm: {bwcp['baseline_accuracy']:.3f})"
    )
    print(
        f"{'lambda1':>9}{'lambda2':>9}{'sharp':>6}{'beta0':>6}{'A.6':>5}{'masked':>8}{'pruned':>8}{'acc change':>12}"
        f"{'channels':>10}{'FLOPs':>8}{'params':>8}"
    )
    for r in bwcp["settings"]:
        change = r["pruned_accuracy"] - bwcp["baseline_accuracy"]
        print(
            f"{r['lambda1']:>9.0e}{r['lambda2']:>9.0e}{r['sharpness']:>6.0f}{r['beta_init']:>6.1f}"
            f"{'yes' if r['share_residual'] else 'no':>5}"
            f"{r['masked_accuracy']:>8.3f}{r['pruned_accuracy']:>8.3f}"
            f"{change:>+12.3f}{r['channels_removed']:>10.3f}{r['flops_removed']:>8.3f}{r['params_removed']:>8.3f}"
        )
    print("(channels: of every BWCP layer, block-inner and residual streams; FLOPs and params: whole network)")
    udfc_means = [{k: r[k] for k in ("prune", "bits", "plain", "compensated", "random")} for r in udfc["settings"]]
    figures = {"alds": alds, "lc_c_step": lc, "udfc": udfc_means, "udfc_detail": udfc, "bwcp": bwcp}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
