"""The next level's mask from the trained weights: dispatch on the pruning pattern."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lottery.pruning import Mask, magnitude_prune, score_prune

STRUCTURED = ("neurons", "filters", "channels")


def next_mask(trained: Mapping[str, torch.Tensor], mask: Mask, level: float, rates: Mapping[str, float | None],
              rate: float, pattern: str = "unstructured", norm: str = "l1", output_name: str | None = None,
              nm: tuple[int, int] | None = None, scores: Mapping[str, torch.Tensor] | None = None) -> Mask:
    """Level `level`'s mask, nested in `mask`.

    unstructured: magnitude pruning (layerwise rates, or a global pool where a rate is None).
    neurons/filters/channels: whole units per layer by L1/L2 norm; the output layer is never pruned
    this way (its units are the classes). N:M (`nm=(n, m)`): the n largest of every m weights along
    the input dimension, in every layer of `rates`. `scores` (per weight, higher = keep; see
    lottery.pruning.scores) replace |w| in every pattern; None means magnitude.
    """
    if nm is not None:
        from lottery.pruning.structured import nm_prune

        return nm_prune(trained, mask, list(rates), nm[0], nm[1], scores=scores)
    if pattern in STRUCTURED:
        from lottery.pruning.structured import structured_prune

        unit_rates = {name: (r if r is not None else rate) for name, r in rates.items() if name != output_name}
        return structured_prune(trained, mask, level, unit_rates, pattern, norm, scores=scores)
    if pattern != "unstructured":
        raise ValueError(f"pruning.pattern={pattern!r} is unknown")
    if scores is not None:
        return score_prune(scores, mask, level, rates, rate)
    return magnitude_prune(trained, mask, level, rates, rate)
