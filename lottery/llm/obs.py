"""Exact Optimal Brain Surgeon steps (Hassibi & Stork 1993) with explicit inverse-Hessian downdates.

Slow (O(d^2) per step) and meant as the ground truth that SparseGPT's Cholesky formulation must match.
"""

from __future__ import annotations

import torch
from torch import Tensor


def obs_downdate(Hinv: Tensor, q: int) -> Tensor:
    """Inverse Hessian of the problem with coordinate q removed: Hinv - Hinv[:,q] Hinv[q,:] / Hinv[q,q]."""
    return Hinv - torch.outer(Hinv[:, q], Hinv[q, :]) / Hinv[q, q]


def obs_prune_step(w: Tensor, Hinv: Tensor, q: int) -> tuple[Tensor, Tensor]:
    """Prune w[q] (w is [d] or [rows, d]) and compensate: delta = -w_q * Hinv[:, q] / Hinv[q, q].

    Returns the updated weights (w[q] exactly 0) and the downdated inverse Hessian for the next step.
    """
    w_q = w[..., q : q + 1]
    w_new = w - w_q * Hinv[q, :] / Hinv[q, q]  # Hinv is symmetric: row q == column q
    w_new[..., q] = 0
    return w_new, obs_downdate(Hinv, q)


def obs_prune_columns(W: Tensor, Hinv: Tensor, mask: Tensor) -> Tensor:
    """Left-to-right exact OBS over the columns of W [rows, d_in] with a fixed keep-mask.

    Column q is pruned (with compensation of columns > q) in the rows where ``mask`` is False, then
    frozen in every row; freezing a kept weight is the same downdate with no weight change. SparseGPT's
    Cholesky sweep must give the same result for the same mask.
    """
    W = W.clone()
    for q in range(W.shape[1]):
        err = torch.where(mask[:, q], torch.zeros_like(W[:, q]), W[:, q]) / Hinv[q, q]
        W -= err.unsqueeze(1) * Hinv[q, :].unsqueeze(0)
        W[~mask[:, q], q] = 0
        Hinv = obs_downdate(Hinv, q)
    return W
