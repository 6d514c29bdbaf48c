"""The one registry of one-shot pruning methods: names, what each needs, and where its layer solver lives.

Torch-free at import (config validation reads ``METHODS`` before anything heavy loads); the solver is
imported when a model is pruned. A solver is ``f(W, stats, sparsity, opts) -> (W_new, keep_mask)`` with W
[d_out, d_in], ``stats`` the layer's InputStats (None without calibration) and ``opts`` the driver's options
(n, m, per_row, blocksize, percdamp). Adding a method is one entry here plus its solver.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OneShotMethod:
    name: str
    solver: str  # "module:function"
    needs_calibration: bool  # False: calibration only feeds the reported reconstruction error
    needs_gram: bool  # the full Gram matrix H = 2/N X X^T, not only the per-column norms

    def load(self) -> Callable[..., Any]:
        module, _, function = self.solver.partition(":")
        return getattr(importlib.import_module(module), function)


REGISTRY: dict[str, OneShotMethod] = {m.name: m for m in (
    OneShotMethod("magnitude", "lottery.llm.solvers:magnitude_layer", needs_calibration=False, needs_gram=False),
    OneShotMethod("wanda", "lottery.llm.solvers:wanda_layer", needs_calibration=True, needs_gram=False),
    OneShotMethod("sparsegpt", "lottery.llm.solvers:sparsegpt_layer", needs_calibration=True, needs_gram=True),
)}
METHODS: tuple[str, ...] = tuple(REGISTRY)


def get_method(name: str) -> OneShotMethod:
    """The registered method ``name``; ValueError listing the allowed names otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown pruning method {name!r}; choose one of {METHODS}")
    return REGISTRY[name]
