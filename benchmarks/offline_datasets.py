"""Federations on the real offline data sets: LEAF's Shakespeare and Fashion-MNIST.

**Shakespeare** (LEAF, Caldas et al. 2018): ``--roles`` speaking roles
(a fixed seeded sample, ``data.params.role_seed = 0``) as natural clients,
``--per-round`` of them sampled each round, LEAF's model (``leaf_lstm``:
embedding 8, 2-layer LSTM 256) trained with LEAF's SGD lr 0.8 and batch 10
for ``--steps`` local steps; uplink dense (identity), SuRP and top-k at
``--density``. The server evaluates next-character accuracy on 1,000
windows drawn from the roles' own test parts.

**Fashion-MNIST** (Debian's ``dataset-fashion-mnist``): the demo comparison
(``fedcomp/configs/demo.toml``: LeNet-5-Caffe, 10 clients, 5 per round) on
Fashion-MNIST with Dirichlet α = 0.5 label skew and ``--steps`` local steps:
uplink dense or SuRP at 1% × downlink dense or the model's change with SuRP
at 5% (``make demo``'s four cells), plus top-k at 1% uplink.

Per variant: final accuracy, seconds per round, uplink bytes per client
update, downlink bytes per client per round; mean ± sd over ``--seeds``
experiment seeds, and each against dense (same seed, same run): accuracy
difference and the bytes ratio. Torch threads are fixed per client by
``simulation.num_cpus = 1`` and to 1 in this process.

    python benchmarks/offline_datasets.py [--quick] [--only shakespeare|fashion_mnist] [--seeds 2] [--rounds 8]

Prints a table per data set, then a JSON object as its last line.
``--quick``: 2 rounds, one seed, 20 roles (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import fedcomp
from fedcomp.config import config_from_dict

UPLINKS = {
    "dense": {"name": "identity"},
    "surp": {"name": "surp", "density": None},
    "topk": {"name": "topk", "density": None},
}


def shakespeare_config(uplink: dict, seed: int, args: argparse.Namespace, out: Path) -> dict:
    return {
        "name": f"shakespeare-{uplink['name']}",
        "seed": seed,
        "output_dir": str(out),
        "data": {"dataset": "shakespeare", "partition": "natural", "test_size": 1000, "params": {"roles": args.roles}},
        "model": {"name": "leaf_lstm"},
        "federation": {
            "num_clients": args.roles,
            "rounds": args.rounds,
            "fraction_train": args.per_round / args.roles,
            "min_train_clients": args.per_round,
            "evaluate_every": args.rounds,
        },
        "client": {"local_steps": args.steps, "batch_size": 10, "optimizer": "sgd", "lr": 0.8},
        "uplink": uplink,
        "simulation": {"num_cpus": 1.0},
    }


def fashion_config(uplink: dict, downlink: dict, seed: int, args: argparse.Namespace, out: Path) -> dict:
    return {
        "name": f"fashion-{uplink['name']}-{downlink['name']}",
        "seed": seed,
        "output_dir": str(out),
        "data": {"dataset": "fashion_mnist", "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "lenet5_caffe"},
        "federation": {
            "num_clients": 10,
            "rounds": args.rounds,
            "fraction_train": 0.5,
            "min_train_clients": 5,
            "evaluate_every": args.rounds,
        },
        "client": {"local_steps": args.steps, "batch_size": 32, "optimizer": "sgd", "lr": 0.05},
        "uplink": uplink,
        "downlink": downlink,
        "simulation": {"num_cpus": 1.0},
    }


def run(cfg: dict) -> dict:
    t0 = time.perf_counter()
    result = fedcomp.run(config_from_dict(cfg), progress=False)
    rows = result.rows
    updates = sum(len(r["uplink_bytes_per_client"]) for r in rows)
    return {
        "accuracy": rows[-1]["test_accuracy"],
        "s_per_round": statistics.fmean(r["wall_s"] for r in rows),
        "uplink_per_update": result.uplink_bytes / max(updates, 1),
        "downlink_per_client": statistics.fmean(r["downlink_bytes_per_client"] for r in rows),
        "failed": sum(r["failed_clients"] for r in rows),
        "total_s": time.perf_counter() - t0,
    }


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(title: str, runs: dict[str, list[dict]]) -> dict:
    base = runs["dense"]
    print(f"\n{title}")
    print(
        f"{'variant':<22}{'accuracy':>16}{'vs dense':>10}{'s/round':>9}{'up B/update':>13}{'up ratio':>10}"
        f"{'down B/client':>15}{'down ratio':>11}"
    )
    out = {}
    for name, rs in runs.items():
        acc, sd = _mean_sd([r["accuracy"] for r in rs])
        diff = statistics.fmean(r["accuracy"] - b["accuracy"] for r, b in zip(rs, base, strict=True))
        spr = statistics.fmean(r["s_per_round"] for r in rs)
        up = statistics.fmean(r["uplink_per_update"] for r in rs)
        up_ratio = statistics.fmean(
            r["uplink_per_update"] / b["uplink_per_update"] for r, b in zip(rs, base, strict=True)
        )
        down = statistics.fmean(r["downlink_per_client"] for r in rs)
        down_ratio = statistics.fmean(
            r["downlink_per_client"] / b["downlink_per_client"] for r, b in zip(rs, base, strict=True)
        )
        out[name] = {
            "accuracy": acc,
            "sd": sd,
            "vs_dense": diff,
            "s_per_round": spr,
            "uplink_per_update": up,
            "uplink_ratio": up_ratio,
            "downlink_per_client": down,
            "downlink_ratio": down_ratio,
            "failed": sum(r["failed"] for r in rs),
        }
        print(
            f"{name:<22}{acc:>10.3f} ±{sd:.3f}{diff:>+10.3f}{spr:>9.1f}{up:>13,.0f}{up_ratio:>10.4f}"
            f"{down:>15,.0f}{down_ratio:>11.3f}"
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["shakespeare", "fashion_mnist"], default=None)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="local SGD steps per client and round")
    parser.add_argument("--roles", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--density", type=float, default=0.01, help="SuRP and top-k uplink density")
    parser.add_argument("--out", default="runs/bench_datasets")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seeds, args.roles, args.per_round = 2, 1, 20, 4
    torch.set_num_threads(1)
    out = Path(args.out)
    seeds = range(args.seeds)
    uplinks = {k: ({**v, "density": args.density} if "density" in v else v) for k, v in UPLINKS.items()}
    figures: dict = {"args": vars(args)}
    if args.only in (None, "shakespeare"):
        runs = {
            name: [run(shakespeare_config(up, s, args, out / "shakespeare" / name)) for s in seeds]
            for name, up in uplinks.items()
        }
        title = (
            f"Shakespeare (LEAF): {args.roles} roles, {args.per_round} per round, leaf_lstm, {args.rounds} "
            f"rounds × {args.steps} steps, {args.seeds} seed(s)"
        )
        figures["shakespeare"] = {"table": table(title, runs), "runs": runs}
    if args.only in (None, "fashion_mnist"):
        down_surp = {"name": "surp", "density": 0.05}
        variants = {
            "dense": (uplinks["dense"], {"name": "identity"}),
            "surp_up": (uplinks["surp"], {"name": "identity"}),
            "dense_up+surp_down": (uplinks["dense"], down_surp),
            "surp_up+surp_down": (uplinks["surp"], down_surp),
            "topk_up": (uplinks["topk"], {"name": "identity"}),
        }
        runs = {
            name: [run(fashion_config(up, down, s, args, out / "fashion_mnist" / name)) for s in seeds]
            for name, (up, down) in variants.items()
        }
        title = (
            f"Fashion-MNIST: LeNet-5-Caffe, 10 clients (Dirichlet 0.5), 5 per round, {args.rounds} rounds × "
            f"{args.steps} steps, {args.seeds} seed(s)"
        )
        figures["fashion_mnist"] = {"table": table(title, runs), "runs": runs}
    print("(vs dense: accuracy minus the same seed's dense federation; ratios: bytes over dense's, same seed)")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
