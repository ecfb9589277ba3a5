"""A small MLP: the "2NN" of McMahan et al. (2017), two hidden layers of 200."""

from __future__ import annotations

import math

from torch import nn

from fedcomp.models.base import MODELS


@MODELS.register("mlp", "MLP with two hidden layers of 200 (McMahan et al. 2NN)")
def mlp(input_shape: tuple[int, int, int], num_classes: int, hidden: int = 200) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )
