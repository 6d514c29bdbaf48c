"""Wanda (Sun, Liu, Bair & Kolter 2023): pruning by weights and activations, with no weight update.

The paper's notation: W [C_out, C_in] is the layer weight and X [N*L, C_in] its calibration inputs (N
sequences of L tokens). Each weight's importance is its magnitude times the norm of its input feature,

    S_ij = |W_ij| * ||X_j||_2                                              (Eq. 1)

and weights are compared per output: within the group G_i = {W_uv : u = i} of row i, the s% lowest S_ij are
removed, so every output neuron keeps the same share of its inputs. N:M sparsity compares within every M
consecutive weights of a row instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lottery.llm._common import is_nm, lowest_k_pruned, validate_prune_args
from lottery.pruning.nm import nm_mask


def wanda_prune(
    W: Tensor, x_sq_norm: Tensor, sparsity: float, n: int = 0, m: int = 0
) -> tuple[Tensor, Tensor]:
    """Prune ``W`` ([C_out, C_in]) with the Wanda score S_ij = |W_ij| * ||X_j||_2.

    ``x_sq_norm`` [C_in] is ||X_j||_2^2, the per-input-column sum of squares of the calibration inputs (any
    positive rescaling gives the same mask). Unstructured: exactly ``int(sparsity * C_in)`` weights per
    output row (the paper's s). N:M: keep the n highest scores in each group of m (``sparsity`` ignored).
    No weight update. Returns ``(W_new, mask)`` with ``mask`` True where a weight is kept.
    """
    validate_prune_args(W, sparsity, n, m)
    C_in = W.shape[1]
    if x_sq_norm.shape != (C_in,):
        raise ValueError(f"x_sq_norm must have shape (d_in,) = ({C_in},), got {tuple(x_sq_norm.shape)}")
    if bool((x_sq_norm < 0).any()):
        raise ValueError("x_sq_norm is a sum of squares and must be non-negative")
    X_norm = torch.sqrt(x_sq_norm.detach().float().to(W.device))  # ||X_j||_2
    S = W.detach().abs().float() * X_norm.reshape(1, -1)  # Eq. 1
    if is_nm(n, m):
        mask = nm_mask(S, n, m)
    else:  # the comparison group is the output row G_i
        mask = ~lowest_k_pruned(S, int(C_in * sparsity))
    return W.masked_fill(~mask, 0), mask
