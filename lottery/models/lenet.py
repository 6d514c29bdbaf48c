"""LeNet-300-100 (Frankle & Carbin 2019): a 784-300-100-10 ReLU MLP for MNIST-shaped inputs."""

from __future__ import annotations

import math

import torch
from torch import nn

from lottery.models.registry import register


class LeNet(nn.Module):
    """Fully connected ReLU network; `layers` are the hidden layers and `head` the output layer."""

    output_layer = "head"

    def __init__(self, hidden: tuple[int, ...] = (300, 100), in_features: int = 784, num_classes: int = 10):
        super().__init__()
        widths = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


@register("lenet_300_100")
def lenet_300_100(input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10) -> LeNet:
    return LeNet((300, 100), math.prod(input_shape), num_classes)
