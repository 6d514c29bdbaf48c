"""The next level's mask from the trained weights: one registry of pruning patterns.

`PATTERNS` maps each named pattern to the function that computes its mask; validation (`pruning.pattern`)
reads its keys, and a new pattern is one entry. "N:M" patterns (e.g. "2:4") are parsed, not listed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from lottery.pruning import Mask, magnitude_prune, score_prune
from lottery.pruning import structured as units
from lottery.pruning.groups import channel_groups, group_prune
from lottery.pruning.structured import nm_prune, structured_prune

State = Mapping[str, torch.Tensor]
# (trained weights, previous mask, level, per-layer rates, default rate, pattern, norm, output layer, scores,
#  the model, for patterns that read its structure) -> mask
Pruner = Callable[[State, Mask, float, Mapping[str, float | None], float, str, str, str | None, State | None,
                   nn.Module | None], Mask]


def _unstructured(trained: State, mask: Mask, level: float, rates: Mapping[str, float | None], rate: float,
                  pattern: str, norm: str, output_name: str | None, scores: State | None,
                  model: nn.Module | None) -> Mask:
    """Per-weight pruning by magnitude (or `scores`): layerwise rates, or a global pool where a rate is None."""
    if scores is not None:
        return score_prune(scores, mask, level, rates, rate)
    return magnitude_prune(trained, mask, level, rates, rate)


def _whole_units(trained: State, mask: Mask, level: float, rates: Mapping[str, float | None], rate: float,
                 pattern: str, norm: str, output_name: str | None, scores: State | None,
                 model: nn.Module | None) -> Mask:
    """Whole units per layer by L1/L2 norm (or the sum of their weights' `scores`); never the output layer
    (its units are the classes)."""
    unit_rates = {name: (r if r is not None else rate) for name, r in rates.items() if name != output_name}
    return structured_prune(trained, mask, level, unit_rates, pattern, norm, scores=scores)


def _channel_groups(trained: State, mask: Mask, level: float, rates: Mapping[str, float | None], rate: float,
                    pattern: str, norm: str, output_name: str | None, scores: State | None,
                    model: nn.Module | None) -> Mask:
    """Whole channel groups of `model` (the channels tied by residual additions, BatchNorm and shortcuts), each
    removing `rate` per level by group score; groups with a member outside `rates` (other than the output
    layer) are left alone, so the mask always compacts."""
    if model is None:
        raise ValueError("pruning.pattern=channel_groups needs the model to trace its channel groups")
    if scores is not None:
        raise ValueError("pruning.pattern=channel_groups ranks groups by their weights' norm; use pruning.score=magnitude")
    frozen = [name for name in mask if name not in rates and name != output_name]
    return group_prune(trained, mask, channel_groups(model), level, rate, norm, exclude=frozen)


PATTERNS: dict[str, Pruner] = {"unstructured": _unstructured, **dict.fromkeys(units.PATTERNS, _whole_units),
                               "channel_groups": _channel_groups}
# Patterns that remove whole units of each layer, so they need per-layer rates (pruning.strategy=layerwise).
UNIT_PATTERNS = (*units.PATTERNS, "channel_groups")


def next_mask(trained: State, mask: Mask, level: float, rates: Mapping[str, float | None], rate: float,
              pattern: str = "unstructured", norm: str = "l1", output_name: str | None = None,
              nm: tuple[int, int] | None = None, scores: State | None = None,
              model: nn.Module | None = None) -> Mask:
    """Level `level`'s mask, nested in `mask`.

    N:M (`nm=(n, m)`): the n largest of every m weights along the input dimension, in every layer of `rates`;
    otherwise the pattern's entry of PATTERNS. `scores` (per weight, higher = keep; lottery.pruning.scores)
    replace |w| in every pattern; None means magnitude.
    """
    if nm is not None:
        return nm_prune(trained, mask, list(rates), nm[0], nm[1], scores=scores)
    if pattern not in PATTERNS:
        raise ValueError(f"pruning.pattern={pattern!r} is unknown")
    return PATTERNS[pattern](trained, mask, level, rates, rate, pattern, norm, output_name, scores, model)
