"""VGG-16 with BatchNorm for CIFAR (32×32 inputs).

The thirteen 3×3 conv–BN–ReLU layers of VGG-16 (Simonyan & Zisserman 2015,
configuration D) with five max-pools, then the one-linear-layer classifier
that CIFAR pruning work uses (512 → classes) instead of ImageNet's three
4096-wide layers.
"""

from __future__ import annotations

import torch
from torch import nn

from fedcomp.models.base import MODELS

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGGCifar(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = input_shape[0]
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(c, int(v), 3, padding=1, bias=False),
                    nn.BatchNorm2d(int(v)),
                    nn.ReLU(inplace=True),
                ]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@MODELS.register("vgg16_bn", "VGG-16 with BatchNorm for CIFAR (512→classes classifier)")
def vgg16_bn(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return VGGCifar(input_shape, num_classes)
