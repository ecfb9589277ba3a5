"""ResNet-20 and ResNet-56 for CIFAR (He et al. 2016, section 4.2).

Three stages of 16, 32 and 64 channels with n basic blocks each (depth
6n + 2), global average pooling and one linear layer. Shortcuts are option
A: identity, with stride-2 subsampling and zero-padded extra channels where
the shape changes, so shortcuts have no parameters (ResNet-20: 0.27 M).

``width`` (``[model.params] width = 0.5``) scales the 16, 32 and 64 channels (rounded, at least 1
each): the same network, narrower, trained dense from round 1 — the baseline a compressor that
shrinks the model must beat; :func:`fedcomp.models.matching_width` finds the width with a given
parameter count. The shortcuts pad whatever the stage widths become.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedcomp.models.base import MODELS, checked_width


class PadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the new channels."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

        self.in_planes = in_planes

    def channel_sources(self) -> list[int]:
        """For each output channel, the input channel it copies (−1: a zero channel); channel pruning remaps it."""
        return [
            c - self.pad // 2 if 0 <= c - self.pad // 2 < self.in_planes else -1
            for c in range(self.in_planes + self.pad)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            PadShortcut(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self, depth: int, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10, width: float = 1.0
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        c1, c2, c3 = (max(1, round(c * checked_width(width))) for c in (16, 32, 64))
        self.conv1 = nn.Conv2d(input_shape[0], c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        layers, in_planes = [], c1
        for planes, stride in ((c1, 1), (c2, 2), (c3, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(c3, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@MODELS.register("resnet20", "ResNet-20 for CIFAR (He et al. 2016, option A): 0.27 M parameters")
def resnet20(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> nn.Module:
    return CifarResNet(20, input_shape, num_classes, width)


@MODELS.register("resnet56", "ResNet-56 for CIFAR (He et al. 2016, option A): 0.85 M parameters")
def resnet56(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> nn.Module:
    return CifarResNet(56, input_shape, num_classes, width)
