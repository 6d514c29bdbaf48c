"""Linear mode connectivity (Frankle, Dziugaite, Roy & Carbin, ICML 2020): the error along the straight line
between two trained networks, and its error barrier.

    θ(α) = (1 − α) θ_A + α θ_B,  α = 0, 1/(n−1), ..., 1         (mask applied at every point)
    barrier = max_α E(θ(α)) − ½ (E(θ_A) + E(θ_B))                (the paper's instability)

Pure functions on modules, state dicts and tensors; no config. BatchNorm: the running statistics of an
interpolated network are not the interpolation of the endpoints' statistics, so for a model with BatchNorm the
statistics are recomputed at every point of the path, endpoints included (one pass over the given batches in
train mode, cumulative average), as the paper does; the endpoints then reproduce their own trained networks'
errors after the same recomputation. A model without BatchNorm is evaluated as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = Mapping[str, Tensor]
Batches = Iterable[tuple[Tensor, Tensor]]


def interpolate(a: State, b: State, alpha: float, mask: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """(1 − alpha)·a + alpha·b for every floating tensor, with `mask`'s pruned entries exactly zero.

    alpha = 0 and 1 return exact copies of a and b (masked); integer tensors (BatchNorm's counters) are a's."""
    if a.keys() != b.keys():
        raise ValueError(f"the two states differ in keys: {sorted(set(a) ^ set(b))[:3]}")
    out = {}
    for name, ta in a.items():
        tb = b[name]
        if ta.shape != tb.shape:
            raise ValueError(f"{name}: shapes {tuple(ta.shape)} and {tuple(tb.shape)} differ")
        if not ta.is_floating_point():
            out[name] = ta.clone()
        elif alpha == 0:
            out[name] = ta.clone()
        elif alpha == 1:
            out[name] = tb.clone()
        else:
            out[name] = torch.lerp(ta, tb.to(ta.dtype), float(alpha))
    for name, keep in (mask or {}).items():
        out[name] = out[name] * keep.to(out[name].device, out[name].dtype)
    return out


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Batches) -> None:
    """Replace every BatchNorm's running statistics by the exact mean/variance over `batches` (train-mode
    forward passes, cumulative average), then leave the model in eval mode. No-op without BatchNorm."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch counts equally
        model.train()
        device = next(model.parameters()).device
        for x, _ in batches:
            model(x.to(device))
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches) -> tuple[float, float]:
    """(error, mean cross-entropy loss) of `model` in eval mode over `batches`."""
    model.eval()
    device = next(model.parameters()).device
    wrong, loss, count = 0, 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        wrong += int((logits.argmax(-1) != y).sum())
        loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        count += len(y)
    if count == 0:
        raise ValueError("no evaluation examples")
    return wrong / count, loss / count


@dataclass
class InterpolationPath:
    """The error (and loss) at `points` evenly spaced points of the line from network A (α=0) to B (α=1)."""

    alphas: list[float]
    errors: list[float]
    losses: list[float]
    batchnorm_recomputed: bool

    @property
    def barrier(self) -> float:
        return error_barrier(self.errors)


def error_barrier(errors: list[float]) -> float:
    """The paper's instability: the largest error on the path minus the mean of the two endpoints' errors."""
    if len(errors) < 2:
        raise ValueError(f"a path needs at least 2 points, got {len(errors)}")
    return max(errors) - (errors[0] + errors[-1]) / 2


def linear_path(model: nn.Module, a: State, b: State, points: int, eval_batches: Batches,
                mask: Mapping[str, Tensor] | None = None, bn_batches: Batches | None = None) -> InterpolationPath:
    """Evaluate `model` (its structure; its weights are overwritten) at `points` points between states a and b.

    `eval_batches` (re-iterable, e.g. a list) gives the error; for a model with BatchNorm `bn_batches` (training
    data) recomputes the running statistics at each point."""
    if points < 2:
        raise ValueError(f"points={points}: a path needs at least 2 points (its two endpoints)")
    recompute = has_batchnorm(model)
    if recompute and bn_batches is None:
        raise ValueError("the model has BatchNorm: give bn_batches to recompute its statistics along the path")
    alphas = [i / (points - 1) for i in range(points)]
    errors, losses = [], []
    for alpha in alphas:
        model.load_state_dict(interpolate(a, b, alpha, mask))
        if recompute:
            recompute_batchnorm(model, bn_batches)
        error, loss = evaluate(model, eval_batches)
        errors.append(error)
        losses.append(loss)
    return InterpolationPath(alphas, errors, losses, recompute)
