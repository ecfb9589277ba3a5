"""Model compressors' building blocks and their accuracy on trained models.

Parts (``--only PART`` runs one):

- ``alds``: Algorithm 1 on ResNet-20's 3×3 convolutions at 50 % of their
  parameters removed, next to the uniform-rank SVD baseline at the same
  budget: time, achieved size and the worst layer's error (the tabulated
  measure and the true operator-norm error), and ALDS+ (the four folding
  schemes of supplement A.6). The network is freshly initialized: this
  part measures the allocator (time, budget, errors), not accuracy.
- ``lc``: one LC C step per model and form (adaptive 2-entry quantization,
  1 % pruning, Q+P additive combination, rank-8 low rank on the big
  matrices), timed over all the model's weight tensors.
- ``udfc``: ResNet-20 trained to convergence on the embedded digits (15
  epochs, once, cached under ``--out``), quantization only (6 and 4 bits),
  pruning only (10/30/50 % at 16 bits) and both (10/30/50 % with 6 and 4
  bits): UDFC's defaults next to plain pruning + quantization, the closed
  forms without the BN recalibration, random channels (same compensation)
  and Neuron Merging, mean ± sd over 3 seeds (class-stratified test halves;
  the compressor's seed). ``--task fashion``: the reference trains on the
  60,000 Fashion-MNIST images (same schedule), and the 6-bit rows run.
- ``alds_lenet``: LeNet-5-Caffe trained ten epochs (once, cached), 50/60/80 %
  removed: uniform SVD, Algorithm 1 with k = 1, ALDS equalizing the
  tabulated or the true error, one-shot and after one epoch of retraining,
  mean ± sd over 3 seeds (class-stratified test halves; the compressor's
  seed; the retraining's order).
- ``alds_resnet``: ALDS's ResNet-20 ablation (supplement Fig. 10) on the
  ``udfc`` part's trained reference (the same cached model, digits or
  ``--task fashion``): 30/50/70/90 % of the 3×3 convolutions' parameters
  removed, uniform SVD, k = 1, fixed k = 3 and ALDS, one-shot and after one
  epoch on 6,000 training images at the reference's last learning rate,
  mean ± sd over 3 seeds.
- ``lc_dc``: LC's central claim, LC against direct compression (one C step
  on the trained model), from ``alds_lenet``'s reference, the config's forms
  (2-bit convs, 1 bit + 1 % on the FC layers); 8 L steps of one epoch on
  6,000 images, or with ``--lc-epochs E`` of E epochs over the whole
  training set (the paper's L steps are 20 epochs each); 3 seeds.
- ``lc_qp``: LC's combination claim, Q+P against pruning alone at equal
  bytes and quantization alone at 1 and 2 bits, each by LC and by direct
  compression; 3 seeds.
- ``bwcp``: ResNet-20 trained three epochs (learning rate 0.1, 0.03, 0.01)
  with BWCP modules and the sparse regularizer — as the paper writes it,
  and with fedcomp's sigmoid-alike transformation and β start, at the
  paper's λ and at the stronger ones a short training needs — pruned:
  accuracy against plain BatchNorm trained the same way, and the fraction
  of FLOPs and parameters removed; network slimming at BWCP's FLOPs, both
  also after one fine-tuning epoch (slimming's own third step) (3 seeds, paired; the federated comparison is
  ``benchmarks/bwcp_federated.py``). ``--task fashion``: the first 10,000
  Fashion-MNIST training images, the 10,000 test images.

    python benchmarks/model_compressors.py [--quick] [--only PART] [--task fashion] [--lc-epochs E]
        [--bwcp-seeds N] [--bwcp-first-seed F] [--bwcp-merge LOG] [--out runs/model_compressors]

``--bwcp-merge LOG`` joins an earlier run's bwcp seeds (its printed output) to this run's: a run of seeds
0-2 split into ``--bwcp-seeds 1`` and ``--bwcp-first-seed 1 --bwcp-seeds 2 --bwcp-merge`` the first's log.

Prints a table, then a JSON object as its last line. ``--quick`` uses fewer
ALDS initializations, LeNet-5-Caffe only for LC, one seed and shorter
reference trainings (a smoke test).
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


LC_GROUPS = [
    {"layers": ["features.*"], "forms": [{"form": "quantize", "k": 4}]},
    {"layers": ["classifier.*"], "forms": [{"form": "quantize", "k": 2}, {"form": "prune", "keep": 0.01}]},
]
"""``fedcomp/configs/lc_lenet5.toml``'s forms: 2-bit convs, 1-bit + 1 % corrections on the FC layers (Q+P)."""


LC_L_STEP_DECAY = 0.94
"""Within an L step of several epochs, the learning rate's decay per epoch (the LC paper's ResNet-20 L steps,
C.1.2: 0.01 at the start of each step, ×0.94 after every epoch)."""


def _lc_once(
    arch: Architecture,
    state: OrderedDict,
    data,  # noqa: ANN001
    section: dict,
    steps: int,
    seed: int,
    epochs: int = 1,
) -> tuple:
    """LC from the trained ``state`` through the ``lc`` compressor: ``steps`` L steps of ``epochs`` epochs each
    (SGD momentum 0.9, lr 0.01 at each step's start, ×:data:`LC_L_STEP_DECAY` per epoch; the data order from
    ``seed``), each followed by its C step; the final Δ(Θ) and its payload."""
    from fedcomp.compressors.model.lc import LCCompressor, LCParams
    from fedcomp.params import params_from_dict

    lc = LCCompressor(params_from_dict(LCParams, section, "sc"), arch)
    w = OrderedDict((k, v.clone()) for k, v in state.items())
    model = arch.build()
    gen = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        received = lc.decode(lc.broadcast(step, w, ()).payload)
        model.load_state_dict(received.state)
        for epoch in range(epochs):  # one optimizer per epoch: its lr steps down, its momentum restarts
            cfg = ClientConfig(local_epochs=1, batch_size=64, lr=0.01 * LC_L_STEP_DECAY**epoch, momentum=0.9)
            train_local(model, data, cfg, gen, torch.device("cpu"), loss_term=received.loss_term)
        w = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
        snap = lc.end_of_round(step, w, (), last=step == steps)
    return snap.state, snap.payload


def _direct(arch: Architecture, state: OrderedDict, section: dict) -> tuple:
    """Direct compression: one C step on ``state``; the compressed model and its payload."""
    from fedcomp.compressors.model.lc import LCCompressor, LCParams
    from fedcomp.params import params_from_dict

    dc = LCCompressor(params_from_dict(LCParams, {**section, "direct_compression": True}, "sc"), arch)
    snap = dc.end_of_round(1, state, (), last=True)
    return snap.state, snap.payload


LC_SECTION = {"groups": LC_GROUPS, "mu0": 1e-2, "mu_growth": 1.6}
"""The ``[server_compression]`` of lc_dc and of lc_qp's Q+P row: the config's forms, μ from 0.01 ×1.6."""


def _lc_and_direct(
    arch: Architecture,
    state: OrderedDict,
    data,  # noqa: ANN001
    section: dict,
    steps: int,
    subsets: list,
    epochs: int = 1,
) -> dict:
    """``section`` by LC (:func:`_lc_once`, the data order from the seed) and by direct compression, per seed
    on that seed's test half: each one's accuracies and payload bytes."""
    out: dict = {"lc": [], "dc": [], "lc_bytes": 0, "dc_bytes": 0}
    for seed, test in enumerate(subsets):
        dc_state, dc_payload = _direct(arch, state, section)
        out["dc"].append(_accuracy(arch, (), dc_state, test))
        lc_state, lc_payload = _lc_once(arch, state, data, section, steps, seed, epochs)
        out["lc"].append(_accuracy(arch, (), lc_state, test))
        print(f"  seed {seed}: LC {out['lc'][-1]:.3f}, DC {out['dc'][-1]:.3f}", file=sys.stderr, flush=True)
        out["lc_bytes"], out["dc_bytes"] = len(lc_payload), len(dc_payload)
    return out


def lc_vs_direct_compression(
    out_dir: Path, quick: bool = False, seeds: int = 3, task: str = "digits", l_epochs: int = 1
) -> dict:
    """LC (augmented Lagrangian, 8 L steps of ``l_epochs`` epochs, μ from 0.01 ×1.6) against direct compression
    (one C step on the reference), both from the LeNet-5 reference of ``alds_lenet``, through the ``lc``
    compressor itself. L steps of one epoch train on :data:`FASHION_RETRAIN` images (Fashion-MNIST); longer
    ones, the paper's setting (many epochs per L step), on the whole training set.

    Per seed: the L steps' data order and a class-stratified test half; mean ± sd over the seeds."""
    steps = 2 if quick else 8
    with fixed_threads(UDFC_THREADS):
        arch, data, state, subsets = _lenet_setup(out_dir, quick, seeds, task, all_data=l_epochs > 1)
        got = _lc_and_direct(arch, state, data, LC_SECTION, steps, subsets, l_epochs)
        reference = _mean_sd([_accuracy(arch, (), state, test) for test in subsets])[0]
    (lc_m, lc_s), (dc_m, dc_s) = _mean_sd(got["lc"]), _mean_sd(got["dc"])
    return {
        "reference_accuracy": reference, "seeds": seeds, "l_steps": steps, "l_epochs": l_epochs,
        "l_images": len(data),
        "lc": {"accuracy": lc_m, "sd": lc_s, "bytes": got["lc_bytes"]},
        "direct_compression": {"accuracy": dc_m, "sd": dc_s, "bytes": got["dc_bytes"]},
    }  # fmt: skip


def _fc_forms(forms: list[dict]) -> list[dict]:
    """LC_GROUPS with the FC layers' forms replaced (the convs keep their 2-bit codebooks)."""
    return [LC_GROUPS[0], {"layers": ["classifier.*"], "forms": forms}]


def _keep_for_bytes(arch: Architecture, state: OrderedDict, target: int) -> float:
    """The FC layers' pruning ``keep`` whose direct-compression payload is nearest ``target`` bytes (bisection:
    the payload grows with ``keep``), rounded to 5 decimals."""
    low, high = 1e-4, 0.5
    size = lambda keep: len(_direct(arch, state, {"groups": _fc_forms([{"form": "prune", "keep": keep}])})[1])  # noqa: E731
    for _ in range(18):
        mid = (low + high) / 2
        low, high = (mid, high) if size(mid) < target else (low, mid)
    return round(min((low, high), key=lambda k: abs(size(k) - target)), 5)


def lc_forms_at_equal_storage(out_dir: Path, quick: bool = False, seeds: int = 3, task: str = "digits") -> dict:
    """The LC paper's combination claim (Q + P better than Q alone or P alone at equal storage; Part V, additive
    combinations): the FC layers of LeNet-5 compressed by 1-bit quantization plus 1 % corrections (the config's
    Q + P), by pruning alone at the ``keep`` whose payload matches Q + P's bytes, and by quantization alone at
    1 bit (k = 2, fewer bytes than Q + P) and 2 bits (k = 4, more); the convs at 2 bits in every row. Each
    through LC (the same L steps as ``lc_dc``) and by direct compression, from the same reference; per seed the
    L steps' data order and a test half."""
    steps = 2 if quick else 8
    with fixed_threads(UDFC_THREADS):
        arch, data, state, subsets = _lenet_setup(out_dir, quick, seeds, task)
        qp = LC_SECTION
        qp_bytes = len(_direct(arch, state, qp)[1])
        keep = _keep_for_bytes(arch, state, qp_bytes)
        variants = {
            "Q+P (1 bit + 1 %)": qp,
            f"P (keep {keep:.2%})": {**qp, "groups": _fc_forms([{"form": "prune", "keep": keep}])},
            "Q (1 bit)": {**qp, "groups": _fc_forms([{"form": "quantize", "k": 2}])},
            "Q (2 bits)": {**qp, "groups": _fc_forms([{"form": "quantize", "k": 4}])},
        }
        rows = {}
        for name, section in variants.items():
            got = _lc_and_direct(arch, state, data, section, steps, subsets)
            (lm, ls), (dm, ds) = _mean_sd(got["lc"]), _mean_sd(got["dc"])
            size = got["lc_bytes"]
            rows[name] = {"bytes": size, "lc": lm, "lc_sd": ls, "dc": dm, "dc_sd": ds, "lc_by_seed": got["lc"]}
            print(f"  {name}: {size:,} B, LC {lm:.3f} ± {ls:.3f}, DC {dm:.3f} ± {ds:.3f}", flush=True)
        reference = _mean_sd([_accuracy(arch, (), state, test) for test in subsets])[0]
    return {"reference_accuracy": reference, "seeds": seeds, "l_steps": steps, "keep": keep, "rows": rows}


def print_lc_qp(res: dict) -> None:
    print(f"\nLC's forms at equal storage on LeNet-5-Caffe's FC layers (reference {res['reference_accuracy']:.3f};")
    print(f" convs 2-bit in every row; LC: {res['l_steps']} L steps; mean ± sd over {res['seeds']} seed(s))")
    print(f"  {'forms (FC layers)':<22} {'bytes':>9}  {'LC':>13}  {'direct compression':>18}")
    for name, r in res["rows"].items():
        print(f"  {name:<22} {r['bytes']:>9,}  {r['lc']:.3f} ±{r['lc_sd']:.3f}  {r['dc']:>11.3f} ±{r['dc_sd']:.3f}")


def _train_data(split, quick: bool):  # noqa: ANN001, ANN202 - SplitData in, ImageData out
    """All 4,000 training digits, or the first 1,500 with --quick (one minute for the whole benchmark)."""
    return split.train.subset(np.arange(1500)) if quick else split.train


UDFC_EPOCH_LRS = (0.1,) * 5 + (0.03,) * 4 + (0.01,) * 3 + (0.003,) * 3
"""The UDFC reference, trained to convergence: 15 epochs, step-decayed (training loss ≈ 0.005, test accuracy flat)."""
UDFC_WEIGHT_DECAY = 5e-4
"""The usual CIFAR ResNet weight decay: the kind of trained model a data-free compressor is handed."""
UDFC_THREADS = 2
"""Training and evaluation threads: the float sums, and so the trained reference, depend on the thread count."""
UDFC_SETTINGS = tuple((0.0, b) for b in (6, 4)) + tuple((p, b) for b in (16, 6, 4) for p in (0.1, 0.3, 0.5))
"""(prune, bits): quantization only; pruning only (16 bits: no visible rounding); both."""
UDFC_VARIANTS = {
    "plain": {"compensation": "none", "recalibrate": False},
    "plain_recalibrated": {"compensation": "none"},
    "merging": {"compensation": "merging", "recalibrate": False},
    "merging_recalibrated": {"compensation": "merging"},
    "paper": {"recalibrate": False},
    "random": {"criterion": "random"},
    "compensated": {},
}
"""UDFC's defaults (closed forms + fedcomp's BN recalibration) against its baselines, all of them the compressor's
own options (``compensation``, ``recalibrate``): plain pruning + quantization and Neuron Merging, each without and
with the same recalibration; the paper's closed forms alone; random channels."""
UDFC_BASELINES = {"plain_recalibrated": "plain_recalibrated", "merging_recalibrated": "merging_recalibrated",
                  "paper": "paper"}  # fmt: skip


def _finite(state: OrderedDict) -> bool:
    """Every floating-point tensor of ``state`` finite: a reference that diverged is refused, trained or cached."""
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _train_reference(arch: Architecture, data, lrs, weight_decay: float, path: Path) -> OrderedDict:  # noqa: ANN001
    """Trained once (seed 0) and cached at ``path`` (under ``--out``, never in the repository)."""
    if path.exists():
        cached = OrderedDict(torch.load(path, weights_only=True))
        if not _finite(cached):
            raise SystemExit(f"the cached reference {path} has non-finite weights (a diverged training): delete it")
        return cached
    torch.manual_seed(0)
    model = arch.build()
    gen = torch.Generator().manual_seed(0)
    for lr in lrs:
        cfg = ClientConfig(local_epochs=1, batch_size=64, lr=lr, momentum=0.9, weight_decay=weight_decay)
        train_local(model, data, cfg, gen, torch.device("cpu"))
    state = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    if not _finite(state):
        raise SystemExit(f"the reference training diverged (non-finite weights at lrs {lrs}): not cached at {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


FASHION_UDFC_SETTINGS = ((0.1, 6), (0.3, 6), (0.5, 6))
"""On Fashion-MNIST (``--task fashion``: the reference trains on all 60,000 images, the same 15-epoch schedule,
about 14 minutes on 2 threads), the headline rows: 6 bits, 10/30/50 % pruned (quantization alone was lossless
on the digits). Every variant on 3 seeds' 5,000-image test halves is about 3 minutes a row."""


def _udfc_reference(arch: Architecture, data, out_dir: Path, quick: bool, task: str) -> OrderedDict:  # noqa: ANN001
    lrs = UDFC_EPOCH_LRS[:1] if quick else UDFC_EPOCH_LRS
    name = (
        f"udfc_reference_resnet20{'' if task == 'digits' else '_' + task}_{'quick' if quick else 'full'}"
        f"_{len(lrs)}ep_wd{UDFC_WEIGHT_DECAY:g}_t{UDFC_THREADS}"
    )
    return _train_reference(arch, data, lrs, UDFC_WEIGHT_DECAY, out_dir / f"{name}.pt")


class fixed_threads:  # noqa: N801 - used like a function
    """torch's intra-op threads set for a block, restored after it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


def _accuracy(arch: Architecture, structure: tuple, state: OrderedDict, test) -> float:  # noqa: ANN001
    model = arch.build(structure).eval()
    model.load_state_dict(state)
    return evaluate(model, test, torch.device("cpu"))[1]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return round(float(np.mean(values)), 4), round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else 0.0


def _udfc_row(arch: Architecture, state: OrderedDict, prune: float, bits: int, subsets: list) -> dict:
    """One (prune, bits) setting: every variant on every seed's test half; mean ± sd."""
    acc: dict[str, list[float]] = {k: [] for k in UDFC_VARIANTS}
    size, elapsed = 0, 0.0
    for seed, test in enumerate(subsets):
        for key, kw in UDFC_VARIANTS.items():
            # Nothing pruned: the channel criterion, the compensation of pruning and the recalibration (after
            # pruning) change nothing, so those variants are the compensated or the plain model.
            if prune == 0 and key not in ("plain", "compensated"):
                continue
            t0 = time.perf_counter()
            udfc = UDFCCompressor(UDFCParams(prune, bits=bits, **kw), arch, seed=seed)
            payload, got, structure, _ = udfc.compress(state, ())
            if key == "compensated":
                elapsed, size = time.perf_counter() - t0, len(payload)
            acc[key].append(_accuracy(arch, structure, got, test))
    for key in acc:
        acc[key] = acc[key] or acc["plain" if key.startswith("plain") else "compensated"]
    row: dict = {"prune": prune, "bits": bits}
    stats = {k: _mean_sd(v) for k, v in acc.items()}
    row.update({k: mean for k, (mean, _) in stats.items()})
    row["sd"] = {k: sd for k, (_, sd) in stats.items()}
    row["bytes"], row["time_s"] = size, round(elapsed, 3)
    return row


def _task_data(task: str, quick: bool, fashion_train: int | None = None) -> tuple:
    """(split, training data) of ``task``: the embedded digits (1,000 test digits; :func:`_train_data`), or
    Fashion-MNIST (its 10,000 test images; the first ``fashion_train`` training images, all if None, the
    first 1,500 with --quick)."""
    if task != "fashion":
        split = load_dataset("mnist5k", "", False, 1000, 0)
        return split, _train_data(split, quick)
    split = load_dataset("fashion_mnist", "", False, 10_000, 0)
    n = 1500 if quick else fashion_train
    return split, split.train if n is None else split.train.subset(np.arange(n))


def _resnet_setup(out_dir: Path, quick: bool, seeds: int, task: str) -> tuple:
    """The task's ResNet-20, its training data, its cached trained reference (UDFC's, also ALDS's ResNet-20
    ablation's) and the per-seed test halves."""
    split, data = _task_data(task, quick)
    arch = Architecture("resnet20", split.input_shape, split.num_classes)
    return arch, data, _udfc_reference(arch, data, out_dir, quick, task), _test_halves(split, seeds)


def udfc_vs_plain(out_dir: Path, quick: bool = False, seeds: int = 3, task: str = "digits") -> dict:
    """UDFC's defaults against plain pruning and Neuron Merging (with and without recalibration), the paper's
    closed forms alone and random channels, data-free.

    One reference model (trained once, cached); per seed, a class-stratified half of the test set and the
    compressor's seed (random channels, distilled inputs); mean ± sd over the seeds. ``task``: the embedded
    digits, or Fashion-MNIST (see :data:`FASHION_UDFC_SETTINGS`).
    """
    with fixed_threads(UDFC_THREADS):
        arch, _, state, subsets = _resnet_setup(out_dir, quick, seeds, task)
        reference = [_accuracy(arch, (), state, test) for test in subsets]
        settings = ((0.3, 6),) if quick else FASHION_UDFC_SETTINGS if task == "fashion" else UDFC_SETTINGS
        rows = []
        for prune, bits in settings:
            rows.append(_udfc_row(arch, state, prune, bits, subsets))
            print(f"  udfc: {prune:.0%} + {bits} bits done", file=sys.stderr, flush=True)
    return {"reference_accuracy": round(float(np.mean(reference)), 4), "seeds": seeds, "settings": rows}


LENET_EPOCH_LRS = (0.05,) * 4 + (0.01,) * 3 + (0.002,) * 3
"""The ALDS reference LeNet-5-Caffe: ten epochs, step-decayed."""
ALDS_TARGETS = (0.5, 0.6, 0.8)
ALDS_VARIANTS = {
    "uniform_svd": {"allocation": "uniform_svd"},
    "k1": {"allocation": "k1"},
    "fixed_k": {"allocation": "fixed_k", "k": 3},
    "alds_tabulated": {"error": "tabulated"},
    "alds_true": {"error": "true"},
}
"""Uniform-rank SVD; OptimalRanks with one subspace per layer (k = 1) or k = 3 everywhere (the compressor's
``allocation`` options, supplement Fig. 10); ALDS equalizing either error (``alds_true``: the default)."""


def _alds_model(  # noqa: ANN202
    arch: Architecture, state: OrderedDict, target: float, variant: str, inits: int, seed: int = 0
):
    """(state, structure) of ``variant`` at ``target`` removed, by the compressor with that variant's options.

    ``inits``: Algorithm 1's initializations; ``seed``: the compressor's seed (its random initializations)."""
    from fedcomp.compressors.model.alds import ALDSCompressor, ALDSParams

    comp = ALDSCompressor(ALDSParams(target=target, seeds=inits, **ALDS_VARIANTS[variant]), arch, seed=seed)
    return comp.compress(state, (), 1 - target)[:2]


def _test_halves(split, seeds: int) -> list:  # noqa: ANN001 - SplitData in, ImageData halves out
    """Per seed, a class-stratified half of the test set (what every central comparison evaluates on)."""
    from fedcomp.data.embedded import stratified_split

    labels = split.test.labels.numpy()
    return [split.test.subset(stratified_split(labels, len(labels) // 2, seed)[1]) for seed in range(seeds)]


FASHION_RETRAIN = 6000
"""On Fashion-MNIST (``--task fashion``): the reference trains on all 60,000 images, the L steps and the
retraining on the first 6,000 (one client's share in the federated runs), so that 3 seeds × every variant
fit in minutes."""


def _lenet_setup(out_dir: Path, quick: bool, seeds: int, task: str = "digits", all_data: bool = False) -> tuple:
    """The task's LeNet-5-Caffe, its training data (L steps, retraining), its cached trained reference and the
    per-seed test halves. ``task``: ``digits`` (the embedded 4,000 training digits) or ``fashion``
    (Fashion-MNIST, ``make datasets``; see :data:`FASHION_RETRAIN`; ``all_data``: all of them)."""
    split, full = _task_data(task, quick)
    arch = Architecture("lenet5_caffe", split.input_shape, split.num_classes)
    reference = _lenet_reference(arch, full, out_dir, quick, task)
    subset = task == "fashion" and not quick and not all_data
    data = split.train.subset(np.arange(FASHION_RETRAIN)) if subset else full
    return arch, data, reference, _test_halves(split, seeds)


FASHION_EPOCH_LRS = (0.02,) * 4 + (0.005,) * 3 + (0.001,) * 3
"""The Fashion-MNIST reference: the digits' schedule at 0.05 diverged to NaN within its first four epochs over
60,000 images (momentum 0.9); one epoch at 0.02 reached 0.875 and stayed finite."""


def _lenet_reference(arch: Architecture, data, out_dir: Path, quick: bool, task: str = "digits") -> OrderedDict:  # noqa: ANN001
    # --quick: one epoch at 0.01 (at the full schedule's 0.05, one epoch over 1,500 digits diverged to NaN).
    lrs = (0.01,) if quick else FASHION_EPOCH_LRS if task == "fashion" else LENET_EPOCH_LRS
    prefix = "alds_reference_lenet5" + ("" if task == "digits" else f"_{task}")
    path = out_dir / f"{prefix}_{'quick' if quick else 'full'}_{len(lrs)}ep_t{UDFC_THREADS}.pt"
    return _train_reference(arch, data, lrs, 0.0, path)


def alds_on_lenet(out_dir: Path, quick: bool = False, inits: int = 15, seeds: int = 3, task: str = "digits") -> dict:
    """ALDS one-shot and after one epoch of retraining on a trained LeNet-5-Caffe, against its baselines.

    One reference model (trained once, cached); per seed, a class-stratified half of the test set, the
    compressor's seed (Algorithm 1's random initializations) and the retraining's order; mean ± sd over the seeds.
    """
    with fixed_threads(UDFC_THREADS):
        arch, data, state, subsets = _lenet_setup(out_dir, quick, seeds, task)
        rows = _alds_rows(arch, state, data, subsets, ALDS_TARGETS[:1] if quick else ALDS_TARGETS, inits, 0.01)
        model = arch.build()
        model.load_state_dict(state)
        reference = _mean_sd([evaluate(model, test, torch.device("cpu"))[1] for test in subsets])[0]
    return {"reference_accuracy": reference, "seeds": seeds, "settings": rows}


def _alds_rows(arch: Architecture, state: OrderedDict, data, subsets: list, targets, inits: int, lr: float) -> list:  # noqa: ANN001
    """Every ALDS variant at every target: one-shot, and after one epoch of ``data`` at ``lr``; mean ± sd."""
    rows = []
    for target in targets:
        row: dict = {"target": target}
        for variant in ALDS_VARIANTS:
            one_shot, retrained = [], []
            for seed, test in enumerate(subsets):
                got, structure = _alds_model(arch, state, target, variant, inits, seed)
                model = arch.build(structure)
                model.load_state_dict(got)
                one_shot.append(evaluate(model, test, torch.device("cpu"))[1])
                torch.manual_seed(seed)
                cfg = ClientConfig(local_epochs=1, batch_size=64, lr=lr, momentum=0.9)
                train_local(model, data, cfg, torch.Generator().manual_seed(seed), torch.device("cpu"))
                retrained.append(evaluate(model, test, torch.device("cpu"))[1])
            (m1, s1), (m2, s2) = _mean_sd(one_shot), _mean_sd(retrained)
            row[variant] = {"one_shot": m1, "one_shot_sd": s1, "retrained": m2, "retrained_sd": s2}
        rows.append(row)
        print(f"  alds: {target:.0%} removed done", file=sys.stderr, flush=True)
    return rows


ALDS_RESNET_TARGETS = (0.3, 0.5, 0.7, 0.9)
"""CR-P, the share of the 3×3 convolutions' parameters removed, over the range of ALDS's ResNet-20 ablation
(supplement Fig. 10: ALDS against k = 1, a fixed k and uniform SVD)."""
ALDS_RESNET_RETRAIN = 6000
"""The retraining epoch's images (the first 6,000 of the reference's training data), at the reference's last
learning rate (0.003): one client's share, as for LeNet-5 on Fashion-MNIST."""


def alds_on_resnet(out_dir: Path, quick: bool = False, inits: int = 15, seeds: int = 3, task: str = "digits") -> dict:
    """ALDS's ResNet-20 ablation on UDFC's trained reference (the same cached model): one-shot and after one
    epoch of retraining, against k = 1, fixed k = 3 and uniform SVD, over CR-P 30-90 %; mean ± sd over seeds."""
    with fixed_threads(UDFC_THREADS):
        arch, data, state, subsets = _resnet_setup(out_dir, quick, seeds, task)
        retrain = data.subset(np.arange(min(len(data), ALDS_RESNET_RETRAIN)))
        targets = ALDS_RESNET_TARGETS[1:2] if quick else ALDS_RESNET_TARGETS
        rows = _alds_rows(arch, state, retrain, subsets, targets, inits, UDFC_EPOCH_LRS[-1])
        reference = [_accuracy(arch, (), state, test) for test in subsets]
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


def _network_slimming(
    arch: Architecture,
    split,  # noqa: ANN001
    data,  # noqa: ANN001
    quick: bool,
    lambda1: float,
    flops_removed: float,
    seed: int = 0,
) -> dict:
    """BWCP's baseline (its Tables 1 and 3): plain BatchNorm trained as BWCP is, with λ₁Σ|γ| (BWCP's λ₁), pruned
    by |γ| at BWCP's FLOPs, by the ``bwcp`` compressor's ``variant = "network_slimming"``."""
    from fedcomp.compressors.model.bwcp import SlimmingRegularizer

    params = BWCPParams(lambda1, variant="network_slimming", flops_removed=min(max(flops_removed, 1e-3), 0.999))
    comp = BWCPCompressor(params, arch)
    torch.manual_seed(seed)
    model = arch.build()
    _train_epochs(model, data, torch.Generator().manual_seed(seed), quick,
                  SlimmingRegularizer(lambda1, [t.bn for t in comp.triples]))  # fmt: skip
    cpu = torch.device("cpu")
    before = evaluate(model, split.test, cpu)[1]
    state, structure, metrics = comp.prune(OrderedDict(model.state_dict()), ())
    pruned = arch.build(structure)
    pruned.load_state_dict(state)
    base_flops, base_params = flops_and_params(arch.build(), split.input_shape)
    flops, n_params = flops_and_params(pruned, split.input_shape)
    pruned_acc = evaluate(pruned, split.test, cpu)[1]
    return {
        "unpruned_accuracy": before,
        "pruned_accuracy": pruned_acc,
        "finetuned_accuracy": _finetuned(pruned, data, quick, split.test, seed),
        "channels_removed": metrics["bwcp_channel_fraction_removed"],
        "flops_removed": round(1 - flops / base_flops, 4),
        "params_removed": round(1 - n_params / base_params, 4),
    }


def _finetuned(pruned: torch.nn.Module, data, quick: bool, test, seed: int = 0) -> float:  # noqa: ANN001
    """Accuracy after one epoch on ``data`` at the schedule's last learning rate: network slimming's own third
    step (train sparse, prune, fine-tune); also measured on BWCP's pruned model, whose own protocol has none."""
    cfg = ClientConfig(local_epochs=1, batch_size=64, lr=BWCP_EPOCH_LRS[0 if quick else -1], momentum=0.9)
    train_local(pruned, data, cfg, torch.Generator().manual_seed(seed + 1), torch.device("cpu"))
    return evaluate(pruned, test, torch.device("cpu"))[1]


BWCP_SETTINGS = (  # (lambda1, lambda2, sharpness, beta_init, share_residual)
    (4e-5, 8e-5, 1.0, 0.0, True),  # the paper as written: its λ, no transformation, β from 0
    (4e-3, 8e-3, 1.0, 0.0, True),  # ... with λ strong enough for three epochs
    (4e-5, 8e-5, 10.0, 0.3, True),  # fedcomp's defaults
    (1e-3, 2e-3, 10.0, 0.3, True),
    (4e-3, 8e-3, 10.0, 0.3, True),
    (4e-3, 8e-3, 10.0, 0.3, False),  # untied layers only: no residual stream pruned
)


FASHION_BWCP_TRAIN = 10_000
"""On Fashion-MNIST (``--task fashion``) every BWCP part's training uses the first 10,000 images: three epochs of
BWCP's modules on all 60,000 would be about 20 minutes a setting on 2 cores; evaluation is on the 10,000 test images."""


def bwcp_tradeoff(
    settings,  # noqa: ANN001
    quick: bool = False,
    task: str = "digits",
    seeds: tuple[int, ...] = (0,),
    earlier: dict | None = None,
) -> dict:
    """ResNet-20 trained with BWCP modules and the sparse regularizer, pruned; against plain BatchNorm and network
    slimming at the same FLOPs. Per seed: the models' initialization and the data order, shared by BWCP, plain
    BatchNorm and slimming (paired); each setting's figures are means over the seeds, with ``sd`` and the
    per-seed rows in ``by_seed``, and ``paired`` the per-seed differences against slimming fine-tuned.

    ``earlier``: an earlier run's ``bwcp`` detail (same task and settings, other seeds), whose seeds join these
    (each seed's figures depend on that seed alone, so a run split in two is the run in one)."""
    split, data = _task_data(task, quick, FASHION_BWCP_TRAIN)
    arch = Architecture("resnet20", split.input_shape, split.num_classes)
    cpu = torch.device("cpu")
    old_seeds, old_base, old_rows = _earlier_bwcp(earlier, settings, seeds)
    base_acc = list(old_base)
    for seed in seeds:
        torch.manual_seed(seed)
        base = arch.build()
        _train_epochs(base, data, torch.Generator().manual_seed(seed), quick)
        base_acc.append(evaluate(base, split.test, cpu)[1])
    all_seeds = [*old_seeds, *seeds]
    out: dict = {"baseline_accuracy": _mean_sd(base_acc)[0], "baseline_by_seed": base_acc, "seeds": len(all_seeds),
                 "seed_list": all_seeds, "settings": []}  # fmt: skip
    for i, setting in enumerate(settings):
        rows = old_rows[i] + [_bwcp_once(arch, split, data, quick, setting, seed) for seed in seeds]
        print(f"  bwcp: λ₁ {setting[0]:g}, sharpness {setting[2]:g} done", file=sys.stderr, flush=True)
        out["settings"].append(_bwcp_mean(rows))
    return out


SETTING_KEYS = ("lambda1", "lambda2", "sharpness", "beta_init", "share_residual")


def _earlier_bwcp(earlier: dict | None, settings, seeds) -> tuple[list[int], list[float], list[list[dict]]]:  # noqa: ANN001
    """An earlier run's seeds, plain-BatchNorm accuracies and per-setting rows; a run from before seeds existed
    (one row per setting, no ``by_seed``) was seed 0. Refused if its settings differ or its seeds overlap."""
    if earlier is None:
        return [], [], [[] for _ in settings]
    old_seeds = earlier.get("seed_list", [0])
    base = earlier.get("baseline_by_seed", [earlier["baseline_accuracy"]])
    if overlap := set(old_seeds) & set(seeds):
        raise SystemExit(f"--bwcp-merge: seeds {sorted(overlap)} ran in the earlier run already")
    if [tuple(r[k] for k in SETTING_KEYS) for r in earlier["settings"]] != [tuple(s) for s in settings]:
        raise SystemExit("--bwcp-merge: the earlier run's BWCP settings are not these")
    return old_seeds, base, [r.get("by_seed", [r]) for r in earlier["settings"]]


def _bwcp_once(arch: Architecture, split, data, quick: bool, setting: tuple, seed: int) -> dict:  # noqa: ANN001
    """One setting of :data:`BWCP_SETTINGS`, one seed: BWCP trained, pruned and fine-tuned, and network slimming
    at the FLOPs it removed."""
    lambda1, lambda2, sharpness, beta_init, share = setting
    params = BWCPParams(lambda1, lambda2, sharpness=sharpness, beta_init=beta_init, share_residual=share)
    comp = BWCPCompressor(params, arch)
    torch.manual_seed(seed)
    model = arch.build(comp.bwcp_edits)
    model.load_state_dict(comp.to_bwcp(OrderedDict(arch.build().state_dict())))
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, BWCP):
            m.generator = gen
    t0 = time.perf_counter()
    _train_epochs(model, data, gen, quick, SparseRegularizer(lambda1, lambda2))
    train_s = time.perf_counter() - t0
    cpu = torch.device("cpu")
    masked_acc = evaluate(model, split.test, cpu)[1]
    state, structure, metrics = comp.prune(OrderedDict(model.state_dict()), comp.bwcp_edits)
    pruned = arch.build(structure)
    pruned.load_state_dict(state)
    base_flops, base_params = flops_and_params(arch.build(), split.input_shape)
    flops, n_params = flops_and_params(pruned, split.input_shape)
    pruned_acc = evaluate(pruned, split.test, cpu)[1]
    finetuned_acc = _finetuned(pruned, data, quick, split.test, seed)
    return {
        "network_slimming": _network_slimming(arch, split, data, quick, lambda1, 1 - flops / base_flops, seed),
        "lambda1": lambda1,
        "lambda2": lambda2,
        "sharpness": sharpness,
        "beta_init": beta_init,
        "share_residual": share,
        "train_s": round(train_s, 1),
        "masked_accuracy": masked_acc,
        "pruned_accuracy": pruned_acc,
        "finetuned_accuracy": finetuned_acc,
        "channels_removed": metrics["bwcp_channel_fraction_removed"],
        "flops_removed": round(1 - flops / base_flops, 4),
        "params_removed": round(1 - n_params / base_params, 4),
    }


def _bwcp_mean(rows: list[dict]) -> dict:
    """One setting over its seeds: each figure's mean (slimming's too), ``sd`` of the accuracies, ``paired``
    (mean, sd) of BWCP pruned / fine-tuned minus slimming fine-tuned per seed, and the seeds' rows."""

    def mean(key: str, of=lambda r: r) -> float:  # noqa: ANN001
        return _mean_sd([of(r)[key] for r in rows])[0]

    accuracies = ("masked_accuracy", "pruned_accuracy", "finetuned_accuracy")
    numbers = (*accuracies, "train_s", "channels_removed", "flops_removed", "params_removed")
    slim_keys = rows[0]["network_slimming"].keys()
    out = {k: rows[0][k] for k in SETTING_KEYS}
    out.update({k: mean(k) for k in numbers})
    out["network_slimming"] = {k: mean(k, lambda r: r["network_slimming"]) for k in slim_keys}
    out["sd"] = {k: _mean_sd([r[k] for r in rows])[1] for k in accuracies}
    out["sd"]["slimming_finetuned_accuracy"] = _mean_sd([r["network_slimming"]["finetuned_accuracy"] for r in rows])[1]
    out["paired"] = {
        f"{k}_minus_slimming_finetuned": _mean_sd(
            [r[k] - r["network_slimming"]["finetuned_accuracy"] for r in rows]
        )  # fmt: skip
        for k in ("pruned_accuracy", "finetuned_accuracy")
    }
    out["by_seed"] = rows
    return out


UDFC_COLUMNS = ("plain", "plain_recalibrated", "merging", "merging_recalibrated", "paper", "random", "compensated")


def print_udfc(udfc: dict, task: str = "digits") -> None:
    print(
        f"\nUDFC on ResNet-20 trained to convergence on {TASK_NAMES[task]} (accuracy {udfc['reference_accuracy']:.3f}),"
        f" data-free; mean ± sd over {udfc['seeds']} seed(s) (class-stratified test halves, compressor seed)"
    )
    print(f"{'prune':>6}{'bits':>6}{'bytes':>10}" + "".join(f"{c[:15]:>16}" for c in UDFC_COLUMNS) + f"{'udfc s':>8}")
    for r in udfc["settings"]:
        cells = "".join(f"{r[k]:>9.3f} ±{r['sd'][k]:.3f}" for k in UDFC_COLUMNS)
        print(f"{r['prune']:>6.1f}{r['bits']:>6}{r['bytes']:>10,}{cells}{r['time_s']:>8.2f}")
    print("(compensated: UDFC as fedcomp runs it, |γ| channels, signed ŝ, mean correction, BN statistics recalibrated")
    print(" on distilled inputs; paper: the closed forms alone, no recalibration; plain / merging: no compensation /")
    print(" Neuron Merging at the same channels, without and with the same recalibration; random: random channels,")
    print(" compensated and recalibrated; 16 bits: pruning only)")


TASK_NAMES = {"digits": "the embedded digits", "fashion": "Fashion-MNIST"}


def print_alds_lenet(res: dict, task: str = "digits", model: str = "LeNet-5-Caffe", lr: float = 0.01) -> None:
    print(f"\nALDS on {model} trained on {TASK_NAMES[task]} (accuracy {res['reference_accuracy']:.3f}):")
    print(f"one-shot / after one epoch of retraining (lr {lr:g}); mean ± sd over {res['seeds']} seed(s)")
    print(f"{'removed':>8}" + "".join(f"{v:>32}" for v in ALDS_VARIANTS))
    for r in res["settings"]:
        cells = "".join(
            f"{r[v]['one_shot']:>11.3f} ±{r[v]['one_shot_sd']:.3f} / {r[v]['retrained']:.3f} ±{r[v]['retrained_sd']:.3f}"
            for v in ALDS_VARIANTS
        )
        print(f"{r['target']:>8.1f}{cells}")
    print("(k1 / fixed_k: OptimalRanks with one / three subspaces per layer; uniform_svd: one rank fraction for every")
    print(" layer; alds_tabulated / alds_true: ALDS equalizing that error, alds_true the default)")


def print_lc(res: dict) -> None:
    print(f"\nLC against direct compression on LeNet-5-Caffe (reference {res['reference_accuracy']:.3f}; 2-bit convs,")
    epochs = res.get("l_epochs", 1)
    length = "one epoch" if epochs == 1 else f"{epochs} epochs"
    images = f" over {res['l_images']:,} images" if "l_images" in res else ""
    print(f" 1-bit + 1 % FC; LC: {res['l_steps']} L steps of {length}{images}); mean ± sd over {res['seeds']} seed(s)")
    for key in ("lc", "direct_compression"):
        r = res[key]
        print(f"  {key:<20}{r['accuracy']:>8.3f} ±{r['sd']:.3f}{r['bytes']:>10,} B")


def print_bwcp(bwcp: dict, epochs: int, task: str = "digits") -> None:
    on = TASK_NAMES[task] + ("'s first 10,000 images" if task == "fashion" else "")
    seeds = bwcp.get("seeds", 1)
    print(f"\nBWCP on ResNet-20, {epochs} epoch(s) on {on} (plain BatchNorm: {bwcp['baseline_accuracy']:.3f});"
          f" means over {seeds} seed(s)")  # fmt: skip
    print(
        f"{'lambda1':>9}{'lambda2':>9}{'sharp':>6}{'beta0':>6}{'A.6':>5}{'masked':>8}{'pruned':>8}{'acc change':>12}"
        f"{'channels':>10}{'FLOPs':>8}{'params':>8}{'slimming':>10}{'FLOPs':>8}{'tuned':>7}{'slim tuned':>11}"
        f"{'pruned - slim tuned':>21}"
    )
    for r in bwcp["settings"]:
        change = r["pruned_accuracy"] - bwcp["baseline_accuracy"]
        slim = r["network_slimming"]
        paired = r.get("paired", {}).get("pruned_accuracy_minus_slimming_finetuned")
        print(
            f"{r['lambda1']:>9.0e}{r['lambda2']:>9.0e}{r['sharpness']:>6.0f}{r['beta_init']:>6.1f}"
            f"{'yes' if r['share_residual'] else 'no':>5}"
            f"{r['masked_accuracy']:>8.3f}{r['pruned_accuracy']:>8.3f}"
            f"{change:>+12.3f}{r['channels_removed']:>10.3f}{r['flops_removed']:>8.3f}{r['params_removed']:>8.3f}"
            f"{slim['pruned_accuracy']:>10.3f}{slim['flops_removed']:>8.3f}"
            f"{r['finetuned_accuracy']:>7.3f}{slim['finetuned_accuracy']:>11.3f}"
            + (f"{paired[0]:>+14.3f} ±{paired[1]:.3f}" if paired else "")
        )
    print("(channels: of every BWCP layer, block-inner and residual streams; FLOPs and params: whole network;")
    print(" slimming: network slimming, plain BatchNorm trained the same way with λ₁Σ|γ| (BWCP's λ₁), pruned by |γ|")
    print(" at BWCP's FLOPs; tuned / slim tuned: each pruned model after one epoch at the schedule's last lr,")
    print(" network slimming's own fine-tuning step, given to both; pruned - slim tuned: per seed, mean ± sd)")


PARTS = ("alds", "lc", "udfc", "alds_lenet", "alds_resnet", "bwcp", "lc_dc", "lc_qp")


def run_part(part: str, args: argparse.Namespace) -> dict:
    """One part of the benchmark, as ``main`` runs it."""
    out, quick = Path(args.out), args.quick
    if part == "alds":
        return alds_vs_svd(seeds=4 if quick else 15)
    if part == "lc":
        models = [("lenet5_caffe", (1, 28, 28))] + ([] if quick else [("resnet20", (3, 32, 32))])
        return {name: lc_c_steps(name, shape) for name, shape in models}
    if part == "lc_dc":
        return lc_vs_direct_compression(
            out, quick=quick, seeds=1 if quick else 3, task=args.task, l_epochs=args.lc_epochs
        )
    if part == "lc_qp":
        return lc_forms_at_equal_storage(out, quick=quick, seeds=1 if quick else 3, task=args.task)
    if part == "udfc":
        return udfc_vs_plain(out, quick=quick, seeds=1 if quick else 3, task=args.task)
    if part == "alds_lenet":
        return alds_on_lenet(out, quick=quick, inits=4 if quick else 15, seeds=1 if quick else 3, task=args.task)
    if part == "alds_resnet":
        return alds_on_resnet(out, quick=quick, inits=4 if quick else 15, seeds=1 if quick else 3, task=args.task)
    seeds = (0,) if quick else tuple(range(args.bwcp_first_seed, args.bwcp_first_seed + args.bwcp_seeds))
    earlier = None
    if args.bwcp_merge:  # an earlier run's JSON line (its other seeds), as this benchmark printed it
        saved = json.loads([ln for ln in Path(args.bwcp_merge).read_text().splitlines() if ln.startswith("{")][-1])
        if saved.get("task", "digits") != args.task:
            raise SystemExit(f"--bwcp-merge: {args.bwcp_merge} ran --task {saved.get('task')}, not {args.task}")
        earlier = saved["detail"]["bwcp"]
    return bwcp_tradeoff(BWCP_SETTINGS[-1:] if quick else BWCP_SETTINGS, quick, args.task, seeds, earlier)


METHOD_OF_PART = {"lc_dc": "lc", "alds_lenet": "alds", "alds_resnet": "alds_resnet20", "udfc": "udfc", "bwcp": "bwcp"}


def method_vs_baselines(part: str, res: dict) -> dict:
    """Per method, its accuracy and its baselines' (issue 39's names), one entry per setting the part ran.

    ``settings`` names each setting; ``accuracy`` is the method's and each of ``baselines`` a list aligned
    with it (one-shot accuracy for ALDS; BWCP's pruned model against network slimming's after its fine-tuning)."""
    if part == "lc_dc":
        return {"settings": [{"l_steps": res["l_steps"], "l_epochs": res["l_epochs"]}], "accuracy": [res["lc"]["accuracy"]],
                "baselines": {"direct_compression": [res["direct_compression"]["accuracy"]]}}  # fmt: skip
    if part in ("alds_lenet", "alds_resnet"):
        rows = res["settings"]
        return {
            "settings": [{"target": r["target"]} for r in rows],
            "accuracy": [r["alds_true"]["one_shot"] for r in rows],
            "baselines": {b: [r[b]["one_shot"] for r in rows] for b in ("k1", "fixed_k", "uniform_svd")},
        }
    if part == "udfc":
        rows = res["settings"]
        return {
            "settings": [{"prune": r["prune"], "bits": r["bits"]} for r in rows],
            "accuracy": [r["compensated"] for r in rows],
            "baselines": {b: [r[col] for r in rows] for b, col in UDFC_BASELINES.items()},
        }
    rows = res["settings"]
    return {
        "settings": [
            {k: r[k] for k in ("lambda1", "lambda2", "sharpness", "beta_init", "share_residual")} for r in rows
        ],
        # each method by its own protocol: BWCP's masks are trained in (pruned as trained), network slimming
        # fine-tunes after pruning; both other figures are in the detail
        "accuracy": [r["pruned_accuracy"] for r in rows],
        "baselines": {"network_slimming": [r["network_slimming"]["finetuned_accuracy"] for r in rows]},
    }


def print_part(part: str, res: dict, args: argparse.Namespace) -> None:
    if part == "alds":
        print(f"ALDS on ResNet-20's {res['layers']} 3x3 convs ({res['dense_params']:,} params), target 50% removed")
        print(f"{'method':<13}{'time s':>9}{'removed':>9}{'max err':>9}{'max true':>10}{'err / svd':>11}")
        for key in ("uniform_svd", "alds", "alds_plus"):
            r = res[key]
            ratio = r["max_error"] / res["uniform_svd"]["max_error"]
            print(
                f"{key:<13}{r['time_s']:>9.3f}{r['removed']:>9.3f}{r['max_error']:>9.4f}{r['max_true_error']:>10.4f}"
                f"{ratio:>11.3f}"
            )
        print(f"(tabulating the errors: {res['tabulate_s']:.3f} s; alds_plus includes tabulating 4 schemes and")
        print(f" measures each layer's error in its own folding; schemes chosen: {res['alds_plus']['schemes']})")
    elif part == "lc":
        print("\nLC C step over every weight tensor, seconds")
        forms = [k for k in next(iter(res.values())) if k.endswith("_s")]
        print(f"{'model':<14}{'params':>10}" + "".join(f"{f[:-2]:>22}" for f in forms))
        for name, r in res.items():
            print(f"{name:<14}{r['params']:>10,}" + "".join(f"{r[f]:>22.4f}" for f in forms))
    elif part == "lc_dc":
        print_lc(res)
    elif part == "lc_qp":
        print_lc_qp(res)
    elif part == "udfc":
        print_udfc(res, args.task)
    elif part == "alds_lenet":
        print_alds_lenet(res, args.task)
    elif part == "alds_resnet":
        print_alds_lenet(res, args.task, "ResNet-20", UDFC_EPOCH_LRS[-1])
    else:
        print_bwcp(res, 1 if args.quick else len(BWCP_EPOCH_LRS), args.task)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="4 ALDS initializations, LC on LeNet-5 only, 1,500 training digits"
    )
    parser.add_argument(
        "--out", default="runs/model_compressors", help="folder for cached reference models (outside the repository)"
    )
    parser.add_argument("--only", choices=PARTS, help="run one part only (its JSON is the last line)")
    parser.add_argument(
        "--task", choices=("digits", "fashion"), default="digits",
        help="the trained parts' data (alds_lenet, alds_resnet, lc_dc, lc_qp, udfc, bwcp): the embedded digits, or Fashion-MNIST "
        "(make datasets)",
    )  # fmt: skip
    parser.add_argument(
        "--lc-epochs", type=int, default=1, metavar="E",
        help="lc_dc: epochs per L step (default 1, on 6,000 Fashion-MNIST images; E > 1: on all of the training "
        "set, the learning rate ×0.94 an epoch, as the LC paper's L steps)",
    )  # fmt: skip
    parser.add_argument("--bwcp-seeds", type=int, default=3, metavar="N", help="bwcp: seeds (default 3)")
    parser.add_argument("--bwcp-first-seed", type=int, default=0, metavar="F", help="bwcp: the first seed (default 0)")
    parser.add_argument(
        "--bwcp-merge", metavar="LOG",
        help="bwcp: an earlier run's output (other seeds of the same task and settings) to join with these seeds",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.bwcp_seeds < 1:
        parser.error(f"--bwcp-seeds must be at least 1, got {args.bwcp_seeds}")
    if args.lc_epochs < 1:
        parser.error(f"--lc-epochs must be at least 1, got {args.lc_epochs}")
    if args.task != "digits" and args.only not in ("alds_lenet", "alds_resnet", "lc_dc", "lc_qp", "udfc", "bwcp"):
        parser.error(
            "--task fashion is for the trained parts: add --only alds_lenet, alds_resnet, lc_dc, lc_qp, udfc or bwcp"
        )
    parts = [args.only] if args.only else list(PARTS)
    detail = {}
    for part in parts:
        detail[part] = run_part(part, args)
        print_part(part, detail[part], args)
    if args.quick:
        print("\n(--quick: one seed, short trainings on 1,500 images; a smoke test, not the methods' numbers)")
    figures = {METHOD_OF_PART[p]: method_vs_baselines(p, detail[p]) for p in parts if p in METHOD_OF_PART}
    figures["detail"] = detail
    figures["task"] = args.task
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
