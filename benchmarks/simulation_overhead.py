"""What does running through Flower + Ray cost over a plain PyTorch loop?

Runs the default experiment (``fedcomp/configs/demo.toml``, FedAvg) through fedcomp,
then, in the same process, a plain sequential loop that does the same
local training (same clients each round, same partitions, same seeds, same
FedAvg and the same centralized evaluation) with no federation around it.

Printed: a table of the two, then the ratio ``plain_s / fedcomp_s`` over
the rounds (goal: >= 0.9), with the engine's fixed costs (Ray start,
worker warm-up, shutdown) reported separately; the last line is a JSON
object with the figures.

    python benchmarks/simulation_overhead.py [--quick] [--rounds N] [--config FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import fedcomp
from fedcomp.clients.training import evaluate, float_state, model_delta, train_local
from fedcomp.config import ExperimentConfig, load_config
from fedcomp.data import load_experiment_data, partition_indices
from fedcomp.models import build_model
from fedcomp.seeding import TRAIN_SHUFFLE, torch_generator
from fedcomp.servers.app import initial_model

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(cfg: ExperimentConfig, clients_per_round: list[list[int]]) -> tuple[float, float, list[float]]:
    """The same training as the federation, sequentially in one process.

    Returns (seconds over the rounds, final accuracy, per-round seconds).
    """
    d = cfg.data
    split = load_experiment_data(cfg)
    parts = partition_indices(
        split.train.labels.numpy(), cfg.federation.num_clients, d.partition,
        alpha=d.alpha, classes_per_client=d.classes_per_client, seed=cfg.seed,
    )  # fmt: skip
    datasets = [split.train.subset(p) for p in parts]
    device = torch.device("cpu")
    global_model = initial_model(cfg, split.input_shape, split.num_classes)
    worker = build_model(cfg.model.name, split.input_shape, split.num_classes, cfg.model.params)
    per_round, acc = [], 0.0
    for rnd, clients in enumerate(clients_per_round, start=1):
        t0 = time.perf_counter()
        global_state = {k: v.clone() for k, v in global_model.state_dict().items()}
        before = float_state(global_model)
        updates, weights = [], []
        for pid in clients:
            worker.load_state_dict(global_state)
            train_local(worker, datasets[pid], cfg.client, torch_generator(cfg.seed, TRAIN_SHUFFLE, rnd, pid), device)
            updates.append(model_delta(float_state(worker), before))
            weights.append(len(datasets[pid]))
        total = sum(weights)
        new_state = dict(global_state)
        for name in before:
            avg = sum(u[name] * (w / total) for u, w in zip(updates, weights, strict=True))
            new_state[name] = before[name] + avg  # FedAvg (the demo's [strategy])
        global_model.load_state_dict(new_state)
        _, acc = evaluate(global_model, split.test, device)
        per_round.append(time.perf_counter() - t0)
    return sum(per_round), acc, per_round


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds (ends within a minute)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--config", default=str(ROOT / "fedcomp" / "configs" / "demo.toml"))
    args = parser.parse_args(argv)

    rounds = args.rounds or (3 if args.quick else None)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f'output_dir="{tmp}"'] + ([f"federation.rounds={rounds}"] if rounds else [])
        cfg = load_config(args.config, overrides)
        t0 = time.perf_counter()
        result = fedcomp.run(cfg, progress=False)
        fed_total = time.perf_counter() - t0
        summary = json.loads((result.run_dir / "summary.json").read_text())
    fed_rounds = [r["wall_s"] for r in result.rows]
    fed_s = sum(fed_rounds)
    clients = [r["clients"] for r in result.rows]
    plain_s, plain_acc, plain_rounds = plain_loop(cfg, clients)

    warmup = float(summary.get("warmup_s", 0.0))
    figures = {
        "rounds": len(fed_rounds),
        "clients_per_round": len(clients[0]) if clients else 0,
        "plain_s": round(plain_s, 3),
        "fedcomp_s": round(fed_s, 3),
        "ratio": round(plain_s / fed_s, 3) if fed_s > 0 else None,
        "engine_warmup_s": round(warmup, 3),
        "engine_fixed_s": round(fed_total - fed_s, 3),
        "plain_final_accuracy": plain_acc,
        "fedcomp_final_accuracy": result.final_accuracy,
    }
    print(f"simulation overhead: {cfg.model.name} on {cfg.data.dataset}, {cfg.federation.num_clients} clients, "
          f"{figures['clients_per_round']} per round, {len(fed_rounds)} rounds, {torch.get_num_threads()} torch threads")  # fmt: skip
    print(f"{'':24}{'plain loop':>12}{'fedcomp':>12}")
    for i, (a, b) in enumerate(zip(plain_rounds, fed_rounds, strict=True), start=1):
        print(f"{'round ' + str(i) + ' (s)':24}{a:12.3f}{b:12.3f}")
    print(f"{'all rounds (s)':24}{plain_s:12.3f}{fed_s:12.3f}")
    print(f"{'final test accuracy':24}{plain_acc:12.4f}{result.final_accuracy or 0:12.4f}")
    print(
        f"{'engine fixed cost (s)':24}{'':>12}{fed_total - fed_s:12.3f}   (Ray start, worker warm-up {warmup:.1f} s, shutdown)"
    )
    print(f"ratio plain/fedcomp over the rounds: {figures['ratio']}   (goal >= 0.9)")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
