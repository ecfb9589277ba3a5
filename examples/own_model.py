"""Your own model, defined in this script: federated training of a small CNN with SuRP-compressed updates.

    python examples/own_model.py [--rounds 5] [--output-dir runs]

The model class is passed to fedcomp as it is; fedcomp records it as
``"<this file>:TinyCNN"`` and every Ray worker imports it from this file
(the ``if __name__ == "__main__"`` block below does not run there).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import fedcomp


class TinyCNN(nn.Module):
    """Takes ``num_classes`` (and could take ``input_shape``): fedcomp passes what the factory asks for."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )  # fmt: skip
        self.head = nn.Linear(2 * width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output-dir", default="runs")
    args = parser.parse_args()
    result = fedcomp.run(
        {
            "name": "own-model",
            "output_dir": args.output_dir,
            "model": {"name": TinyCNN, "params": {"width": 8}},  # the class itself, with its own arguments
            "federation": {"num_clients": 3, "rounds": args.rounds},
            "client": {"local_steps": 20, "lr": 0.1},
            "uplink": {"name": "surp", "density": 0.1},
        }
    )
    print(f"final accuracy {result.final_accuracy:.3f}; run directory {result.run_dir}")


if __name__ == "__main__":
    main()
