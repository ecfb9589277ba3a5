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
a JSON object as the last line (``runs``: ``clients``, ``error_feedback``,
``peak_rss_mb``, ``s_per_round``, ``state_mb``, ``final_accuracy``,
``downlink_mb`` and ``uplink_mb`` for each; ``ratios``: 1,000 / 100 clients
per error-feedback mode).

``--error-feedback`` picks the form of error feedback: ``memory`` (the
default, a residual per client: ``error_feedback = true``), ``aggregate``
(no client state: the previous round's aggregate is every client's
predictor, sent with each train message, ``error_feedback = "aggregate"``,
docs/uplink.md) or ``both`` (each, at 100 and at 1,000 clients). Under
``aggregate`` the state on disk should be 0 MB whatever the number of
clients, and the downlink carries the predictor (``downlink_mb``).

    python benchmarks/scale.py [--quick] [--rounds N] [--model resnet20] [--error-feedback both]
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


FEEDBACK = {"memory": True, "aggregate": "aggregate"}
"""``--error-feedback`` → the uplink's ``error_feedback``."""


def config(clients: int, sampled: int, rounds: int, model: str, out: Path, feedback: str = "memory") -> dict:
    return {
        "name": f"scale-{clients}-{feedback}",
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
        "uplink": {"name": "surp", "density": 0.01, "error_feedback": FEEDBACK[feedback]},
        "simulation": {"num_cpus": 1.0},
    }


def measure(clients: int, sampled: int, rounds: int, model: str, feedback: str = "memory") -> dict:
    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as rss:
        result = fedcomp.run(config(clients, sampled, rounds, model, Path(tmp), feedback), progress=False)
        state = sum(f.stat().st_size for f in (result.run_dir / "client_state").rglob("*.pt"))
        later = [r["wall_s"] for r in result.rows[1:]] or [result.rows[0]["wall_s"]]
    return {
        "clients": clients,
        "sampled": sampled,
        "error_feedback": feedback,
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "s_per_round": round(sum(later) / len(later), 3),
        "state_mb": round(state / 2**20, 1),
        "final_accuracy": result.final_accuracy,
        "downlink_mb": round(sum(r["downlink_bytes"] for r in result.rows) / 2**20, 1),
        "uplink_mb": round(sum(r["uplink_bytes"] for r in result.rows) / 2**20, 2),
    }


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sampled", type=int, default=100)
    parser.add_argument("--model", default="lenet5_caffe")
    parser.add_argument(
        "--error-feedback",
        choices=[*FEEDBACK, "both"],
        default="memory",
        help="memory: a residual per client (error_feedback = true); aggregate: none, the previous round's "
        'aggregate as the predictor (error_feedback = "aggregate"); both: each',
    )
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    modes = list(FEEDBACK) if args.error_feedback == "both" else [args.error_feedback]
    t0 = time.perf_counter()
    runs = [measure(n, args.sampled, rounds, args.model, mode) for mode in modes for n in (100, 1000)]
    ratios = {}
    for mode in modes:
        small, large = (r for r in runs if r["error_feedback"] == mode)
        ratios[mode] = {
            "rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
            "time_ratio": round(large["s_per_round"] / small["s_per_round"], 3),
        }
    figures = {
        "model": args.model,
        "rounds": rounds,
        "runs": runs,
        "ratios": ratios,
        **ratios[modes[0]],  # the first mode's, where earlier versions of this script put them
        "goal": {"rss_ratio": 1.5, "time_ratio": 1.2},
        "total_s": round(time.perf_counter() - t0, 1),
    }
    print(f"scale: {args.model}, SuRP 1% (error feedback: {', '.join(modes)}), {args.sampled} clients sampled per "
          f"round, {rounds} rounds")  # fmt: skip
    print(f"{'feedback':>10}{'clients':>8}{'peak RSS (MB)':>15}{'s / round':>11}{'state on disk (MB)':>20}"
          f"{'accuracy':>10}{'down (MB)':>11}{'up (MB)':>9}")  # fmt: skip
    for r in runs:
        acc = f"{r['final_accuracy']:.4f}" if r["final_accuracy"] is not None else "-"
        print(f"{r['error_feedback']:>10}{r['clients']:>8}{r['peak_rss_mb']:>15.1f}{r['s_per_round']:>11.3f}"
              f"{r['state_mb']:>20.1f}{acc:>10}{r['downlink_mb']:>11.1f}{r['uplink_mb']:>9.2f}")  # fmt: skip
    for mode, ratio in ratios.items():
        print(f"{mode}: 1,000 / 100 clients: peak RSS {ratio['rss_ratio']}x (goal <= 1.5), time per round "
              f"{ratio['time_ratio']}x (goal <= 1.2)")  # fmt: skip
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
