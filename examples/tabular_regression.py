"""Tabular float data and regression: your own loader, model, loss and test metric; top-k updates.

The metric is measured on the server's test set and, with ``federation.evaluate_on = "both"``, by every
client on the share of its own data it holds out (``data.client_test_fraction``).

    python examples/tabular_regression.py [--rounds 5] [--output-dir runs]

The loader makes a synthetic regression problem (y = x·w + noise, 20
features); any function returning ``{"train": (x, y), "test": (x, y)}``
works the same way, e.g. one reading your CSV files.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

import fedcomp


def make_data(n: int = 2000, features: int = 20, noise: float = 0.1, seed: int = 0) -> dict:
    """Float features and float targets: fedcomp trains with MSE and reports the test loss (no accuracy)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=features)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (x @ w + noise * rng.normal(size=n)).astype(np.float32)
    cut = int(0.8 * n)
    return {"train": (x[:cut], y[:cut]), "test": (x[cut:], y[cut:])}


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Your own loss (``client.loss``; fedcomp trains and tests with it): here the squared error written out.

    Put any differentiable ``(outputs, targets) -> scalar`` here (a Huber loss trains far slower on these
    targets, which are about 4.5 wide: its gradient is clipped at 1).
    """
    return (outputs.squeeze(1) - targets).pow(2).mean()


def mean_abs_error(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Your own test metric (``client.eval_metric``): recorded as ``test_mean_abs_error`` every round."""
    return float((outputs.squeeze(1) - targets).abs().mean())


def Regressor(input_shape: tuple[int, ...], hidden: int = 32) -> nn.Module:  # noqa: N802 - a model factory
    return nn.Sequential(nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, 1))


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
            "name": "tabular-regression",
            "output_dir": args.output_dir,
            "simulation": {"backend": args.backend},
            "data": {"dataset": make_data, "params": {"features": 20}},
            "model": {"name": Regressor},
            # The server tests on its held-out set, and each client on a fifth of its own data held out.
            "federation": {"num_clients": 4, "rounds": args.rounds, "evaluate_on": "both"},
            "client": {
                "local_epochs": 1,
                "lr": 0.02,
                "batch_size": 32,
                "loss": squared_error,
                "eval_metric": mean_abs_error,
            },
            "uplink": {"name": "topk", "density": 0.25},
        }
    )
    errors = [round(r["server_metrics"]["test_mean_abs_error"], 3) for r in result.rows]
    on_clients = [round(r["federated_eval"]["test_mean_abs_error"], 3) for r in result.rows]
    print(f"test mean absolute error by round: {errors} (server), {on_clients} (clients' own data)")
    print(f"run directory {result.run_dir}")


if __name__ == "__main__":
    main()
