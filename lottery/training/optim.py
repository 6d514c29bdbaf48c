"""The optimizer and learning-rate schedule of an IMP level: one builder for every training engine.

The Trainer's `MaskedClassifier`, the Fabric loop (`fast.py`) and the vmapped replicates (`replicates.py`) all
build their optimizer and lr factor here, so the three engines run the same update math. `OPTIMIZERS` is the
one list of optimizers: validation (`training.optimizer`) reads its keys, and a new one is one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

Builder = Callable[..., torch.optim.Optimizer]


def _adam(params: Iterable[Any], lr: float, momentum: float, weight_decay: float, foreach: bool | None,
          capturable: bool, fused: bool | None) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=foreach, capturable=capturable,
                            fused=fused)


def _sgd(params: Iterable[Any], lr: float, momentum: float, weight_decay: float, foreach: bool | None,
         capturable: bool, fused: bool | None) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach,
                           fused=fused)


OPTIMIZERS: dict[str, Builder] = {"adam": _adam, "sgd": _sgd}


def make_optimizer(params: Iterable[Any], name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                   foreach: bool | None = None, capturable: bool = False, fused: bool | None = None
                   ) -> torch.optim.Optimizer:
    """The level's optimizer (`training.optimizer`). `foreach`/`capturable`/`fused` are torch's options
    (None/False/None are its defaults); capturable Adam keeps its step count on the device, as a CUDA graph
    needs; fused runs the whole update as one kernel."""
    if name not in OPTIMIZERS:
        raise ValueError(f"training.optimizer={name!r} is unknown; choose {' or '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr, momentum, weight_decay, foreach, capturable, fused)


def lr_factor(step: int, start_step: int, milestones: Sequence[int], gamma: float) -> float:
    """The lr multiplier after `step` steps of a level that starts at absolute iteration `start_step`:
    gamma ** (number of milestones, absolute iterations, reached by start_step + step)."""
    return gamma ** sum(start_step + step >= m for m in milestones)
