"""Magnitude pruning of a mask, layerwise (a rate per layer) or global (one threshold over a pool of layers).

Targets are set by level, not by round: after L rounds at rate p a layer keeps round(n·(1−p)^L) weights,
so rounding never accumulates and the remaining fraction is (1−p)^L within half a weight.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

import torch

from lottery.pruning.mask import Mask


def kept_count(size: int, rate: float, level: float) -> int:
    """How many of `size` weights survive `level` rounds that each remove `rate` of the remainder."""
    return int(round(size * (1.0 - rate) ** level))


def _keep_top(scores: torch.Tensor, current: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest-scoring weights among those `current` keeps; ties go to the lower index.

    The same set as the first k of a stable descending argsort, found in linear time (a k-th value threshold,
    then the lowest-indexed ties): SynFlow allocates a hundred times per level.
    """
    flat = torch.where(current.flatten(), scores.flatten().float(), torch.tensor(float("-inf")))
    n = flat.numel()
    if k >= n:
        return current.clone()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        threshold = torch.kthvalue(flat, n - k + 1).values
        keep = flat > threshold
        ties = (flat == threshold).nonzero().flatten()
        keep[ties[: k - int(keep.sum())]] = True
    return keep.view_as(current) & current


def resolve_rates(names: list[str], strategy: str, rate: float, output_name: str, output_rate: float | None,
                  layer_rates: Mapping[str, float], exclude: list[str]) -> dict[str, float | None]:
    """Per-layer rate, or None for a layer in the global pool; excluded layers are left out entirely.

    With strategy "layerwise" every layer gets `rate` unless `output_rate` or `layer_rates` say otherwise;
    with "global" those layers form one pool. `layer_rates` and `exclude` match parameter or module
    names, with glob patterns.
    """

    def matches(name: str, pattern: str) -> bool:
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.removesuffix(".weight"), pattern)

    rates: dict[str, float | None] = {}
    for name in names:
        if any(matches(name, p) for p in exclude):
            continue
        explicit = [r for p, r in layer_rates.items() if matches(name, p)]
        if explicit:
            rates[name] = explicit[-1]
        elif name == output_name and output_rate is not None:
            rates[name] = output_rate
        else:
            rates[name] = rate if strategy == "layerwise" else None
    return rates


@torch.no_grad()
def score_prune(scores: Mapping[str, torch.Tensor], mask: Mask, level: float, rates: Mapping[str, float | None],
                global_rate: float) -> Mask:
    """The level-`level` mask that keeps the highest `scores` (any per-weight score; higher = more important).

    Layers with a rate are pruned on their own; layers whose rate is None share one global threshold at
    `global_rate`. Layers absent from `rates` keep their mask. `level` may be fractional (SynFlow's rounds
    step through the levels on the way to the target).
    """
    new = dict(mask.items())
    for name, rate in rates.items():
        if rate is not None:
            k = kept_count(mask[name].numel(), rate, level)
            new[name] = _keep_top(scores[name].cpu(), mask[name], k)
    pool = [name for name, rate in rates.items() if rate is None]
    if pool:
        flat = torch.cat([scores[n].cpu().float().flatten() for n in pool])
        current = torch.cat([mask[n].flatten() for n in pool])
        keep = _keep_top(flat, current, kept_count(current.numel(), global_rate, level))
        for name, part in zip(pool, keep.split([mask[n].numel() for n in pool]), strict=True):
            new[name] = part.view_as(mask[name])
    return Mask(new)


@torch.no_grad()
def magnitude_prune(weights: Mapping[str, torch.Tensor], mask: Mask, level: int, rates: Mapping[str, float | None],
                    global_rate: float) -> Mask:
    """The level-`level` mask from trained `weights` and the previous level's `mask`: `score_prune` by |w|."""
    return score_prune({name: weights[name].abs() for name in rates}, mask, level, rates, global_rate)
