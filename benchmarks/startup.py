"""How long before fedcomp answers: the CLI's start-up, and a sweep's runs against the same runs apart.

Two measurements, each against a baseline timed in the same run:

- ``fedcomp --help`` and ``fedcomp list`` as whole processes, against a bare
  ``python -c pass`` and ``python -c "import torch"`` (what importing the
  registries used to cost). Median of ``--repeats`` runs each.
- A 4-run sweep (``fedcomp.run_sweep``: one engine for its runs) against
  the same 4 runs as separate ``fedcomp.run`` calls (each starts Ray and
  its client workers, as before). Tiny runs (3 clients, 2 rounds, 5
  local steps), so the engine's start-up is what differs.

Printed: a table with the ratios, then a JSON object as the last line.

    python benchmarks/startup.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _median_seconds(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cli_startup(repeats: int) -> dict[str, float]:
    py = sys.executable
    cli = [py, "-m", "fedcomp.cli"]
    return {
        "python_s": _median_seconds([py, "-c", "pass"], repeats),
        "import_torch_s": _median_seconds([py, "-c", "import torch"], repeats),
        "help_s": _median_seconds([*cli, "--help"], repeats),
        "list_s": _median_seconds([*cli, "list"], repeats),
    }


def tiny_config(out: Path) -> dict:
    return {
        "name": "startup",
        "output_dir": str(out),
        "federation": {"num_clients": 3, "rounds": 2, "min_train_clients": 2},
        "client": {"local_steps": 5},
    }


GRID = {"uplink": [{"name": "identity"}, {"name": "topk", "density": 0.01}]}


def sweep_against_separate_runs() -> dict[str, float]:
    import fedcomp
    from fedcomp.sweep import plan

    with tempfile.TemporaryDirectory() as tmp:
        base = tiny_config(Path(tmp) / "separate")
        t0 = time.perf_counter()
        for _, cfg in plan(base, GRID, seeds=2):  # the sweep's 4 configs, one engine each
            fedcomp.run(cfg, progress=False)
        separate = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = fedcomp.run_sweep(tiny_config(Path(tmp)), GRID, seeds=2, sweep_dir=Path(tmp) / "sweep", progress=False)
        swept = time.perf_counter() - t0
        assert not res.failed, res.failed
    return {"separate_runs_s": separate, "sweep_s": swept}


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repeats of each command")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    cli = cli_startup(3 if args.quick else args.repeats)
    runs = sweep_against_separate_runs()
    figures = {
        **{k: round(v, 3) for k, v in {**cli, **runs}.items()},
        "help_vs_import_torch": round(cli["help_s"] / cli["import_torch_s"], 3),
        "list_vs_import_torch": round(cli["list_s"] / cli["import_torch_s"], 3),
        "sweep_vs_separate_runs": round(runs["sweep_s"] / runs["separate_runs_s"], 3),
    }
    rows = [
        ("python -c pass", cli["python_s"], None, ""),
        ('python -c "import torch"', cli["import_torch_s"], 1.0, "itself"),
        ("fedcomp --help", cli["help_s"], figures["help_vs_import_torch"], "import torch"),
        ("fedcomp list", cli["list_s"], figures["list_vs_import_torch"], "import torch"),
        ("4 tiny runs, one engine each", runs["separate_runs_s"], 1.0, "itself"),
        ("the same 4 as one sweep", runs["sweep_s"], figures["sweep_vs_separate_runs"], "separate runs"),
    ]
    print("start-up (median seconds; ratio against the baseline in the same run)")
    print(f"{'':34}{'seconds':>9}{'ratio':>9}   baseline")
    for label, seconds, ratio, baseline in rows:
        shown = "" if ratio is None else f"{ratio:9.3f}"
        print(f"{label:34}{seconds:9.3f}{shown}   {baseline}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
