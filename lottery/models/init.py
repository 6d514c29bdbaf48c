"""Seeded weight initialisation schemes."""

from __future__ import annotations

import math

import torch
from torch import nn

from lottery.errors import ConfigError

INITS = ("glorot_normal", "kaiming_normal")


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


@torch.no_grad()
def initialize(model: nn.Module, scheme: str, generator: torch.Generator) -> None:
    """Initialise Linear/Conv weights with `scheme`, biases with zeros, norms with (1, 0).

    glorot_normal is N(0, 2 / (fan_in + fan_out)), as in Frankle & Carbin 2019;
    kaiming_normal is N(0, 2 / fan_in), as in open_lth's CIFAR models.
    """
    if scheme not in INITS:
        raise ConfigError(f"model.init={scheme!r} is unknown; choose one of {', '.join(INITS)}")
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            fan_in, fan_out = _fans(module.weight)
            var = 2.0 / (fan_in + fan_out) if scheme == "glorot_normal" else 2.0 / fan_in
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * math.sqrt(var))
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
            if module.weight is not None:
                module.weight.fill_(1.0)
                module.bias.zero_()
