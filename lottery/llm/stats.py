"""Running statistics of a layer's calibration inputs, and the reconstruction error they imply."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class InputStats:
    """Accumulates, over calibration sequences, the statistics the pruning methods need from inputs X.

    ``H`` = 2/N * sum X X^T (N counts sequences, as in the SparseGPT reference) is kept as a running
    average so its scale does not grow with N; it is both SparseGPT's Hessian and the Gram matrix for the
    reconstruction error. ``sq_norm`` = 1/N * sum_j ||X_j||^2 per input column is Wanda's statistic.
    """

    def __init__(self, columns: int, device: torch.device | str = "cpu", gram: bool = True) -> None:
        self.nsamples = 0
        self.H = torch.zeros(columns, columns, device=device, dtype=torch.float32) if gram else None
        self.sq_norm = torch.zeros(columns, device=device, dtype=torch.float32)

    @torch.no_grad()
    def add_batch(self, inp: Tensor) -> None:
        """Add inputs shaped [batch, seq, d_in] (or [tokens, d_in], counted as one sequence)."""
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t().float()
        decay = self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        self.sq_norm *= decay
        self.sq_norm += (inp**2).sum(dim=1) / self.nsamples
        if self.H is not None:
            self.H *= decay
            inp = math.sqrt(2 / self.nsamples) * inp
            self.H += inp.matmul(inp.t())


def relative_error(W: Tensor, W_new: Tensor, H: Tensor) -> float:
    """||W X - W_new X||_F / ||W X||_F computed from the Gram matrix H ∝ X X^T (its scale cancels)."""
    H = H.double()
    W = W.double()
    dW = W - W_new.double()
    num = ((dW @ H) * dW).sum()
    den = ((W @ H) * W).sum()
    if den <= 0:
        return 0.0 if num <= 0 else math.inf
    return math.sqrt(max(num.item(), 0.0) / den.item())
