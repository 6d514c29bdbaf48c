"""Mask analysis logged per IMP level: sparsity, overlap between masks, and where the survivors started (θ0).

Every function returns plain Python numbers and lists, so the results can go straight into JSON or W&B.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lottery.pruning.mask import Mask, jaccard

__all__ = ["jaccard_per_layer", "layer_sparsity", "mask_overlap", "surviving_init_histogram"]


def layer_sparsity(mask: Mask) -> dict[str, float]:
    """Fraction of weights pruned per layer (1 − density)."""
    return {name: 1.0 - d for name, d in mask.density().items()}


def _check_same_layers(a: Mask, b: Mask) -> None:
    if set(a) != set(b):
        raise ValueError(f"masks cover different layers: only in first {sorted(set(a) - set(b))}, "
                         f"only in second {sorted(set(b) - set(a))}")
    for name in a:
        if a[name].shape != b[name].shape:
            raise ValueError(f"{name}: mask shapes differ, {tuple(a[name].shape)} vs {tuple(b[name].shape)}")


def jaccard_per_layer(a: Mask, b: Mask) -> dict[str, float]:
    """|a ∩ b| / |a ∪ b| of the kept weights of each layer (1.0 where both keep nothing, as `jaccard` does)."""
    _check_same_layers(a, b)
    out = {}
    for name in a:
        union = int((a[name] | b[name]).sum())
        out[name] = int((a[name] & b[name]).sum()) / union if union else 1.0
    return out


def mask_overlap(a: Mask, b: Mask) -> dict[str, Any]:
    """Jaccard overlap of two masks: {"overall": float, "per_layer": {name: float}}.

    "overall" pools all layers (so large layers weigh more), as `lottery.pruning.jaccard` does.
    """
    per_layer = jaccard_per_layer(a, b)
    return {"overall": jaccard(a, b), "per_layer": per_layer}


def _split_histogram(init: Tensor, keep: Tensor, bins: int) -> dict[str, Any]:
    bound = float(init.abs().max()) if init.numel() else 0.0
    if bound == 0.0:
        bound = 0.5  # an all-zero layer still needs a non-empty range (numpy's choice)
    kept, edges = torch.histogram(init[keep], bins=bins, range=(-bound, bound))
    pruned, _ = torch.histogram(init[~keep], bins=bins, range=(-bound, bound))
    return {"edges": [float(e) for e in edges.tolist()],
            "kept": [int(c) for c in kept.tolist()],
            "pruned": [int(c) for c in pruned.tolist()],
            "num_kept": int(keep.sum()), "num_pruned": int((~keep).sum())}


@torch.no_grad()
def surviving_init_histogram(init: Mapping[str, Tensor], mask: Mask, bins: int = 50) -> dict[str, Any]:
    """Histograms of the initial values θ0 of the weights that `mask` keeps and of those it prunes.

    Returns {"bins": bins, "layers": {name: H}, "overall": H} for the layers of `mask`, where H is
    {"edges": [bins + 1 floats], "kept": [bins ints], "pruned": [bins ints], "num_kept": int, "num_pruned": int}.
    Kept and pruned share one range, [−max|θ0|, max|θ0|] of the layer (of all layers for "overall";
    [−0.5, 0.5] if that max is 0), so the two are directly comparable; the last bin includes its right edge,
    so every weight is counted. Plain lists and numbers: JSON-serialisable.
    """
    if bins < 1:
        raise ValueError(f"surviving_init_histogram needs bins >= 1, got {bins}")
    layers = {}
    flat_init, flat_keep = [], []
    for name, keep in mask.items():
        theta0 = init[name].detach().cpu().double()
        if theta0.shape != keep.shape:
            raise ValueError(f"{name}: θ0 shape {tuple(theta0.shape)} differs from mask shape {tuple(keep.shape)}")
        layers[name] = _split_histogram(theta0, keep, bins)
        flat_init.append(theta0.flatten())
        flat_keep.append(keep.flatten())
    overall = _split_histogram(torch.cat(flat_init) if flat_init else torch.zeros(0, dtype=torch.float64),
                               torch.cat(flat_keep) if flat_keep else torch.zeros(0, dtype=torch.bool), bins)
    return {"bins": bins, "layers": layers, "overall": overall}
