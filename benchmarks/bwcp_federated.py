"""BWCP in a federation: the pruned model against the same federation with plain BatchNorm.

``bwcp_resnet20.toml`` (``fedcomp/configs``) on the embedded digits (5 clients,
Dirichlet α = 0.5, every client every round, one local epoch at lr 0.05,
λ ×10 the paper's), pruned at ``--prune-at`` of ``--rounds``: with the
statistics round before pruning (the default), without it, and the same
federation with ``server_compression = identity`` (plain BatchNorm) as the
baseline measured in the same run. Per variant: the final accuracy, its
difference to plain BatchNorm, the FLOPs and parameters the final model
has removed (against plain ResNet-20), and the downlink bytes per client
in the first and the last round; mean ± sd over ``--seeds`` experiment
seeds (torch threads fixed per client by ``simulation.num_cpus``).

    python benchmarks/bwcp_federated.py [--quick] [--rounds 10] [--prune-at 6] [--seeds 2] [--set KEY=VALUE]

Prints a table, then a JSON object as its last line. ``--quick``: 3 rounds, prune at 2, one seed (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import fedcomp
from fedcomp.compressors.model.structure import Architecture
from fedcomp.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_compressors import flops_and_params  # noqa: E402 - the same FLOPs count as the centralized BWCP table

CONFIG = Path(fedcomp.__file__).resolve().parent / "configs" / "bwcp_resnet20.toml"
VARIANTS = {
    "plain_bn": ['server_compression={name="identity"}'],
    "bwcp": [],
    "bwcp_no_recal": ["server_compression.recalibrate=false"],
}


def run_variant(name: str, seed: int, rounds: int, prune_at: int, out: Path, bwcp_set: list[str]) -> dict:
    overrides = [
        "data.dataset=mnist5k",
        "federation.num_clients=5",
        "federation.fraction_train=1.0",
        "federation.min_train_clients=5",
        f"federation.rounds={rounds}",
        "federation.evaluate_every=1",
        f"server_compression.prune_at=[{prune_at}]",
        "simulation.num_cpus=1.0",
        f"seed={seed}",
        f'output_dir="{out / name / str(seed)}"',
        *VARIANTS[name],
        *(bwcp_set if name != "plain_bn" else []),
    ]
    cfg = load_config(CONFIG, overrides)
    t0 = time.perf_counter()
    result = fedcomp.run(cfg, progress=False)
    rows = result.rows
    model = fedcomp.load_model(result.run_dir)
    base = Architecture("resnet20", (1, 28, 28), 10).build()
    flops, params = flops_and_params(model, (1, 28, 28))
    base_flops, base_params = flops_and_params(base, (1, 28, 28))
    return {
        "accuracy": rows[-1]["test_accuracy"],
        "accuracy_by_round": [r["test_accuracy"] for r in rows],
        "flops_removed": 1 - flops / base_flops,
        "params_removed": 1 - params / base_params,
        "downlink_first": rows[0]["downlink_bytes_per_client"],
        "downlink_last": rows[-1]["downlink_bytes_per_client"],
        "statistics_bytes": sum(r["statistics_downlink_bytes"] + r["statistics_uplink_bytes"] for r in rows),
        "wall_s": time.perf_counter() - t0,
    }


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--prune-at", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0, help="experiment seeds first-seed, first-seed + 1, ...")
    parser.add_argument("--out", default="runs/bench_bwcp_federated")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="config override for the BWCP variants (e.g. server_compression.lambda1=4e-3)",
    )
    args = parser.parse_args(argv)
    rounds, prune_at, seeds = (3, 2, 1) if args.quick else (args.rounds, args.prune_at, args.seeds)
    torch.set_num_threads(1)
    runs = {
        name: [
            run_variant(name, seed, rounds, prune_at, Path(args.out), args.set)
            for seed in range(args.first_seed, args.first_seed + seeds)
        ]
        for name in VARIANTS
    }
    base_acc = [r["accuracy"] for r in runs["plain_bn"]]
    print(f"\nBWCP federated: ResNet-20, 5 clients, {rounds} rounds, pruned at round {prune_at}, {seeds} seed(s)")
    print(f"{'variant':<15}{'accuracy':>16}{'vs plain BN':>13}{'FLOPs rm':>10}{'params rm':>11}{'down last/first':>17}")
    table = {}
    for name, rs in runs.items():
        acc, sd = _mean_sd([r["accuracy"] for r in rs])
        diff = statistics.fmean(r["accuracy"] - b for r, b in zip(rs, base_acc, strict=True))
        flops = statistics.fmean(r["flops_removed"] for r in rs)
        params = statistics.fmean(r["params_removed"] for r in rs)
        down = statistics.fmean(r["downlink_last"] / r["downlink_first"] for r in rs)
        table[name] = {"accuracy": acc, "sd": sd, "vs_plain_bn": diff, "flops_removed": flops,
                       "params_removed": params, "downlink_last_over_first": down}  # fmt: skip
        print(f"{name:<15}{acc:>10.3f} ±{sd:.3f}{diff:>+13.3f}{flops:>10.3f}{params:>11.3f}{down:>17.3f}")
    print("(vs plain BN: accuracy minus the same seed's plain-BatchNorm federation; FLOPs/params: removed")
    print(" from plain ResNet-20; down last/first: the last round's broadcast over the first's)")
    figures = {"rounds": rounds, "prune_at": prune_at, "seeds": seeds, "set": args.set, "table": table, "runs": runs}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
