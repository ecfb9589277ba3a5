"""The uplink table of docs/uplink.md: FedSGD on Fashion-MNIST, every method tuned, paired seeds.

What a reviewer asks of a ranking, each answered by the protocol (``fedcomp compare``, docs/runs.md):

- **Tuned**: each method's learning rate is chosen from ``LRS`` on the clients' held-out validation
  data (the test set is never read while tuning); DGC's momentum 0.9 makes its effective step
  lr/(1 − m), so the grid reaches down to 0.01, where DGC's effective step equals the others' 0.1.
  A first pass also tried 0.3: dense FedSGD diverged there in its IID tuning run and in 2 of 5
  Dirichlet final runs (test accuracy 0.02–0.03) after validation had chosen it on one seed, so the
  grid stops at 0.1.
- **Paired**: every method then runs the same 5 seeds (same partitions, same sampling).
- **Controls that isolate each gain**: global top-k at fp32 and at 8 bits (what choosing the largest
  coordinates over the whole model buys, with any value code), STC (global top-k with a 1-bit value
  code and one mean scale), SuRP staged (its default) and SuRP with ``stage_ratio = 16`` (its
  refinement stages mostly off: what they add), rTop-k and DGC with global allocation. Every
  sparsifier sends 1% of the coordinates, so the methods differ in value code and selection only.
- **The codecs added since, at equal bytes or at their own** (issue 41): ``quantized_ec`` capped at
  ``max_bytes = 4500``, STC's bytes per update (one uniform step, rANS-coded, a residual per client);
  EDEN at 1 bit a coordinate (54 kB, its lowest rate), NF4 (4.5 bits, 243 kB) and blockwise8 (8 bits,
  432 kB), none with error feedback (their defaults), compared with dense, not with the 1% sparsifiers.
- **Error feedback without client state**: global top-k fp32 and STC again with ``error_feedback =
  "aggregate"`` (CAFe: the last round's aggregate as the predictor, no residual per client), each
  paired with its per-client-residual row: the same codec, only the feedback differs.
- **A task that separates them**: Fashion-MNIST (60,000 images, 10 clients of 6,000), LeNet-5-Caffe,
  FedSGD (one SGD step of 64 images per client per round, no momentum), 40 rounds, IID and
  Dirichlet (α = 0.5) partitions; the full 10,000-image test set every 5 rounds.

    python simulations/fair_uplink.py run --partition iid          # 112 runs, about 1 h 40 min on one core
    python simulations/fair_uplink.py run --partition dirichlet    # the same, side by side on a 2nd core
    python simulations/fair_uplink.py table runs/fair-uplink-iid runs/fair-uplink-dirichlet

``run`` is ``fedcomp compare simulations/fedsgd_fashion.toml`` with the methods below (the command
line it equals is printed). ``table`` reads the comparisons back and prints, per partition and
method: the chosen lr and its validation accuracy, the final test accuracy (mean ± sd over the
seeds), its paired difference from global top-k fp32 with a 95% t-interval, uplink bytes per update,
bits per coordinate of the model, and rounds and uplink bytes to each target accuracy (over the
seeds that reached it; ``n/5`` says how many did). A JSON last line holds every figure.

A comparison run again on the same folder keeps every complete run whose config is unchanged, so
adding a method runs only its 8 runs (3 tuning, 5 final); ``table`` also shows the methods whose
final runs are complete but that a stopped or still-running comparison has not yet written into
compare.json, and lists the rows in ``METHODS``' order.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "simulations" / "fedsgd_fashion.toml"
DENSITY = 0.01
LRS = [0.01, 0.03, 0.1]
SEEDS = 5
METHODS: dict[str, dict[str, Any]] = {
    "dense": {"name": "identity"},
    "global top-k fp32": {"name": "topk", "density": DENSITY, "allocation": "global"},
    "global top-k int8": {"name": "topk", "density": DENSITY, "allocation": "global", "values": "int8"},
    "STC": {"name": "stc", "density": DENSITY},
    "SuRP staged": {"name": "surp", "density": DENSITY},
    "SuRP stage_ratio 16": {"name": "surp", "density": DENSITY, "stage_ratio": 16.0},
    "rTop-k (r = 2k)": {"name": "rtopk", "density": DENSITY, "r_factor": 2.0, "allocation": "global"},
    "DGC (m = 0.9)": {"name": "dgc", "density": DENSITY, "momentum": 0.9, "allocation": "global"},
    # Issue 41: the codecs added since, and error feedback without client state. Each codec's own default
    # error feedback: quantized_ec (nearest rounding) keeps a residual per client; EDEN (unbiased), NF4 and
    # blockwise8 (as FLARE) keep none.
    "quantized_ec ≤ 4,500 B": {"name": "quantized_ec", "max_bytes": 4500},  # STC's bytes per update
    "global top-k fp32, aggregate feedback": {
        "name": "topk", "density": DENSITY, "allocation": "global", "error_feedback": "aggregate"
    },
    "STC, aggregate feedback": {"name": "stc", "density": DENSITY, "error_feedback": "aggregate"},
    "EDEN 1 bit": {"name": "eden", "bits": 1},
    "NF4": {"name": "nf4"},
    "blockwise8": {"name": "blockwise8"},
}  # fmt: skip
REFERENCE = "global top-k fp32"
"""What every paired difference is taken against: the control that isolates what a method adds."""


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def command(partition: str) -> list[str]:
    """The ``fedcomp compare`` command line this comparison is."""
    out = ["fedcomp", "compare", str(BASE.relative_to(ROOT))]
    for uplink in METHODS.values():
        out += ["--method", f"uplink={_toml(uplink)}"]
    out += ["--tune", "client.lr=" + ",".join(map(str, LRS)), "--seeds", str(SEEDS)]
    out += ["--set", f'data.partition="{partition}"', "--out", f"runs/fair-uplink-{partition}", "--no-progress"]
    return out


def run(partition: str) -> None:
    from fedcomp.compare import compare

    print("equals: " + " ".join(f"'{a}'" if "{" in a or '"' in a else a for a in command(partition)), flush=True)
    compare(
        BASE,
        [{"uplink": dict(u)} for u in METHODS.values()],
        tune={"client.lr": LRS},
        seeds=SEEDS,
        overrides=[f'data.partition="{partition}"'],
        out_dir=ROOT / "runs" / f"fair-uplink-{partition}",
        progress=False,
    )


# ----------------------------------------------------------------------------- the table


def _t975(n: int) -> float:
    from fedcomp.reports.compare import T975

    return T975[n - 2] if n - 1 <= len(T975) else 1.96


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired(values: list[float | None], reference: list[float | None]) -> dict[str, Any]:
    """Mean per-seed difference and its 95% t-interval over the seeds where both have a value."""
    d = [a - b for a, b in zip(values, reference, strict=True) if a is not None and b is not None]
    if len(d) < 2:
        return {"n": len(d), "mean": d[0] if d else None, "ci95": None}
    m, sd = mean_sd(d)
    half = _t975(len(d)) * sd / math.sqrt(len(d))
    return {"n": len(d), "mean": m, "ci95": [m - half, m + half]}


def method_figures(result: dict[str, Any], targets: list[float]) -> dict[str, Any]:
    """One method of a compare.json: its choice and, per seed, the final accuracy, bytes and reach."""
    from fedcomp.reports.curves import curve, first_reach
    from fedcomp.reports.runs import load_run

    runs = [load_run(r) for r in sorted(result["runs"], key=lambda p: int(Path(p).name.split("=")[-1]))]
    finals: list[float | None] = []
    per_message: dict[str, list[float]] = {"uplink": [], "downlink": []}
    reach = {t: {"rounds": [], "uplink": [], "downlink": []} for t in targets}
    for run in runs:
        points = curve(run)
        finals.append(points[-1].accuracy if points and points[-1].round == len(run.rows) else None)
        up = [b for row in run.rows for b in row["uplink_bytes_per_client"]]
        per_message["uplink"].append(sum(up) / len(up))
        per_message["downlink"].append(sum(r["downlink_bytes"] for r in run.rows) / len(up))
        for t in targets:
            p = first_reach(run, t)
            reach[t]["rounds"].append(p.round if p else None)
            reach[t]["uplink"].append(p.uplink if p else None)
            reach[t]["downlink"].append(p.downlink if p else None)
    return {
        "chosen": result["chosen"],
        "validation": result["validation"],
        "final_accuracy": finals,
        "bytes_per_client_per_round": per_message,
        "reach": {str(t): v for t, v in reach.items()},
        "runs": result["runs"],
    }


def ratio(values: list[float | None], reference: list[float | None]) -> tuple[float, int] | None:
    """Geometric mean of the per-seed ratios value / reference over the seeds where both reached the target."""
    pairs = [(a, b) for a, b in zip(values, reference, strict=True) if a is not None and b]
    if not pairs:
        return None
    return math.exp(statistics.mean(math.log(a / b) for a, b in pairs)), len(pairs)


def table(dirs: list[Path], targets: list[float], direction: str = "uplink") -> dict[str, Any]:
    labels = {json.dumps({"uplink": u}, sort_keys=True): name for name, u in METHODS.items()}
    out: dict[str, Any] = {}
    for folder in dirs:
        done = folder / "compare.json"
        data = json.loads(done.read_text()) if done.exists() else {"methods": []}
        # Methods added since that compare.json was written (their comparison still running or stopped): each
        # one whose final runs are all complete joins the table.
        data["methods"] += finished_so_far(folder, skip={m["label"] for m in data["methods"]})
        partition = folder.name.removeprefix("fair-uplink-")
        figures = {}
        for m in data["methods"]:
            name = labels.get(json.dumps(m["overrides"], sort_keys=True)) or readable(m["overrides"])
            figures[name] = method_figures(m, targets)
        order = list(METHODS)  # the rows in METHODS' order whatever order the runs finished in; others last
        figures = dict(sorted(figures.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
        if not figures:
            print(f"\n**{partition}**: no method has finished its final runs yet")
            continue
        ref = figures.get(REFERENCE) or next(iter(figures.values()))  # else the comparison's own baseline
        ref_name = next(k for k, v in figures.items() if v is ref)
        params = _model_parameters(figures)
        print(f"\n**{partition}** (paired against {ref_name}; {direction} bytes)\n")
        head = f"| method | lr (validation acc.) | test acc., mean ± sd | paired Δ acc. (95% CI) | {direction} B per client per round | bits/param |"
        head += "".join(f" rounds to {t:.2f} | {direction} MB to {t:.2f} (× {ref_name}) |" for t in targets)
        print(head)
        print("|---" * (6 + 2 * len(targets)) + "|")
        for name, f in figures.items():
            lr = f["chosen"].get("client.lr")
            val = max((v for v in f["validation"].values() if v is not None), default=None)
            finals = [a for a in f["final_accuracy"] if a is not None]
            m, sd = mean_sd(finals) if finals else (math.nan, math.nan)
            cell = f"{m:.3f} ± {sd:.3f}" + ("" if len(finals) == SEEDS else f" ({len(finals)} complete)")
            if f is not ref:
                d = paired(f["final_accuracy"], ref["final_accuracy"])
                f["paired_accuracy"] = d
                delta = f"{d['mean']:+.3f} ({d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f})" if d["ci95"] else "–"
            else:
                delta = "(reference)"
            b = statistics.mean(f["bytes_per_client_per_round"][direction])
            row = f"| {name} | {lr} ({val:.3f}) | {cell} | {delta} | {b:,.0f} | {8 * b / params:.3f} |"
            for t in targets:
                reach = f["reach"][str(t)]
                r = [x for x in reach["rounds"] if x is not None]
                u = [x for x in reach[direction] if x is not None]
                n = f"{len(r)}/{len(reach['rounds'])}"
                row += f" {statistics.mean(r):.0f} ({n}) |" if r else f" – (0/{len(reach['rounds'])}) |"
                q = ratio(reach[direction], ref["reach"][str(t)][direction]) if f is not ref else None
                f.setdefault("bytes_ratio", {})[str(t)] = q
                times = f" (×{q[0]:.3g}, {q[1]} paired)" if q else ""
                row += f" {statistics.mean(u) / 1e6:.3g}{times} |" if u else " – |"
            print(row)
        out[partition] = {"targets": targets, "direction": direction, "model_parameters": params, "methods": figures}
    return out


def finished_so_far(folder: Path, skip: set[str] = frozenset()) -> list[dict[str, Any]]:
    """A comparison still running (no compare.json yet, or one written before methods were added): each method
    whose final runs are all complete, its label not in ``skip``, with its validation scores and choice
    recomputed from its tuning runs by compare's rule (best last-round validation accuracy; ties: the first
    value)."""
    from fedcomp.compare import _validation_accuracy, method_label

    known = {method_label({"uplink": u}): {"uplink": u} for u in METHODS.values()}
    out = []
    for final in sorted((folder / "final").glob("*/sweep.json"), key=lambda p: p.stat().st_mtime):
        runs = json.loads(final.read_text())["runs"]
        if len(runs) < SEEDS or any(r["status"] != "complete" for r in runs):
            continue
        label = final.parent.name
        if label in skip:
            continue
        scores = {}
        for tuning in sorted((folder / "tuning" / label).glob("client.lr=*__seed=0")):
            lr = float(tuning.name.split("=")[1].split("__")[0])
            scores[f"client.lr={lr}"] = _validation_accuracy(tuning)
        best = max(scores, key=lambda k: -1.0 if scores[k] is None else scores[k]) if scores else None
        out.append({
            "label": label,
            "overrides": known.get(label, {"method": label}),
            "chosen": {"client.lr": float(best.split("=")[1])} if best else {},
            "validation": scores,
            "runs": [str(final.parent / r["dir"]) for r in runs],
        })  # fmt: skip
    return out


def readable(overrides: dict[str, Any]) -> str:
    """``{"downlink": {"name": "surp", "density": 0.01}}`` → ``downlink surp 1%``."""
    parts = []
    for section, spec in overrides.items():
        if not isinstance(spec, dict):
            parts.append(f"{section}={spec}")
            continue
        rest = [f"{k}={v}" for k, v in spec.items() if k not in ("name", "density")]
        density = f" {spec['density']:.1%}".replace(".0%", "%") if "density" in spec else ""
        parts.append(f"{section} {spec['name']}{density}" + (f" ({', '.join(rest)})" if rest else ""))
    return "; ".join(parts)


def _model_parameters(figures: dict[str, Any]) -> int:
    """The model's parameter count, from a run's saved model."""
    import torch

    run = Path(next(iter(figures.values()))["runs"][0])
    return sum(v.numel() for v in torch.load(run / "model.pt", weights_only=True).values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run the comparison for one partition")
    p_run.add_argument("--partition", choices=["iid", "dirichlet"], required=True)
    p_run.add_argument("--print-command", action="store_true", help="print the fedcomp compare command and stop")
    p_table = sub.add_parser("table", help="the Markdown table of finished comparisons, then a JSON line")
    p_table.add_argument("dirs", nargs="+", type=Path)
    p_table.add_argument("--target", type=float, action="append", help="target accuracies (default 0.70, 0.75)")
    p_table.add_argument("--direction", choices=["uplink", "downlink"], default="uplink", help="which bytes to show")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        if args.print_command:
            print(" ".join(command(args.partition)))
            return
        run(args.partition)
        return
    figures = table(args.dirs, args.target or [0.70, 0.75], args.direction)
    print(json.dumps(figures, default=str))


if __name__ == "__main__":
    sys.exit(main())
