"""VGG-16 for CIFAR-10 as in Frankle et al. 2020 (Linear Mode Connectivity), after open_lth's layout.

13 3x3 convs (each followed by BatchNorm and ReLU) with four 2x2 max-pools; the final 2x2 map of 512
channels is average-pooled to one vector and fed to a single linear `head`. 14.7M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lottery.models.registry import register

# 'M' is a 2x2 max-pool; there is no pool after the last stage (the global average pool replaces it).
VGG16_PLAN: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                     512, 512, 512, "M", 512, 512, 512)


class VGG(nn.Module):
    """Conv-BN-ReLU stack (`convs`, `bns`) with max-pools after the convs listed in `pool_after`, then `head`."""

    output_layer = "head"

    def __init__(self, plan: tuple[int | str, ...] = VGG16_PLAN, input_shape: tuple[int, ...] = (3, 32, 32),
                 num_classes: int = 10):
        super().__init__()
        convs, bns, pools = [], [], []
        channels = input_shape[0]
        for entry in plan:
            if entry == "M":
                pools.append(len(convs) - 1)
                continue
            convs.append(nn.Conv2d(channels, int(entry), 3, padding=1))
            bns.append(nn.BatchNorm2d(int(entry)))
            channels = int(entry)
        self.convs = nn.ModuleList(convs)
        self.bns = nn.ModuleList(bns)
        self.pool_after = frozenset(pools)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            x = torch.relu(bn(conv(x)))
            if i in self.pool_after:
                x = F.max_pool2d(x, 2)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("vgg16")
def vgg16(input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10) -> VGG:
    """VGG-16: 64,64,M,128,128,M,256x3,M,512x3,M,512x3, global average pool, linear head (14,728,266 params)."""
    return VGG(VGG16_PLAN, input_shape, num_classes)
