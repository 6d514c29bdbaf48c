"""A name -> constructor registry for vision models, with `create_model` as the front door."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lottery.errors import ConfigError
from lottery.models.init import initialize

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a model constructor available to `create_model` under `name`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = fn
        return fn

    return wrap


def create_model(name: str, seed: int, init: str = "glorot_normal", **kwargs) -> nn.Module:
    """Build model `name` and initialise it deterministically from `seed`.

    The seed drives a private generator, so the init does not depend on (or disturb) the global RNG.
    """
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is unknown; choose one of {', '.join(sorted(MODELS))}")
    model = MODELS[name](**kwargs)
    initialize(model, init, torch.Generator().manual_seed(seed))
    return model


def prunable_names(model: nn.Module) -> list[str]:
    """Names of the weights IMP may prune: every Linear and Conv weight (never biases or norms)."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            names.append(f"{module_name}.weight" if module_name else "weight")
    return names


def output_layer_name(model: nn.Module) -> str:
    """The weight of the model's output layer: its declared `output_layer`, else the last prunable weight."""
    declared = getattr(model, "output_layer", None)
    return f"{declared}.weight" if declared else prunable_names(model)[-1]
