"""Models, looked up by name: ``MODELS.get(name)(input_shape, num_classes)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fedcomp.registry import Registry

ModelFactory = Callable[[tuple[int, int, int], int], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A fresh model of the registered architecture ``name``."""
    return MODELS.get(name)(input_shape, num_classes)


from fedcomp.models import lenet, mlp, resnet18, resnet_cifar, vgg  # noqa: E402,F401  (register)
