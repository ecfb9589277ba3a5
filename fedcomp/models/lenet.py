"""LeNet-5-Caffe, the MNIST model of the SuRP paper (and of most pruning work).

conv 5×5×20 → max-pool 2 → conv 5×5×50 → max-pool 2 → FC 800→500 → ReLU →
FC 500→10. On 28×28 inputs: 520 + 25,050 + 400,500 + 5,010 = 431,080
parameters. Caffe's version has no activation after the convolutions.

``width`` (``[model.params] width = 0.6``) scales the 20 and 50 channels and the 500 hidden units
(rounded, at least 1 each): the same architecture, smaller, trained dense from round 1. It is the
baseline a compressor that shrinks the model must beat ("train the small model instead");
:func:`fedcomp.models.matching_width` finds the width with a given parameter count.
"""

from __future__ import annotations

import torch
from torch import nn

from fedcomp.models.base import MODELS, checked_width


class LeNet5Caffe(nn.Module):
    def __init__(
        self, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, width: float = 1.0
    ) -> None:
        super().__init__()
        width = checked_width(width)
        c, h, w = input_shape
        c1, c2, hidden = (max(1, round(n * width)) for n in (20, 50, 500))
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, kernel_size=5),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=5),
            nn.MaxPool2d(2),
        )
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if fh < 1 or fw < 1:
            raise ValueError(f"LeNet-5-Caffe needs inputs of at least 16×16, got {h}×{w}")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * fh * fw, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("lenet5_caffe", "LeNet-5-Caffe (SuRP paper): 431,080 parameters on MNIST")
def lenet5_caffe(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> nn.Module:
    return LeNet5Caffe(input_shape, num_classes, width)
