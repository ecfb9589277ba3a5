"""torchvision's ResNet-18, adapted to 32×32 inputs.

The usual CIFAR adaptation: the 7×7 stride-2 stem becomes a 3×3 stride-1
convolution and the stem's max-pool is removed, so a 32×32 image still has
4×4 features before pooling; the classifier has ``num_classes`` outputs.
"""

from __future__ import annotations

from torch import nn

from fedcomp.models.base import MODELS


@MODELS.register("resnet18", "torchvision ResNet-18 adapted to 32×32 inputs (3×3 stem, no max-pool)")
def resnet18(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
