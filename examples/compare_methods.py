"""Three uplinks compared the way a reviewer accepts: ``fedcomp.compare.compare`` (docs/runs.md).

    python examples/compare_methods.py [--rounds 5] [--seeds 3] [--lr 0.03,0.1,0.3] [--out runs/compare-example]

Dense, a global top-k at 1% (the baseline that isolates what SuRP adds to
choosing the largest coordinates over the whole model) and SuRP at 1%: each
method's learning rate is tuned on the clients' held-out validation data
(the test set is never read while tuning), then every method runs on the
same seeds, and each is compared with dense seed by seed. Prints, per
method, the chosen learning rate, its validation scores and the paired
difference in bytes to the target accuracy with its 95% interval;
``OUT/compare.json`` keeps them all.
"""

from __future__ import annotations

import argparse

from fedcomp.compare import compare

METHODS = [
    {"uplink.name": "identity"},
    {"uplink.name": "topk", "uplink.density": 0.01, "uplink.allocation": "global"},
    {"uplink.name": "surp", "uplink.density": 0.01},
]


def paired(method) -> str:
    """The paired difference in total bytes to the target, in words."""
    d = method.paired["total_bytes"]
    if d["mean_difference"] is None:
        return f"no seed where both reached the target ({d['left_out']} left out)"
    ci = f", 95% CI {d['ci95'][0] / 1e6:+.2f} to {d['ci95'][1] / 1e6:+.2f} MB" if d["ci95"] else ""
    return f"{d['mean_difference'] / 1e6:+.2f} MB{ci} over {d['seeds']} seeds ({d['left_out']} left out)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/compare-example")
    parser.add_argument("--lr", default="0.03,0.1,0.3", help="the learning rates tried for every method")
    parser.add_argument("--backend", choices=["ray", "in-process"], default="ray", help="where the clients run")
    args = parser.parse_args()
    base = {
        "name": "compare-example",
        "federation": {"num_clients": 4, "rounds": args.rounds},
        "client": {"local_steps": 10},
        "simulation": {"backend": args.backend},
    }
    result = compare(
        base,
        METHODS,
        tune={"client.lr": [float(x) for x in args.lr.split(",")]},
        seeds=args.seeds,
        out_dir=args.out,
        progress=False,
    )
    print(f"target accuracy {result.target:.3f}")
    for m in result.methods:
        scores = ", ".join(f"{k}: {v:.3f}" for k, v in m.validation.items() if v is not None)
        print(f"{m.label}: chose {m.chosen} (validation {scores}); bytes to target vs dense: {paired(m)}")
    print(f"all of it: {result.out_dir / 'compare.json'}")


if __name__ == "__main__":
    main()
