"""Wanda (Sun, Liu, Bair & Kolter 2023): prune by |W_ij| * ||X_j||_2, compared within each output row."""

from __future__ import annotations

import torch
from torch import Tensor

from lottery.llm._common import is_nm, lowest_k_pruned, validate_prune_args
from lottery.pruning.nm import nm_mask


def wanda_prune(
    W: Tensor, x_sq_norm: Tensor, sparsity: float, n: int = 0, m: int = 0
) -> tuple[Tensor, Tensor]:
    """Prune ``W`` ([d_out, d_in]) with the Wanda score S_ij = |W_ij| * ||X_j||_2.

    ``x_sq_norm`` [d_in] is the per-input-column sum of squares of the calibration inputs (any positive
    rescaling gives the same mask). Unstructured: exactly ``int(sparsity * d_in)`` weights per output row.
    N:M: keep the n highest scores in each group of m (``sparsity`` ignored). No weight update.
    Returns ``(W_new, mask)`` with ``mask`` True where a weight is kept.
    """
    validate_prune_args(W, sparsity, n, m)
    if x_sq_norm.shape != (W.shape[1],):
        raise ValueError(
            f"x_sq_norm must have shape (d_in,) = ({W.shape[1]},), got {tuple(x_sq_norm.shape)}"
        )
    if bool((x_sq_norm < 0).any()):
        raise ValueError("x_sq_norm is a sum of squares and must be non-negative")
    S = W.detach().abs().float() * torch.sqrt(x_sq_norm.detach().float().to(W.device)).reshape(1, -1)
    # The paper's comparison group is the output row: pruning per row keeps every output neuron alive.
    mask = nm_mask(S, n, m) if is_nm(n, m) else ~lowest_k_pruned(S, int(W.shape[1] * sparsity))
    return W.masked_fill(~mask, 0), mask
