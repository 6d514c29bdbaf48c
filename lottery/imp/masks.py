"""The next level's mask from the trained weights: one registry of pruning patterns.

`PATTERNS` maps each named pattern to the function that computes its mask; validation (`pruning.pattern`)
reads its keys, and a new pattern is one entry. "N:M" patterns (e.g. "2:4") are parsed, not listed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from lottery.pruning import Mask, magnitude_prune
from lottery.pruning import structured as units
from lottery.pruning.structured import nm_prune, structured_prune

State = Mapping[str, torch.Tensor]
# (trained weights, previous mask, level, per-layer rates, default rate, pattern, norm, output layer) -> mask
Pruner = Callable[[State, Mask, int, Mapping[str, float | None], float, str, str, str | None], Mask]


def _unstructured(trained: State, mask: Mask, level: int, rates: Mapping[str, float | None], rate: float,
                  pattern: str, norm: str, output_name: str | None) -> Mask:
    """Magnitude pruning: layerwise rates, or a global pool where a layer's rate is None."""
    return magnitude_prune(trained, mask, level, rates, rate)


def _whole_units(trained: State, mask: Mask, level: int, rates: Mapping[str, float | None], rate: float,
                 pattern: str, norm: str, output_name: str | None) -> Mask:
    """Whole units per layer by L1/L2 norm; never the output layer (its units are the classes)."""
    unit_rates = {name: (r if r is not None else rate) for name, r in rates.items() if name != output_name}
    return structured_prune(trained, mask, level, unit_rates, pattern, norm)


PATTERNS: dict[str, Pruner] = {"unstructured": _unstructured, **dict.fromkeys(units.PATTERNS, _whole_units)}
# Patterns that remove whole units of each layer, so they need per-layer rates (pruning.strategy=layerwise).
UNIT_PATTERNS = tuple(units.PATTERNS)


def next_mask(trained: State, mask: Mask, level: int, rates: Mapping[str, float | None], rate: float,
              pattern: str = "unstructured", norm: str = "l1", output_name: str | None = None,
              nm: tuple[int, int] | None = None) -> Mask:
    """Level `level`'s mask, nested in `mask`.

    N:M (`nm=(n, m)`): the n largest of every m weights along the input dimension, in every layer of `rates`;
    otherwise the pattern's entry of PATTERNS.
    """
    if nm is not None:
        return nm_prune(trained, mask, list(rates), nm[0], nm[1])
    if pattern not in PATTERNS:
        raise ValueError(f"pruning.pattern={pattern!r} is unknown")
    return PATTERNS[pattern](trained, mask, level, rates, rate, pattern, norm, output_name)
