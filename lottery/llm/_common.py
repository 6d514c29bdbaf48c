"""Argument checks and selection helpers shared by the layer-level pruning algorithms."""

from __future__ import annotations

import torch
from torch import Tensor

from lottery.pruning.nm import validate_nm


def validate_prune_args(W: Tensor, sparsity: float, n: int, m: int) -> None:
    """One clear ValueError per bad argument; N:M mode is on when n or m is non-zero."""
    if W.dim() != 2:
        raise ValueError(f"weight must be a 2-D [d_out, d_in] matrix, got shape {tuple(W.shape)}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if n or m:
        validate_nm(n, m, W.shape[1])
        if n == 0:
            raise ValueError(f"N:M pruning needs n >= 1 (n=0 would prune everything), got n={n}, m={m}")


def is_nm(n: int, m: int) -> bool:
    return bool(n or m)


def lowest_k_pruned(score: Tensor, k: int) -> Tensor:
    """Bool mask, True at the k lowest scores along the last dim (exactly k per row; stable on ties)."""
    pruned = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        idx = torch.sort(score, dim=-1, stable=True).indices[..., :k]
        pruned.scatter_(-1, idx, True)
    return pruned
