"""Models, looked up by name: ``MODELS.get(name)(input_shape, num_classes)``.

To add one: a module here with a factory decorated with ``@MODELS.register(name)`` (the registry
lives in :mod:`.base`), imported below.
"""

from fedcomp.models import lenet, lstm, mlp, resnet18, resnet_cifar, vgg  # noqa: F401  (register)
from fedcomp.models.base import MODELS, ModelFactory, build_model, initial_model, matching_width

__all__ = ["MODELS", "ModelFactory", "build_model", "initial_model", "matching_width"]
