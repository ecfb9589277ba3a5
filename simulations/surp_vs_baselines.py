"""SuRP against DGC and rTop-k (and no compression) at 99.9% sparsity, FedSGD.

LeNet-5-Caffe on the embedded 5,000 MNIST digits, 10 clients all training
every round, one local SGD step per round (FedSGD, the setting of the
gradient-compression papers), error feedback for rTop-k and SuRP, DGC with
momentum correction, masking and warm-up. Prints, for each method, the
final test accuracy and the uplink bytes per client per round, then a JSON
line with the same figures.

    python simulations/surp_vs_baselines.py [--rounds N] [--methods surp,dgc,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile

import fedcomp

METHODS = {
    "identity": {"name": "identity"},
    "dgc": {"name": "dgc", "density": 0.001, "momentum": 0.9, "warmup_rounds": 4},
    "rtopk": {"name": "rtopk", "density": 0.001, "r_factor": 2.0},
    "surp": {"name": "surp", "density": 0.001},
}


def experiment(uplink: dict, rounds: int, output_dir: str) -> dict:
    return {
        "name": f"fedsgd-{uplink['name']}",
        "seed": 0,
        "output_dir": output_dir,
        "data": {"dataset": "mnist5k", "partition": "iid"},
        "model": {"name": "lenet5_caffe"},
        "federation": {"num_clients": 10, "rounds": rounds, "fraction_train": 1.0, "evaluate_every": 10},
        "client": {"local_steps": 1, "batch_size": 64, "optimizer": "sgd", "lr": 0.1, "momentum": 0.0},
        "uplink": uplink,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--output-dir", help="keep the run directories here (default: a temporary folder)")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output_dir or tmp
        for method in args.methods.split(","):
            run = fedcomp.run(experiment(METHODS[method], args.rounds, out), progress=True)
            per_client = [b for r in run.rows for b in r["uplink_bytes_per_client"]]
            results[method] = {
                "final_accuracy": run.final_accuracy,
                "uplink_bytes_per_client_round": statistics.mean(per_client),
                "uplink_bytes_total": run.uplink_bytes,
            }
    print(f"\nFedSGD, LeNet-5-Caffe, embedded MNIST (4,000 train), 10 clients, {args.rounds} rounds")
    print(f"{'method':<10}{'test accuracy':>15}{'uplink B/client/round':>24}{'vs identity':>13}")
    base = results.get("identity", {}).get("uplink_bytes_per_client_round")
    for method, r in results.items():
        ratio = f"{base / r['uplink_bytes_per_client_round']:.0f}×" if base else "-"
        print(f"{method:<10}{r['final_accuracy']:>15.4f}{r['uplink_bytes_per_client_round']:>24.0f}{ratio:>13}")
    print(json.dumps({"rounds": args.rounds, "methods": results}))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
