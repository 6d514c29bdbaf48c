"""Conv-2/4/6 (Frankle & Carbin 2019, CIFAR-10): VGG-like 3x3 conv pairs, then a 256-256 ReLU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lottery.models.registry import register


class ConvNet(nn.Module):
    """3x3 convs (padding 1, ReLU) with a 2x2 max-pool after every pair, then `fcs` (ReLU) and `head`.

    Widths are constructor arguments (not derived from a name) so that `compact` can rebuild a
    narrower copy with the same forward pass.
    """

    output_layer = "head"

    def __init__(self, filters: tuple[int, ...], hidden: tuple[int, ...] = (256, 256),
                 input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10):
        super().__init__()
        if len(filters) % 2:
            raise ValueError(f"ConvNet needs conv layers in pairs, got filters={filters}")
        channels, height, width = input_shape
        widths = [channels, *filters]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        pools = len(filters) // 2
        flat = filters[-1] * (height >> pools) * (width >> pools)
        dims = [flat, *hidden]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if i % 2 == 1:
                x = F.max_pool2d(x, 2)
        x = x.flatten(1)
        for fc in self.fcs:
            x = torch.relu(fc(x))
        return self.head(x)


@register("conv2")
def conv2(input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10) -> ConvNet:
    """Conv-2: 64, 64, pool; 256, 256, num_classes (4.3M parameters on CIFAR-10)."""
    return ConvNet((64, 64), (256, 256), input_shape, num_classes)


@register("conv4")
def conv4(input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10) -> ConvNet:
    """Conv-4: 64, 64, pool, 128, 128, pool; 256, 256, num_classes (2.4M parameters on CIFAR-10)."""
    return ConvNet((64, 64, 128, 128), (256, 256), input_shape, num_classes)


@register("conv6")
def conv6(input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10) -> ConvNet:
    """Conv-6: 64, 64, pool, 128, 128, pool, 256, 256, pool; 256, 256, num_classes (2.26M parameters)."""
    return ConvNet((64, 64, 128, 128, 256, 256), (256, 256), input_shape, num_classes)
