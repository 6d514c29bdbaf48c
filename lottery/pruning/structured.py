"""Structured IMP patterns: whole units (neurons, conv filters, input channels) by Ln norm, and N:M groups.

Both keep the IMP contract of magnitude.py: the new mask is computed from the trained weights and the previous
mask, targets are set per level with `kept_count`, and the result is nested in the previous mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from lottery.pruning.magnitude import kept_count
from lottery.pruning.mask import Mask
from lottery.pruning.nm import nm_mask

__all__ = ["PATTERNS", "NORMS", "structured_prune", "nm_prune", "unit_dim"]

# Each unit pattern and the weight dimension whose slices are its units (0: rows/filters, 1: input columns).
PATTERNS: dict[str, int] = {"neurons": 0, "filters": 0, "channels": 1}
NORMS = ("l1", "l2")


def unit_dim(name: str, shape: torch.Size, pattern: str) -> int:
    """The weight dimension whose slices are the units of `pattern` (0: rows/filters, 1: input columns/channels).

    Linear weights are [out, in], conv weights [out, in, *kernel]. "neurons" and "filters" both mean dim 0 (so
    one pattern covers a conv net's conv and fc layers); "channels" means dim 1, a Linear layer's input columns.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pruning pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    if len(shape) < 2:
        raise ValueError(f"{name}: pattern {pattern!r} needs a Linear or conv weight, got shape {tuple(shape)}")
    return PATTERNS[pattern]


def _unit_scores(weight: Tensor, mask: Tensor, dim: int, norm: str, score: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
    """Ln norm of each unit's kept weights (or, given per-weight `score`s, their sum over the unit's kept
    weights), and which units are alive (any weight kept)."""
    alive = mask.transpose(0, dim).reshape(weight.shape[dim], -1).any(dim=1)
    if score is not None:
        # where, not `* mask`: a score of −inf (SynFlow's pruned-in-an-earlier-round) times 0 would be NaN
        s = torch.where(mask, score.detach().cpu().double(), 0.0).transpose(0, dim).reshape(weight.shape[dim], -1)
        return s.sum(dim=1), alive
    w = (weight.detach().cpu().double() * mask).transpose(0, dim).reshape(weight.shape[dim], -1)
    scores = w.abs().sum(dim=1) if norm == "l1" else w.pow(2).sum(dim=1).sqrt()
    return scores, alive


@torch.no_grad()
def structured_prune(weights: Mapping[str, Tensor], mask: Mask, level: float, rates: Mapping[str, float],
                     pattern: str, norm: str = "l1", scores: Mapping[str, Tensor] | None = None) -> Mask:
    """The level-`level` mask that removes whole units of each layer in `rates`.

    A layer keeps the `kept_count(units, rate, level)` alive units with the largest `norm` ("l1" or "l2") of
    their kept weights; ties go to the lower index. Removed units become all False, kept units keep their
    previous element mask. Layers absent from `rates` keep their mask. With per-weight `scores` (pruning.score
    other than magnitude) a unit's score is the sum of its kept weights' scores instead. For a grouped conv, dim 1 indexes the
    inputs within a group, so "channels" then prunes that index in every group.
    """
    if norm not in NORMS:
        raise ValueError(f"structured pruning norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if pattern not in PATTERNS:
        raise ValueError(f"pruning pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    new = dict(mask.items())
    for name, rate in rates.items():
        old = mask[name]
        dim = unit_dim(name, old.shape, pattern)
        unit, alive = _unit_scores(weights[name], old, dim, norm, None if scores is None else scores[name])
        k = kept_count(old.shape[dim], rate, level)
        ranked = torch.where(alive, unit, torch.tensor(float("-inf"), dtype=unit.dtype))
        keep_units = torch.zeros_like(alive)
        keep_units[torch.argsort(ranked, descending=True, stable=True)[:k]] = True
        view = [1] * old.dim()
        view[dim] = -1
        # `old &`: with fewer alive units than k some dead ones rank in the top k; they must stay dead.
        new[name] = old & keep_units.view(view)
    return Mask(new)


@torch.no_grad()
def nm_prune(weights: Mapping[str, Tensor], mask: Mask, rates_or_names: Mapping[str, float] | Iterable[str],
             n: int, m: int, scores: Mapping[str, Tensor] | None = None) -> Mask:
    """The N:M mask of each named layer: in every group of `m` inputs keep the `n` largest kept |w| (or the
    `n` highest per-weight `scores`, when given).

    Groups run along the flattened input dimension (in·kh·kw, contiguous in memory, as cuSPARSELt expects).
    Already-pruned weights never return, so applying it to an N:M mask changes nothing. Only the keys of a
    rates mapping are used: the N:M pattern fixes the sparsity. Layers not named keep their mask.
    """
    if not 1 <= n <= m:
        raise ValueError(f"N:M pruning needs 1 <= n <= m, got n={n}, m={m}")
    new = dict(mask.items())
    for name in rates_or_names:
        old = mask[name]
        if old.dim() < 2 or old[0].numel() % m != 0:
            raise ValueError(f"{name}: N:M pruning needs an input size divisible by m={m}, but weight shape "
                             f"{tuple(old.shape)} has {old[0].numel() if old.dim() >= 2 else 'no'} inputs per row")
        source = weights[name].abs() if scores is None else scores[name]
        w = source.detach().cpu().double().reshape(old.shape[0], -1)
        score = torch.where(old.reshape(old.shape[0], -1), w, torch.tensor(float("-inf"), dtype=w.dtype))
        new[name] = nm_mask(score, n, m).view_as(old) & old
    return Mask(new)
