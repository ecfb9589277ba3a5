"""LeNet-5-Caffe, the MNIST model of the SuRP paper (and of most pruning work).

conv 5×5×20 → max-pool 2 → conv 5×5×50 → max-pool 2 → FC 800→500 → ReLU →
FC 500→10. On 28×28 inputs: 520 + 25,050 + 400,500 + 5,010 = 431,080
parameters. Caffe's version has no activation after the convolutions.
"""

from __future__ import annotations

import torch
from torch import nn

from fedcomp.models.base import MODELS


class LeNet5Caffe(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 20, kernel_size=5),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.MaxPool2d(2),
        )
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if fh < 1 or fw < 1:
            raise ValueError(f"LeNet-5-Caffe needs inputs of at least 16×16, got {h}×{w}")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(50 * fh * fw, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("lenet5_caffe", "LeNet-5-Caffe (SuRP paper): 431,080 parameters on MNIST")
def lenet5_caffe(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return LeNet5Caffe(input_shape, num_classes)
