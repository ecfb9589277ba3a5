"""Your own training loop: AdamW with gradient clipping and label smoothing, as fedcomp's ``client.train_fn``.

    python examples/custom_training.py [--rounds 5] [--output-dir runs]

fedcomp calls ``train(model, data, config, device=, generator=, loss_term=,
loss=, server_round=)`` on every client each round. ``data.batches`` gives
normalized (x, y) batches in the round's seeded order; ``loss_term`` is
what a model compressor adds to the loss (LC's penalty, BWCP's
regularizer), None otherwise; ``config`` is ``[client]`` with this round's
learning rate (``lr_schedule``). Return the metrics to record.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import fedcomp


def train(model, data, config, *, device, generator, loss_term, loss, server_round) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    model.train()
    total, steps = 0.0, 0
    for x, y in data.batches(config.batch_size, generator, device):
        opt.zero_grad()
        value = F.cross_entropy(model(x), y, label_smoothing=0.1)
        (value + loss_term(model) if loss_term is not None else value).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        total, steps = total + float(value), steps + 1
    return {"train_loss": total / max(steps, 1), "local_steps": steps, "lr": config.lr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output-dir", default="runs")
    parser.add_argument(
        "--backend",
        choices=["ray", "in-process"],
        default="ray",
        help="where the clients run: Ray's workers, or this process (starts at once; breakpoints work)",
    )
    args = parser.parse_args()
    result = fedcomp.run(
        {
            "name": "custom-training",
            "output_dir": args.output_dir,
            "simulation": {"backend": args.backend},
            "federation": {"num_clients": 3, "rounds": args.rounds},
            "client": {"train_fn": train, "lr": 0.002, "lr_schedule": "cosine"},
            "uplink": {"name": "rtopk", "density": 0.05},
        }
    )
    print(f"final accuracy {result.final_accuracy:.3f}; run directory {result.run_dir}")


if __name__ == "__main__":
    main()
