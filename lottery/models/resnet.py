"""ResNet-20 for CIFAR-10 (He et al. 2016), the variant used by Frankle et al. 2020 (Linear Mode Connectivity).

Three stages of three basic blocks at widths 16/32/64; a block's shortcut is a 1x1 conv + BatchNorm when it
changes the width or resolution (option B), the identity otherwise. About 272K parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lottery.models.registry import register


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        # Convs carry no bias: the BatchNorm that follows would cancel it.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    """CIFAR ResNet: stem `conv` + `bn`, `blocks` in stages of doubling width, global average pool, `head`."""

    output_layer = "head"

    def __init__(self, depth: int = 20, widths: tuple[int, ...] = (16, 32, 64),
                 input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        per_stage = (depth - 2) // 6
        self.conv = nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        blocks = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for i in range(per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("resnet20")
def resnet20(input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10) -> ResNet:
    """ResNet-20: 3 stages x 3 basic blocks, widths 16/32/64 (272,474 parameters on CIFAR-10)."""
    return ResNet(20, (16, 32, 64), input_shape, num_classes)
