"""Magnitude pruning, the one-shot baseline of the SparseGPT and Wanda papers: remove the smallest |W_ij|.

The score is S_ij = |W_ij|, with no calibration data and no weight update. The comparison group is the whole
layer (SparseGPT's baseline: every matrix pruned to the same sparsity), or with ``per_row`` each output row,
Wanda's group G_i = {W_uv : u = i}; N:M sparsity compares within every m consecutive weights of a row.
"""

from __future__ import annotations

from torch import Tensor

from lottery.llm._common import is_nm, lowest_k_pruned, validate_prune_args
from lottery.pruning.nm import nm_mask


def magnitude_prune(
    W: Tensor, sparsity: float, n: int = 0, m: int = 0, per_row: bool = False
) -> tuple[Tensor, Tensor]:
    """Zero the smallest-magnitude weights of ``W`` ([d_out, d_in]), S_ij = |W_ij|.

    Unstructured: exactly ``int(sparsity * numel)`` weights per matrix, or ``int(sparsity * d_in)`` per row
    when ``per_row``. N:M (n, m > 0): keep the n largest of each group of m along d_in; ``sparsity`` is
    then ignored. Returns ``(W_new, mask)`` with ``mask`` True where a weight is kept.
    """
    validate_prune_args(W, sparsity, n, m)
    S = W.detach().abs()
    if is_nm(n, m):
        mask = nm_mask(S, n, m)
    elif per_row:
        mask = ~lowest_k_pruned(S, int(W.shape[1] * sparsity))
    else:
        mask = ~lowest_k_pruned(S.flatten(), int(W.numel() * sparsity)).reshape(W.shape)
    return W.masked_fill(~mask, 0), mask
