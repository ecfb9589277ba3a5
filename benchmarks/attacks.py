"""One hostile client of four against the aggregation strategies: accuracy against the honest run.

Real federations (the embedded digits, LeNet-5-Caffe, 4 IID clients, every
client every round (quorum 3), ``--rounds`` rounds of ``--steps`` local steps); client 0
makes the same attack every round (``[faults] hostile_client = 0``,
:mod:`fedcomp.clients.faults`):

- ``bounded_shift``: an update of +999,000 on every coordinate (inside the
  default ``federation.max_abs_value`` = 10⁶): a well-formed reply;
- ``replacement``: 10⁷ examples claimed at warm-up and in every reply, and
  the update −w (the model replaced by zeros); in simulation the server
  knows every partition's size and refuses the claim;
- ``replacement (sizes unknown)``: the same where the server cannot know
  the sizes (a deployment with data on each node, ``data.per_node``),
  reproduced here by giving the server no partition sizes.

Against FedAvg without a bound, FedAvg with ``federation.update_norm_bound =
"clip"`` (3 × the round's median norm), FedMedian, Krum (f = 1) and
FedTrimmedAvg (β = 0.25). Per cell: the final server-side test accuracy,
its difference to the same strategy's honest run, and the failures the rows
recorded (and updates clipped).

    python benchmarks/attacks.py [--rounds 3] [--steps 20] [--seed 0]

Prints a table, then a JSON object as its last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fedcomp
from fedcomp.servers import app as server_app

ATTACKS = {
    "honest": [],
    "bounded_shift": ["bounded_shift"],
    "replacement": ["replacement"],
    "replacement (sizes unknown)": ["replacement"],
}
DEFENCES = {
    "fedavg": ({"name": "fedavg"}, {}),
    "fedavg+clip": ({"name": "fedavg"}, {"update_norm_bound": "clip", "update_norm_factor": 3.0}),
    "fedmedian": ({"name": "fedmedian"}, {}),
    "krum(f=1)": ({"name": "krum", "num_malicious_nodes": 1}, {}),
    "fedtrimmedavg(0.25)": ({"name": "fedtrimmedavg", "beta": 0.25}, {}),
}


def config(out: Path, attack: str, defence: str, rounds: int, steps: int, seed: int) -> dict:
    strategy, federation = DEFENCES[defence]
    return {
        "name": "".join(c if c.isalnum() else "-" for c in f"{attack}-{defence}"),
        "seed": seed,
        "output_dir": str(out),
        "data": {"dataset": "mnist5k", "partition": "iid"},
        "model": {"name": "lenet5_caffe"},
        "federation": {
            "num_clients": 4,
            "rounds": rounds,
            "min_train_clients": 3,
            "evaluate_every": 0,
            **federation,
        },  # fmt: skip
        "client": {"local_steps": steps, "batch_size": 32, "lr": 0.05},
        "strategy": strategy,
        "simulation": {"num_cpus": float(os.cpu_count() or 1)},
        "faults": {"hostile_client": 0 if ATTACKS[attack] else -1, "attacks": ATTACKS[attack]},
    }


@contextlib.contextmanager
def sizes_unknown(active: bool) -> Iterator[None]:
    """The server without its own partition sizes, as in a deployment with data per node (it runs in this
    process: the simulation's ServerApp is built here)."""
    if not active:
        yield
        return
    saved = server_app.partition_sizes
    server_app.partition_sizes = lambda cfg, split: ({}, {})
    try:
        yield
    finally:
        server_app.partition_sizes = saved


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp, fedcomp.shared_engine():
        for defence in DEFENCES:
            for attack in ATTACKS:
                cfg = config(Path(tmp), attack, defence, args.rounds, args.steps, args.seed)
                with sizes_unknown(attack.endswith("(sizes unknown)")):
                    run = fedcomp.run(cfg, progress=False)
                results.setdefault(defence, {})[attack] = {
                    "accuracy": run.final_accuracy,
                    "failures": sum(len(r["failures"]) for r in run.rows),
                    "clipped": sum(r["server_metrics"].get("update_norm_clipped", 0) for r in run.rows),
                }
    print(f"{'strategy':<22}" + "".join(f" {a:>32}" for a in ATTACKS))
    for defence, row in results.items():
        honest = row["honest"]["accuracy"]
        cells = []
        for attack, r in row.items():
            extra = f" ({r['failures']} failed, {r['clipped']:.0f} clipped)" if attack != "honest" else ""
            delta = f" {r['accuracy'] - honest:+.3f}" if attack != "honest" else ""
            cells.append(f"{r['accuracy']:.3f}{delta}{extra}")
        print(f"{defence:<22}" + "".join(f" {c:>32}" for c in cells))
    out = {"rounds": args.rounds, "steps": args.steps, "seed": args.seed, "results": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
