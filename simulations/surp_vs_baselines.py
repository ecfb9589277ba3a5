"""SuRP against top-k, rTop-k and DGC at equal bytes, FedSGD, over seeds and partitions.

LeNet-5-Caffe on the embedded 5,000 MNIST digits, 10 clients all training
every round, one local SGD step per round (FedSGD, the setting of the
gradient-compression papers). Every compressed method but the reference
gets the same byte budget per update (``max_bytes``, the whole payload,
container included, never exceeded): SuRP (staged, the default), top-k,
rTop-k (r = 2k) with error feedback and DGC with momentum correction and
masking. Under the budget DGC's warm-up densities and dense biases do not
fit, so it compresses every tensor from round 1. ``rtopk-0.1%`` is rTop-k at
the papers' 99.9% sparsity with no budget: the reference SuRP must match
with a third of its bytes.

The quantizers and PowerSGD take no byte budget: QSGD (s = 1, buckets of
512), EF-signSGD and PowerSGD (rank 1, warm start, error feedback) run at
their own rate, and ``surp@<method>`` is SuRP under a budget of exactly
that method's payload on a LeNet-5 FedSGD gradient (the first round's, one
batch of 64 digits: PowerSGD's and signSGD's sizes do not depend on the
values, QSGD's varies a little from round to round; the table shows the
bytes each method really sent).

Each (partition, method) runs once per seed through ``fedcomp.run`` (the
real Flower simulation, real payloads); the table gives final test
accuracy mean ± sd over the seeds and the mean uplink bytes per client per
round, then a JSON last line with every run's figures.
``--markdown`` also prints the README's table; ``--from-runs`` rebuilds the
tables from run directories kept with ``--output-dir`` (for instance of
partitions run in two processes at once).

    python simulations/surp_vs_baselines.py [--rounds 100] [--seeds 0,1,2]
        [--partitions iid,dirichlet] [--budget 720] [--methods surp,topk,...]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
from pathlib import Path

import fedcomp

DENSITY_CAP = 0.01  # far above what the budget allows: the budget decides k
MATCHED_DENSITY_CAP = 0.25  # the same at the fixed-rate methods' larger budgets
FIXED_RATE = {
    "qsgd": {"name": "qsgd", "levels": 1},
    "ef_signsgd": {"name": "ef_signsgd"},
    "powersgd": {"name": "powersgd", "rank": 1},
}


def methods(budget: int) -> dict[str, dict]:
    budgeted = {"density": DENSITY_CAP, "max_bytes": budget}
    return {
        "identity": {"name": "identity"},
        "surp": {"name": "surp", **budgeted},
        "topk": {"name": "topk", **budgeted},
        "rtopk": {"name": "rtopk", "r_factor": 2.0, **budgeted},
        "dgc": {"name": "dgc", "momentum": 0.9, "warmup_rounds": 4, **budgeted},
        "rtopk-0.1%": {"name": "rtopk", "density": 0.001, "r_factor": 2.0},
        **FIXED_RATE,
        **{
            f"surp@{m}": {"name": "surp", "density": MATCHED_DENSITY_CAP, "max_bytes": n}
            for m, n in matched_bytes().items()
        },
    }


def first_gradient() -> dict:
    """The round-1 FedSGD gradient of the seed-0 LeNet-5 on one batch of 64 digits (what the budgets are set on)."""
    import torch

    from fedcomp.config import config_from_dict
    from fedcomp.data import load_experiment_data
    from fedcomp.models import initial_model

    cfg = config_from_dict(experiment({"name": "identity"}, "iid", 0, 1, "runs"))
    split = load_experiment_data(cfg)
    model = initial_model(cfg, split.input_shape, split.num_classes)
    images, labels = next(split.train.batches(64))
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


@functools.cache
def matched_bytes() -> dict[str, int]:
    """Each fixed-rate method's payload length on :func:`first_gradient`: the budget of its ``surp@`` twin."""
    from fedcomp.compressors.update import UPDATE_COMPRESSORS
    from fedcomp.compressors.update.base import EncodeContext

    grad = first_gradient()
    sizes = {}
    for method, uplink in FIXED_RATE.items():
        cls = UPDATE_COMPRESSORS.get(uplink["name"])
        params = cls.parse_params({k: v for k, v in uplink.items() if k != "name"}, "uplink")
        sizes[method] = len(cls(params, seed=0).encode(grad, None, EncodeContext(1, 0, 10)).payload)
    return sizes


def experiment(uplink: dict, partition: str, seed: int, rounds: int, output_dir: str, label: str = "") -> dict:
    tag = (label or uplink["name"]).replace(".", "_").replace("%", "pct")
    return {
        "name": f"fedsgd-{tag}-{partition}-{seed}",
        "seed": seed,
        "output_dir": output_dir,
        "data": {"dataset": "mnist5k", "partition": partition, "alpha": 0.5},
        "model": {"name": "lenet5_caffe"},
        "federation": {"num_clients": 10, "rounds": rounds, "fraction_train": 1.0, "evaluate_every": 10},
        "client": {"local_steps": 1, "batch_size": 64, "optimizer": "sgd", "lr": 0.1, "momentum": 0.0},
        "uplink": uplink,
    }


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_figures(seed: int, rows: list[dict]) -> dict:
    """One run's figures from its recorded rows."""
    per_client = [b for r in rows for b in r["uplink_bytes_per_client"]]
    accs = [r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None]
    return {
        "seed": seed,
        "final_accuracy": accs[-1] if accs else None,
        "uplink_bytes_per_client_round": statistics.mean(per_client),
        "max_uplink_bytes": max(per_client),
        "uplink_bytes_total": sum(r["uplink_bytes"] for r in rows),
    }


def from_run_dirs(folders: list[str], table: dict[str, dict], rounds: int) -> dict[str, dict[str, list[dict]]]:
    """(partition → method → runs) from complete run directories: each run's method is the entry of ``table``
    whose every key its ``[uplink]`` section has, with the same value."""
    from fedcomp.reports.runs import ReportError, load_run

    found: dict[str, dict[str, list[dict]]] = {}
    for folder in folders:
        for run_dir in sorted(Path(folder).iterdir()):
            try:
                run = load_run(run_dir)
            except ReportError:  # not a run directory
                continue
            if run.status != "complete" or run.planned_rounds != rounds:
                continue
            uplink = run.config.get("uplink", {})
            method = next((m for m, u in table.items() if all(uplink.get(k) == v for k, v in u.items())), None)
            runs = found.setdefault(run.get("data.partition"), {}).setdefault(method, []) if method else None
            if runs is not None and all(r["seed"] != run.seed for r in runs):  # a seed run twice counts once
                runs.append(run_figures(run.seed, run.rows))
    return found


def summarize(runs: list[dict]) -> dict:
    acc_mean, acc_sd = mean_sd([r["final_accuracy"] for r in runs])
    return {
        "accuracy_mean": acc_mean,
        "accuracy_sd": acc_sd,
        "seeds": [r["seed"] for r in runs],
        "uplink_bytes_per_client_round": statistics.mean(r["uplink_bytes_per_client_round"] for r in runs),
        "max_uplink_bytes": max(r["max_uplink_bytes"] for r in runs),
        "runs": runs,
    }


def markdown(results: dict, seeds: list[int], rounds: int) -> str:
    lines = [
        f"| partition | method | test accuracy (mean ± sd, {len(seeds)} seeds) | uplink B per client per round |",
        "|---|---|---|---|",
    ]
    for partition, by_method in results.items():
        for method, s in by_method.items():
            lines.append(
                f"| {partition} | {method} | {s['accuracy_mean']:.3f} ± {s['accuracy_sd']:.3f} "
                f"| {s['uplink_bytes_per_client_round']:,.0f} |"
            )
    return "\n".join(lines) + f"\n\n({rounds} rounds, seeds {', '.join(map(str, seeds))})"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--partitions", default="iid,dirichlet")
    parser.add_argument("--budget", type=int, default=720, help="bytes per update for the budgeted methods")
    parser.add_argument("--methods", default="identity,surp,topk,rtopk,dgc,rtopk-0.1%," + ",".join(
        m for f in FIXED_RATE for m in (f, f"surp@{f}")))  # fmt: skip
    parser.add_argument("--output-dir", help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--markdown", action="store_true", help="also print the README table")
    parser.add_argument(
        "--from-runs", metavar="DIR[,DIR]", help="summarize the complete runs in these folders instead of running"
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    table = methods(args.budget)
    chosen = args.methods.split(",")
    unknown = [m for m in chosen if m not in table]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {sorted(table)}")
    results: dict[str, dict] = {}
    if args.from_runs:
        found = from_run_dirs(args.from_runs.split(","), {m: table[m] for m in chosen}, args.rounds)
        for partition in args.partitions.split(","):
            by_method = found.get(partition, {})
            results[partition] = {m: summarize(by_method[m]) for m in chosen if m in by_method}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = args.output_dir or tmp
            for partition in args.partitions.split(","):
                results[partition] = {}
                for method in chosen:
                    runs = []
                    for seed in seeds:
                        cfg = experiment(table[method], partition, seed, args.rounds, out, method)
                        runs.append(run_figures(seed, fedcomp.run(cfg, progress=True).rows))
                    results[partition][method] = summarize(runs)
    print(f"\nFedSGD, LeNet-5-Caffe, embedded MNIST (4,000 train), 10 clients, {args.rounds} rounds, seeds {seeds}")
    print(f"budgeted methods: at most {args.budget} B per update")
    print(f"{'partition':<11}{'method':<12}{'test accuracy':>18}{'uplink B/client/round':>24}{'vs rtopk-0.1%':>15}")
    for partition, by_method in results.items():
        ref = by_method.get("rtopk-0.1%", {}).get("uplink_bytes_per_client_round")
        for method, s in by_method.items():
            ratio = f"{s['uplink_bytes_per_client_round'] / ref:.2f}" if ref else "-"
            acc = f"{s['accuracy_mean']:.3f} ± {s['accuracy_sd']:.3f}"
            print(f"{partition:<11}{method:<12}{acc:>18}{s['uplink_bytes_per_client_round']:>24,.0f}{ratio:>15}")
    if args.markdown:
        print()
        print(markdown(results, seeds, args.rounds))
    print(json.dumps({"rounds": args.rounds, "seeds": seeds, "budget": args.budget, "results": results}))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
