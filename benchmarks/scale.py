"""Does a federation of 1,000 clients cost more than one of 100, with 100 sampled per round either way?

The per-client compressor state (the error-feedback residual) is what grew
with the number of clients: it lived in Flower's ``Context.state``, kept in
memory for every node and copied to and from the worker on each call. It is
now a file per client (:mod:`fedcomp.flower.state`), read only when the
client is sampled. This runs the same federation (LeNet-5-Caffe on the
embedded digits, error-feedback SuRP uplink, 100 clients sampled per round,
10 rounds of 2 local steps, so that about every one of the 1,000 clients
is sampled once) with 100 and with 1,000 clients, and
measures for each:

- ``peak_rss_mb``: the peak resident memory of the whole process tree
  (this process, Ray's processes and its client workers), sampled every
  0.2 s with psutil;
- ``s_per_round``: the mean wall time of the rounds after the first;
- ``state_mb``: the client-state files on disk at the end.

Goal: the 1,000-client run's peak RSS at most 1.5× the 100-client run's,
and its time per round within 1.2×. Printed: a table with the ratios, then
a JSON object as the last line (``runs``: ``clients``, ``peak_rss_mb``,
``s_per_round`` for each).

    python benchmarks/scale.py [--quick] [--rounds N] [--model resnet20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

import fedcomp


class PeakRSS:
    """The largest resident set of this process and all its descendants, sampled in a thread."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def config(clients: int, sampled: int, rounds: int, model: str, out: Path) -> dict:
    return {
        "name": f"scale-{clients}",
        "output_dir": str(out),
        "model": {"name": model},
        "federation": {
            "num_clients": clients,
            "rounds": rounds,
            "fraction_train": sampled / clients,
            "min_train_clients": sampled,
            "evaluate_every": 0,  # the last round only: the server's evaluation is not what scales
        },
        "client": {"local_steps": 2, "batch_size": 4},
        "uplink": {"name": "surp", "density": 0.01, "error_feedback": True},
        "simulation": {"num_cpus": 1.0},
    }


def measure(clients: int, sampled: int, rounds: int, model: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as rss:
        result = fedcomp.run(config(clients, sampled, rounds, model, Path(tmp)), progress=False)
        state = sum(f.stat().st_size for f in (result.run_dir / "client_state").rglob("*.pt"))
        later = [r["wall_s"] for r in result.rows[1:]] or [result.rows[0]["wall_s"]]
    return {
        "clients": clients,
        "sampled": sampled,
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "s_per_round": round(sum(later) / len(later), 3),
        "state_mb": round(state / 2**20, 1),
        "final_accuracy": result.final_accuracy,
    }


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sampled", type=int, default=100)
    parser.add_argument("--model", default="lenet5_caffe")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    t0 = time.perf_counter()
    runs = [measure(n, args.sampled, rounds, args.model) for n in (100, 1000)]
    small, large = runs
    figures = {
        "model": args.model,
        "rounds": rounds,
        "runs": runs,
        "rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "time_ratio": round(large["s_per_round"] / small["s_per_round"], 3),
        "goal": {"rss_ratio": 1.5, "time_ratio": 1.2},
        "total_s": round(time.perf_counter() - t0, 1),
    }
    print(f"scale: {args.model}, error-feedback SuRP, {args.sampled} clients sampled per round, {rounds} rounds")
    print(f"{'clients':>8}{'peak RSS (MB)':>15}{'s / round':>11}{'state on disk (MB)':>20}")
    for r in runs:
        print(f"{r['clients']:>8}{r['peak_rss_mb']:>15.1f}{r['s_per_round']:>11.3f}{r['state_mb']:>20.1f}")
    print(f"1,000 / 100 clients: peak RSS {figures['rss_ratio']}x (goal <= 1.5), time per round "
          f"{figures['time_ratio']}x (goal <= 1.2)")  # fmt: skip
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
