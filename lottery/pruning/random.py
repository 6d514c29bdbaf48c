"""Random masks for the "random pruning" control branch: the same per-layer sparsity, random positions."""

from __future__ import annotations

import torch

from lottery.pruning.mask import Mask

__all__ = ["random_mask_like"]


def random_mask_like(mask: Mask, seed: int) -> Mask:
    """A mask keeping exactly as many weights per layer as `mask`, at uniformly random positions.

    Draws come from a private generator seeded by `seed` (the global RNG is left alone), one permutation per
    layer in the mask's order, so the same mask and seed always give the same result.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in mask.items():
        keep = torch.zeros(m.numel(), dtype=torch.bool)
        keep[torch.randperm(m.numel(), generator=g)[: int(m.sum())]] = True
        out[name] = keep.view_as(m)
    return Mask(out)
