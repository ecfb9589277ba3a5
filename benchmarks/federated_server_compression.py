"""Long federated runs of each global-model compressor against the same federation uncompressed.

Each case is a shipped config (``fedcomp/configs``) on the embedded digits,
run for ``--lenet-rounds`` or ``--resnet-rounds`` with its schedule scaled to that length, and the same
federation with ``server_compression = identity`` measured in the same run
(once per model family and seed; the benchmark checks that the family's
cases share every setting but the compressor):

- LeNet-5 (``lc_lenet5``, ``alds_lenet5``): the configs' own federation, 10
  clients, IID, half of them sampled per round; 30 rounds by default.
- ResNet-20 (``udfc_resnet20``, ``bwcp_resnet20``, ``alds_resnet20``,
  ``lc_resnet20``): 5 clients, Dirichlet α = 0.5, every client every round;
  20 rounds by default. UDFC broadcasts the compressed model from the middle
  round on (``final_only = false``: clients train the pruned, quantized
  model); BWCP prunes at the middle round with λ ×250 the paper's (what
  ``benchmarks/bwcp_federated.py`` found to prune 60 % of the FLOPs in so
  few rounds).

Each method also runs beside its paper's baselines, every one an option of the same compressor, in the same
federation, seeds and schedule (``BASELINES``; rows ``case/name``): LC against direct compression
(``direct_compression = true``: dense training, one C step on each round's model); ALDS against ``k1``,
``fixed_k`` (k = 3) and ``uniform_svd`` (``allocation``); UDFC against plain pruning and Neuron Merging with the
same BN recalibration (``compensation = "none"`` / ``"merging"``) and the paper's closed forms without it
(``recalibrate = false``); BWCP against network slimming (``variant = "network_slimming"``) at the FLOPs the
same seed's BWCP run removed; ALDS also against ``small_dense``, the same architecture narrowed (``width``) to
the parameter count nearest the same seed's ALDS model and trained dense from round 1. ``--no-baselines`` skips
them.

``--task fashion``: Fashion-MNIST (``make datasets``) instead of the digits, every case, with 20 local steps a
round (of the configs' batches: 32 images for LeNet-5, 64 for ResNet-20) and the clients in-process one after
the other (ResNet-20's with 2 torch threads), so methods that saturate on the digits can be told apart.

Per case: the final accuracy of the model the compressor ships and the
mean over the last ``--tail`` rounds (a federation on non-IID data swings
from round to round, the uncompressed one too), each against the same
seed's uncompressed federation, the downlink bytes of all rounds and the
final model's bytes as ratios to the uncompressed run's, and the downlink
bytes per client of every round's broadcast (a statistics round's bytes are
in the totals). Mean ± sd
over ``--seeds`` experiment seeds; torch threads fixed per client by
``simulation.num_cpus``.

    python benchmarks/federated_server_compression.py [--quick] [--cases lc_lenet5,...] [--seeds 3]
        [--lenet-rounds 30] [--resnet-rounds 20] [--tail 5] [--out DIR]
    python benchmarks/federated_server_compression.py --from-json LOG   # the table again from a run's output

Prints a table, then a JSON object as its last line; its ``methods`` holds, per method (lc, alds, udfc,
bwcp), the method's row and a ``baselines`` object with each baseline's. ``--quick``: one seed, one case per
method (``lc_lenet5``, ``alds_lenet5``, ``udfc_resnet20``, ``bwcp_resnet20``) with all its baselines, 3 rounds
(LeNet-5) or 4 (ResNet-20, 2 of 20 clients a round): a smoke test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import fedcomp
from fedcomp.config import ExperimentConfig, load_config
from fedcomp.models import matching_width

CONFIGS = Path(fedcomp.__file__).resolve().parent / "configs"
RESNET_FEDERATION = [
    "federation.num_clients=5",
    "federation.fraction_train=1.0",
    "federation.min_train_clients=5",
    "simulation.num_cpus=1.0",
]


def _half(rounds: int) -> int:
    return max(1, rounds // 2)


def _lc_schedule(
    filename: str, start: int, rounds: int, mu0: float | None = None, mu_end: float | None = None
) -> list[str]:
    """LC from ``start`` with one L step a round, μ growing geometrically from ``mu0`` to ``mu_end`` at the last round
    (by default the config's μ₀ and the μ its own schedule ends at).

    μ is what pulls w onto Δ(Θ): cut the config's steps short at its growth and μ stays far too small (ResNet-20's
    config, 30 steps of ×1.25 to μ ≈ 0.81, cut to 12 steps ended at 0.015 and its Δ(Θ) at chance accuracy)."""
    cfg = load_config(CONFIGS / filename)
    p = cfg.server_compression.params  # the config's own values (the keys LC's parameters have)
    config_steps = (cfg.federation.rounds - p["start_round"] + 1) // p["rounds_per_step"]
    mu0 = p["mu0"] if mu0 is None else mu0
    mu_end = p["mu0"] * p["mu_growth"] ** config_steps if mu_end is None else mu_end
    steps = max(1, rounds - start + 1)
    return [
        f"server_compression.start_round={start}",
        "server_compression.rounds_per_step=1",
        f"server_compression.mu0={mu0:.6g}",
        f"server_compression.mu_growth={(mu_end / mu0) ** (1 / steps):.6g}",
    ]


# case → (family, config file, overrides given the run's rounds). Schedules scale with the rounds.
CASES: dict[str, tuple[str, str, Callable[[int], list[str]]]] = {
    "lc_lenet5": ("lenet5", "lc_lenet5.toml", lambda r: _lc_schedule("lc_lenet5.toml", min(6, r), r)),
    "alds_lenet5": ("lenet5", "alds_lenet5.toml", lambda r: [f"server_compression.compress_at=[{min(6, r)}]"]),
    "udfc_resnet20": (
        "resnet20",
        "udfc_resnet20.toml",
        lambda r: ["server_compression.final_only=false", f"server_compression.start_round={_half(r) + 1}"],
    ),
    "bwcp_resnet20": (
        "resnet20",
        "bwcp_resnet20.toml",
        lambda r: [
            f"server_compression.prune_at=[{_half(r)}]",
            "server_compression.lambda1=1e-2",
            "server_compression.lambda2=2e-2",
        ],
    ),
    "alds_resnet20": (
        "resnet20",
        "alds_resnet20.toml",
        lambda r: (
            [f"server_compression.compress_at=[{_half(r) - 2}, {_half(r)}, {_half(r) + 2}]"]
            if r >= 6
            else [f"server_compression.compress_at=[{_half(r)}]"]
        ),
    ),
    "lc_resnet20": (
        "resnet20",
        "lc_resnet20.toml",
        # μ from 0.05 to 20: the config's own end (0.81) left Δ(Θ) at 0.39 after 20 rounds (μ·lr·local steps
        # ≈ 0.6 in the last round); from 0.05 to 20 the distortion reached 0 and Δ(Θ) 0.951 (seed 1).
        lambda r: _lc_schedule("lc_resnet20.toml", _half(r) - 1 if r >= 4 else 1, r, mu0=0.05, mu_end=20.0),
    ),
}


QUICK_RESNET_FEDERATION = [
    "federation.num_clients=20",
    "federation.fraction_train=0.1",
    "federation.min_train_clients=2",
    "simulation.num_cpus=1.0",
]
"""--quick: two clients of 200 digits a round, so the ResNet-20 cases take seconds a round."""


def _method(case: str) -> str:
    return case.split("_")[0]


# Per method, its paper's baselines as options of the same compressor (issue 39's names): overrides on top of
# the case's own (the same schedule), given the method's own runs of that seed (network slimming matches the
# FLOPs BWCP removed).
BASELINES: dict[str, dict[str, Callable[[dict], list[str]]]] = {
    "lc": {"direct_compression": lambda run: ["server_compression.direct_compression=true"]},
    "alds": {
        "k1": lambda run: ['server_compression.allocation="k1"'],
        "fixed_k": lambda run: ['server_compression.allocation="fixed_k"', "server_compression.k=3"],
        "uniform_svd": lambda run: ['server_compression.allocation="uniform_svd"'],
        # The claim under every compressor that shrinks the model: better than training the small model. The
        # same architecture at the width whose parameter count is nearest the same seed's ALDS model, dense from
        # round 1 (both tasks are 28×28 grayscale, 10 classes).
        "small_dense": lambda run: [
            'server_compression={name="identity"}',
            f"model.params.width={matching_width(run['model'], run['final_model_params'], (1, 28, 28), 10)}",
        ],
    },
    "udfc": {
        "plain_recalibrated": lambda run: ['server_compression.compensation="none"'],
        "merging_recalibrated": lambda run: ['server_compression.compensation="merging"'],
        "paper": lambda run: ["server_compression.recalibrate=false"],
    },
    "bwcp": {
        "network_slimming": lambda run: [
            'server_compression.variant="network_slimming"',
            f"server_compression.flops_removed={min(max(run['flops_removed'], 0.001), 0.999):.4f}",
        ]
    },
}


# The tasks (``--task``): the embedded digits, where the configs' federation saturates near 0.96, or
# Fashion-MNIST (60,000 images, installed by ``make datasets``), where methods can be told apart, with the
# fair-comparison protocol's federation (simulations/fedavg_fashion.toml: 20 local steps of 32 images, clients
# in-process, one after the other) instead of one epoch over 6,000 images a client.
TASKS: dict[str, list[str]] = {
    "digits": ["data.dataset=mnist5k"],
    "fashion": [
        'data.dataset="fashion_mnist"',
        'data.data_dir=""',
        "client.local_steps=20",
        'simulation.backend="in-process"',
    ],
}
# ... and per task and family, on top of the family's federation: ResNet-20's clients run one after the other
# in-process, so each (and the server's evaluation of 10,000 test images) gets both cores' threads.
TASK_FAMILY: dict[tuple[str, str], list[str]] = {("fashion", "resnet20"): ["simulation.num_cpus=2.0"]}


def config_for(
    case: str, rounds: int, seed: int, out: Path, identity: bool = False, baseline: str = "", extra: list[str] = (),
    quick: bool = False, task: str = "digits",
) -> ExperimentConfig:  # fmt: skip
    family, filename, schedule = CASES[case]
    folder = family + "_identity" if identity else case + (f"_{baseline}" if baseline else "")
    resnet = QUICK_RESNET_FEDERATION if quick else RESNET_FEDERATION
    overrides = [
        *TASKS[task],
        f"federation.rounds={rounds}",
        "federation.evaluate_every=1",
        f"seed={seed}",
        f'output_dir="{out / folder / str(seed)}"',
        *(resnet if family == "resnet20" else []),
        *TASK_FAMILY.get((task, family), []),
        *(['server_compression={name="identity"}'] if identity else [*schedule(rounds), *extra]),
    ]
    return load_config(CONFIGS / filename, overrides)


def federation_of(cfg: ExperimentConfig, keep_model: bool = True) -> dict:
    """Every setting but the compressor, the name and the output folder: what a family's cases must share
    (and but the model, for the small dense model's baseline)."""
    d = cfg.to_dict()
    for key in ("server_compression", "name", "output_dir", *(() if keep_model else ("model",))):
        d.pop(key, None)
    return d


def run_once(cfg: ExperimentConfig) -> dict:
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, int(cfg.simulation.num_cpus)))  # the server's evaluation: as many as a client
    result = fedcomp.run(cfg, progress=False)
    rows = result.rows
    summary = json.loads((result.run_dir / "summary.json").read_text())
    return {
        "accuracy": rows[-1]["test_accuracy"],
        "accuracy_by_round": [r["test_accuracy"] for r in rows],
        "downlink_per_client_by_round": [r["downlink_bytes_per_client"] for r in rows],
        "downlink_bytes": sum(r["downlink_bytes"] for r in rows),
        "statistics_bytes": sum(r["statistics_downlink_bytes"] + r["statistics_uplink_bytes"] for r in rows),
        "uplink_bytes": sum(r["uplink_bytes"] for r in rows),
        "final_model_bytes": summary["final_model_bytes"],
        # The shipped model's parameters (ALDS's factors, not the dense layers they replace; BatchNorm's running
        # statistics are buffers, not parameters, as in the count matching_width compares with).
        "final_model_params": sum(
            v.numel()
            for k, v in torch.load(result.run_dir / "model.pt", weights_only=True).items()
            if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))
        ),  # fmt: skip
        "model": cfg.model.name,
        "failed_clients": sum(r["failed_clients"] for r in rows),
        "flops_removed": max((r["server_metrics"].get("bwcp_flops_removed", 0.0) for r in rows), default=0.0),
        "wall_s": time.perf_counter() - t0,
    }


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _runs_of_bytes(per_round: list[int]) -> str:
    """Per-round bytes as ranges of equal values: ``1-5: 1.72 MB, 6: 0.31 MB, 7-30: 0.10 MB``."""
    shown = [f"{b / 1e6:.3f} MB" for b in per_round]  # runs of what is shown (LC's Θ varies by a few bytes)
    parts, start = [], 0
    for i in range(1, len(shown) + 1):
        if i == len(shown) or shown[i] != shown[start]:
            span = f"{start + 1}" if i - 1 == start else f"{start + 1}-{i}"
            parts.append(f"{span}: {shown[start]}")
            start = i
    return ", ".join(parts)


def _run_case(
    case: str, seeds: list[int], rounds: dict[str, int], out: Path,
    baselines: dict[tuple[str, int], dict], results: dict[str, list[dict]], quick: bool = False,
    with_baselines: bool = True, task: str = "digits",
) -> None:  # fmt: skip
    """Run ``case`` for every seed (and its family's uncompressed federation once per seed), then, in the same
    federation and seed, each of its method's baselines (``BASELINES``, as ``case/name``); fill ``results``."""
    family = CASES[case][0]
    names = [case] + ([f"{case}/{b}" for b in BASELINES[_method(case)]] if with_baselines else [])
    for name in names:
        results[name] = []
    for seed in seeds:
        cfg = config_for(case, rounds[family], seed, out, quick=quick, task=task)
        if (family, seed) not in baselines:
            base_cfg = config_for(case, rounds[family], seed, out, identity=True, quick=quick, task=task)
            baselines[family, seed] = {"federation": federation_of(base_cfg), **run_once(base_cfg)}
        base = baselines[family, seed]
        own: dict = {}
        for name in names:
            baseline = name.partition("/")[2]
            if baseline:
                extra = BASELINES[_method(case)][baseline](own)
                cfg = config_for(
                    case, rounds[family], seed, out, baseline=baseline, extra=extra, quick=quick, task=task
                )
            keep_model = baseline != "small_dense"
            shared = {k: v for k, v in base["federation"].items() if keep_model or k != "model"}
            if federation_of(cfg, keep_model) != shared:
                raise SystemExit(f"{name}: its federation differs from the other {family} cases': no common baseline")
            run = run_once(cfg)
            own = own or run
            run["vs_uncompressed"] = run["accuracy"] - base["accuracy"]
            run["downlink_ratio"] = run["downlink_bytes"] / base["downlink_bytes"]
            run["uplink_ratio"] = run["uplink_bytes"] / base["uplink_bytes"]
            run["final_model_ratio"] = run["final_model_bytes"] / base["final_model_bytes"]
            results[name].append(run)
            print(f"{name} seed {seed}: {run['accuracy']:.3f} (uncompressed {base['accuracy']:.3f}), "
                  f"downlink x{run['downlink_ratio']:.3f}, {run['wall_s']:.0f} s", flush=True)  # fmt: skip


def _tail_mean(accuracy_by_round: list[float], tail: int) -> float:
    return statistics.fmean(accuracy_by_round[-tail:])


def summarize(
    seeds: list[int], rounds: dict[str, int], baselines: dict[tuple[str, int], dict], results: dict[str, list[dict]],
    tail: int,
) -> dict[str, dict]:  # fmt: skip
    """One row per family's uncompressed federation and per case: means (± sd) over the seeds.

    ``accuracy``: the last round's; ``tail_accuracy``: the mean of the last ``tail`` rounds' (a federation on
    non-IID data swings from round to round, the uncompressed one too); ``vs_*``: minus the same seed's
    uncompressed federation, then averaged."""
    table: dict[str, dict] = {}
    for family in dict.fromkeys(f for f, _ in baselines):
        base_runs = [baselines[family, s] for s in seeds]
        acc, sd = _mean_sd([b["accuracy"] for b in base_runs])
        tail_acc, tail_sd = _mean_sd([_tail_mean(b["accuracy_by_round"], tail) for b in base_runs])
        table[f"{family}_identity"] = {
            "rounds": rounds[family],
            "accuracy": acc,
            "sd": sd,
            "tail_accuracy": tail_acc,
            "tail_sd": tail_sd,
            "downlink_bytes": statistics.fmean(b["downlink_bytes"] for b in base_runs),
            "uplink_bytes": statistics.fmean(b["uplink_bytes"] for b in base_runs),
            "final_model_bytes": statistics.fmean(b["final_model_bytes"] for b in base_runs),
            "downlink_per_client": _runs_of_bytes(base_runs[0]["downlink_per_client_by_round"]),
        }
    for case, runs in results.items():
        family = CASES[case.partition("/")[0]][0]
        acc, sd = _mean_sd([r["accuracy"] for r in runs])
        tails = [_tail_mean(r["accuracy_by_round"], tail) for r in runs]
        base_tails = [_tail_mean(baselines[family, s]["accuracy_by_round"], tail) for s in seeds]
        tail_acc, tail_sd = _mean_sd(tails)
        table[case] = {
            "rounds": rounds[family],
            "accuracy": acc,
            "sd": sd,
            "vs_uncompressed": statistics.fmean(r["vs_uncompressed"] for r in runs),
            "tail_accuracy": tail_acc,
            "tail_sd": tail_sd,
            "tail_vs_uncompressed": statistics.fmean(t - b for t, b in zip(tails, base_tails, strict=True)),
            "downlink_ratio": statistics.fmean(r["downlink_ratio"] for r in runs),
            "uplink_ratio": statistics.fmean(r["uplink_ratio"] for r in runs),
            "final_model_ratio": statistics.fmean(r["final_model_ratio"] for r in runs),
            "statistics_bytes": statistics.fmean(r["statistics_bytes"] for r in runs),
            "failed_clients": sum(r["failed_clients"] for r in runs),
            "flops_removed": statistics.fmean(r.get("flops_removed", 0.0) for r in runs),
            "downlink_per_client": _runs_of_bytes(
                [
                    round(statistics.fmean(v))
                    for v in zip(*(r["downlink_per_client_by_round"] for r in runs), strict=True)
                ]
            ),
        }
    return table


def print_table(table: dict[str, dict], seeds: int, tail: int) -> None:
    print(f"\nGlobal-model compressors in long federations, {seeds} seed(s) (mean ± sd)")
    print(f"{'case':<18}{'rounds':>7}{'last round':>16}{'vs dense':>10}{f'last {tail} mean':>17}{'vs dense':>10}"
          f"{'downlink':>10}{'uplink':>8}{'final model':>13}")  # fmt: skip
    for name, row in table.items():
        vs, tail_vs = (
            f"{row[k]:>+10.3f}" if k in row else f"{'—':>10}" for k in ("vs_uncompressed", "tail_vs_uncompressed")
        )
        head = (f"{name:<18}{row['rounds']:>7}{row['accuracy']:>10.3f} ±{row['sd']:.3f}{vs}"
                f"{row['tail_accuracy']:>11.3f} ±{row['tail_sd']:.3f}{tail_vs}")  # fmt: skip
        if "vs_uncompressed" in row:
            print(f"{head}{row['downlink_ratio']:>10.3f}{row['uplink_ratio']:>8.3f}{row['final_model_ratio']:>13.4f}")
        else:
            print(f"{head}{1.0:>10.3f}{1.0:>8.3f}{1.0:>13.4f}   ({row['downlink_bytes'] / 1e6:.1f} MB down, "
                  f"{row['uplink_bytes'] / 1e6:.1f} MB up, {row['final_model_bytes']:.0f} B final)")  # fmt: skip
    print("(vs dense: accuracy minus the same seed's uncompressed federation; downlink: all rounds' broadcast")
    print(" bytes, statistics rounds included, over the uncompressed run's; uplink likewise; final model:")
    print(" final_model.bin's bytes over the uncompressed run's)")
    print("\nDownlink bytes per client, by round (mean over seeds):")
    for name, row in table.items():
        print(f"  {name}: {row['downlink_per_client']}")


def methods_vs_baselines(table: dict[str, dict]) -> dict[str, dict]:
    """Per method (its first case that ran with baselines): the method's row and a ``baselines`` object, each
    baseline's row of the same federation and seeds (issue 39's names), with its accuracy minus the method's."""
    out: dict[str, dict] = {}
    keys = ("accuracy", "sd", "tail_accuracy", "tail_sd", "downlink_ratio", "uplink_ratio", "final_model_ratio")
    for case, row in table.items():
        if case.endswith("_identity") or "/" in case or case not in CASES or _method(case) in out:
            continue
        # (the small dense model: ALDS's cases only, and not in runs saved before ResNet-20 had a width)
        names = [b for b in BASELINES[_method(case)] if b != "small_dense" or f"{case}/{b}" in table]
        if not all(f"{case}/{b}" in table for b in names):
            continue
        entry = {"case": case, **{k: row[k] for k in keys}, "baselines": {}}
        for b in names:
            other = table[f"{case}/{b}"]
            entry["baselines"][b] = {**{k: other[k] for k in keys},
                                     "method_minus_baseline": row["accuracy"] - other["accuracy"],
                                     "tail_method_minus_baseline": row["tail_accuracy"] - other["tail_accuracy"]}  # fmt: skip
        out[_method(case)] = entry
    return out


def print_methods(methods: dict[str, dict]) -> None:
    print("\nEach method beside its paper's baselines (same federation and seeds; accuracy of the shipped model):")
    print(f"{'method / baseline':<28}{'last round':>16}{'last-5 mean':>16}{'method − it':>13}"
          f"{'downlink':>10}{'final model':>13}")  # fmt: skip
    for method, e in methods.items():
        print(f"{method + ' (' + e['case'] + ')':<28}{e['accuracy']:>10.3f} ±{e['sd']:.3f}"
              f"{e['tail_accuracy']:>10.3f} ±{e['tail_sd']:.3f}{'':>13}{e['downlink_ratio']:>10.3f}"
              f"{e['final_model_ratio']:>13.4f}")  # fmt: skip
        for name, b in e["baselines"].items():
            print(f"{'  ' + name:<28}{b['accuracy']:>10.3f} ±{b['sd']:.3f}{b['tail_accuracy']:>10.3f} ±{b['tail_sd']:.3f}"
                  f"{b['method_minus_baseline']:>+13.3f}{b['downlink_ratio']:>10.3f}{b['final_model_ratio']:>13.4f}")  # fmt: skip
    print("(method − it: the method's last-round accuracy minus the baseline's; downlink and final model: ratios to")
    print(" the uncompressed federation's bytes)")


def _load(paths: list[str]) -> tuple[list[int], dict[str, int], dict[str, list[dict]], dict[tuple[str, int], dict]]:
    """Seeds, rounds, runs and baselines of earlier runs' JSON lines, merged (a later file's case wins)."""
    seeds, rounds, results, baselines = None, {}, {}, {}
    for path in paths:
        saved = json.loads(Path(path).read_text().strip().splitlines()[-1])
        if seeds is not None and saved["seeds"] != seeds:
            raise SystemExit(f"{path}: seeds {saved['seeds']}, the other files' {seeds}")
        seeds = saved["seeds"]
        for family, n in saved["rounds"].items():
            if rounds.setdefault(family, n) != n:
                raise SystemExit(f"{path}: {family} ran {n} rounds, another file's {rounds[family]}")
        results.update(saved["runs"])
        for key, run in saved.get("uncompressed", saved.get("baselines", {})).items():  # older files: "baselines"
            family, seed = key.split("/")
            old = baselines.setdefault((family, int(seed)), run)
            if old["accuracy_by_round"] != run["accuracy_by_round"]:  # the same federation must give the same run
                raise SystemExit(f"{path}: baseline {key} differs from another file's")
    return seeds, rounds, results, baselines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--lenet-rounds", type=int, default=30)
    parser.add_argument("--resnet-rounds", type=int, default=20)
    parser.add_argument("--out", default="runs/bench_federated_server_compression")
    parser.add_argument("--tail", type=int, default=5, help="also report the mean accuracy of the last TAIL rounds")
    parser.add_argument("--no-baselines", action="store_true", help="each case and the uncompressed federation only")
    parser.add_argument(
        "--task", choices=sorted(TASKS), default="digits",
        help="digits: the embedded digits, the configs' own federation; fashion: Fashion-MNIST (make datasets) "
        "with 20 local steps a round, clients in-process (ResNet-20's with 2 threads)",
    )  # fmt: skip
    parser.add_argument(
        "--from-json", nargs="+", help="print the table from these files' last lines (earlier runs' output; a case "
        "in a later file replaces an earlier file's, and the baselines they share must agree)"
    )  # fmt: skip
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; the cases are {', '.join(CASES)}")
    if args.quick:  # one case per method, every baseline, a few rounds of a light federation
        quick_cases = ("lc_lenet5", "alds_lenet5", "udfc_resnet20", "bwcp_resnet20")
        cases, seeds, rounds = [c for c in cases if c in quick_cases], [0], {"lenet5": 3, "resnet20": 4}
    else:
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        rounds = {"lenet5": args.lenet_rounds, "resnet20": args.resnet_rounds}
    torch.set_num_threads(1)
    out = Path(args.out)

    if args.from_json:  # the table again from finished runs' JSON lines: no federation runs
        seeds, rounds, results, baselines = _load(args.from_json)
    else:
        baselines, results = {}, {}
        with fedcomp.shared_engine():  # one engine start per client-resource setting, not one per run
            for case in cases:
                _run_case(case, seeds, rounds, out, baselines, results, args.quick, not args.no_baselines, args.task)
    table = summarize(seeds, rounds, baselines, results, min(args.tail, min(rounds.values())))
    print_table(table, len(seeds), args.tail)
    methods = methods_vs_baselines(table)
    print_methods(methods)
    figures = {"task": args.task, "seeds": seeds, "rounds": rounds, "tail": args.tail, "methods": methods, "table": table,
               "runs": results,
               "uncompressed": {f"{f}/{s}": {k: v for k, v in b.items() if k != "federation"}
                                for (f, s), b in baselines.items()}}  # fmt: skip
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
