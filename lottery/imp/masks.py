"""The next level's mask from the trained weights: dispatch on the pruning pattern."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lottery.pruning import Mask, magnitude_prune
from lottery.pruning.groups import channel_groups, group_prune

STRUCTURED = ("neurons", "filters", "channels")


def next_mask(trained: Mapping[str, torch.Tensor], mask: Mask, level: int, rates: Mapping[str, float | None],
              rate: float, pattern: str = "unstructured", norm: str = "l1", output_name: str | None = None,
              nm: tuple[int, int] | None = None, model: nn.Module | None = None) -> Mask:
    """Level `level`'s mask, nested in `mask`.

    unstructured: magnitude pruning (layerwise rates, or a global pool where a rate is None).
    neurons/filters/channels: whole units per layer by L1/L2 norm; the output layer is never pruned
    this way (its units are the classes). N:M (`nm=(n, m)`): the n largest of every m weights along
    the input dimension, in every layer of `rates`. channel_groups: whole channel groups of `model` (the
    channels tied by residual additions, BatchNorm and shortcuts), each removing `rate` per level by group
    score; groups with a member outside `rates` (other than the output layer) are left alone.
    """
    if pattern == "channel_groups":
        if model is None:
            raise ValueError("pruning.pattern=channel_groups needs the model to trace its channel groups")
        frozen = [name for name in mask if name not in rates and name != output_name]
        return group_prune(trained, mask, channel_groups(model), level, rate, norm, exclude=frozen)
    if nm is not None:
        from lottery.pruning.structured import nm_prune

        return nm_prune(trained, mask, list(rates), nm[0], nm[1])
    if pattern in STRUCTURED:
        from lottery.pruning.structured import structured_prune

        unit_rates = {name: (r if r is not None else rate) for name, r in rates.items() if name != output_name}
        return structured_prune(trained, mask, level, unit_rates, pattern, norm)
    if pattern != "unstructured":
        raise ValueError(f"pruning.pattern={pattern!r} is unknown")
    return magnitude_prune(trained, mask, level, rates, rate)
