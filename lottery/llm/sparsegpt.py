"""SparseGPT (Frantar & Alistarh 2023, Algorithm 1): one-shot pruning with OBS weight reconstruction.

Notation follows the paper and its reference code: W [d_out, d_in] is the layer weight, H = 2 X X^T / N the
layer-wise Hessian of ||WX - W'X||^2, Hinv the *upper Cholesky factor* of H^-1. Row q of that factor,
divided by its diagonal, is row q of the inverse Hessian of the columns not yet processed, so one factor
gives every OBS update of a left-to-right sweep without explicit downdates (paper, Sec. 3.2 / Eq. 5).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from lottery.llm._common import is_nm, lowest_k_pruned, validate_prune_args
from lottery.pruning.nm import nm_mask

log = logging.getLogger(__name__)


def inverse_hessian_cholesky(H: Tensor, percdamp: float, retries: int = 4) -> Tensor:
    """Upper Cholesky factor of (H + damp*I)^-1 with damp = percdamp * mean(diag H).

    H is a float32 matrix with no zero diagonal. If a factorization fails (H numerically singular), the
    damping is multiplied by 10 up to ``retries`` times, with a warning each time.
    """
    columns = H.shape[0]
    diag = torch.arange(columns, device=H.device)
    mean_diag = torch.mean(torch.diag(H)).item()
    damp = percdamp * mean_diag
    for attempt in range(retries + 1):
        Hd = H.clone()
        Hd[diag, diag] += damp
        L, info = torch.linalg.cholesky_ex(Hd)
        if info.item() == 0:
            Hinv, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if info.item() == 0:
                return Hinv
        if attempt == retries:
            break
        new_damp = damp * 10 if damp > 0 else 0.01 * mean_diag
        log.warning(
            "SparseGPT: Cholesky of the damped Hessian failed (damp=%.3g); retrying with damp=%.3g",
            damp, new_damp,
        )
        damp = new_damp
    raise RuntimeError(f"SparseGPT: Hessian is not positive definite even with damp={damp:.3g}")


def _sweep(W1: Tensor, Hinv1: Tensor, mask1: Tensor, d1_sq: Tensor, Q1: Tensor, Err1: Tensor, n: int, m: int,
           choose_nm: bool) -> None:
    """The within-block column loop of Algorithm 1, in place: quantize column i, spread its error right.

    Free of host synchronisation (no boolean indexing, no .item()), so it can be captured in a CUDA graph.
    ``mask1`` is True = pruned; with ``choose_nm`` each group of m columns is chosen when the sweep reaches it.
    """
    for i in range(W1.shape[1]):
        w = W1[:, i]
        d = Hinv1[i, i]
        if choose_nm and i % m == 0:
            # Chosen only now, so the group's scores include the updates from the columns before it.
            mask1[:, i : i + m] = ~nm_mask(W1[:, i : i + m] ** 2 / d1_sq[:, i : i + m], n, m)
        q = w.masked_fill(mask1[:, i], 0)
        Q1[:, i] = q
        err1 = (w - q) / d
        W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
        Err1[:, i] = err1


class _GraphedSweep:
    """`_sweep` for one (rows, columns, n, m, choose_nm) shape on one GPU, captured once as a CUDA graph.

    A block has ~8 small kernels per column; replaying them from a graph removes the per-launch CPU cost
    that dominates the reference implementation. The kernels are the eager ones, so results are identical.
    """

    def __init__(self, rows: int, count: int, n: int, m: int, choose_nm: bool, device: torch.device):
        f32 = dict(device=device, dtype=torch.float32)
        self.W1, self.Q1, self.Err1 = (torch.zeros(rows, count, **f32) for _ in range(3))
        self.Hinv1, self.d1_sq = torch.eye(count, **f32), torch.ones(1, count, **f32)
        self.mask1 = torch.zeros(rows, count, device=device, dtype=torch.bool)
        args = (self.W1, self.Hinv1, self.mask1, self.d1_sq, self.Q1, self.Err1, n, m, choose_nm)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # warm-up outside the capture (cuBLAS handles, workspaces)
            _sweep(*args)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            _sweep(*args)

    def __call__(self, W1: Tensor, Hinv1: Tensor, mask1: Tensor, d1_sq: Tensor) -> tuple[Tensor, Tensor]:
        self.W1.copy_(W1)
        self.Hinv1.copy_(Hinv1)
        self.mask1.copy_(mask1)
        self.d1_sq.copy_(d1_sq)
        self.graph.replay()
        mask1.copy_(self.mask1)
        return self.Q1.clone(), self.Err1.clone()


_GRAPHS: dict[tuple, _GraphedSweep] = {}
USE_CUDA_GRAPHS = True  # set False to run the column loop eagerly on GPUs too (same results, slower)


def _sweep_block(W1: Tensor, Hinv1: Tensor, mask1: Tensor, d1_sq: Tensor, n: int, m: int,
                 choose_nm: bool) -> tuple[Tensor, Tensor]:
    """(Q1, Err1) of one block; ``mask1`` is filled in place when the N:M groups are chosen in the sweep."""
    rows, count = W1.shape
    if USE_CUDA_GRAPHS and W1.is_cuda and not torch.cuda.is_current_stream_capturing():
        key = (W1.device, rows, count, n, m, choose_nm)
        if key not in _GRAPHS:
            if len(_GRAPHS) >= 16:  # a handful of layer shapes per model; bound the static buffers anyway
                _GRAPHS.clear()
            _GRAPHS[key] = _GraphedSweep(rows, count, n, m, choose_nm, W1.device)
        return _GRAPHS[key](W1, Hinv1, mask1, d1_sq)
    Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
    _sweep(W1, Hinv1, mask1, d1_sq, Q1, Err1, n, m, choose_nm)
    return Q1, Err1


@torch.no_grad()
def sparsegpt_prune(
    W: Tensor,
    H: Tensor,
    sparsity: float,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    *,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Prune ``W`` ([d_out, d_in]) given the Hessian ``H`` ([d_in, d_in]) of its calibration inputs.

    Unstructured: in each block of ``blocksize`` columns, the ``int(sparsity * numel)`` weights with the
    lowest OBS error w^2 / [H^-1]_qq (on the weights already updated by earlier blocks) are pruned.
    N:M: every m columns, keep the n highest-error weights of each group (``sparsity`` ignored).
    ``mask`` (True = keep) fixes the pattern instead of selecting it. Returns ``(W_new, mask)`` with
    ``W_new`` in the dtype of ``W`` and ``mask`` True where a weight is kept.
    """
    validate_prune_args(W, sparsity, n, m)
    rows, columns = W.shape
    if H.shape != (columns, columns):
        raise ValueError(f"H must be [d_in, d_in] = [{columns}, {columns}], got {tuple(H.shape)}")
    if blocksize <= 0 or (is_nm(n, m) and blocksize % m != 0):
        raise ValueError(f"blocksize must be positive and a multiple of m, got blocksize={blocksize}, m={m}")
    if percdamp < 0:
        raise ValueError(f"percdamp must be >= 0, got {percdamp}")
    if mask is not None and mask.shape != W.shape:
        raise ValueError(f"mask must have the shape of W {tuple(W.shape)}, got {tuple(mask.shape)}")

    dtype = W.dtype
    W = W.detach().clone().float()
    H = H.detach().clone().float().to(W.device)
    # Inputs that never fire carry no information: fix H to stay invertible, and their weights are moot.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = inverse_hessian_cholesky(H, percdamp)
    del H

    pruned = torch.zeros_like(W, dtype=torch.bool)  # True = pruned, like the reference's mask1
    choose_nm = mask is None and is_nm(n, m)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        # Hinv1[q, q]^2 = [H_F^-1]_qq of the remaining columns F, so this is the OBS error of pruning w_q.
        d1_sq = torch.diag(Hinv1).reshape(1, -1) ** 2

        if mask is not None:
            mask1 = ~mask[:, i1:i2].to(W.device)
        elif not is_nm(n, m):
            scores = W1**2 / d1_sq
            mask1 = lowest_k_pruned(scores.flatten(), int(scores.numel() * sparsity)).reshape(scores.shape)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)

        Q1, Err1 = _sweep_block(W1, Hinv1, mask1, d1_sq, n, m, choose_nm)
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        # Lazy batch update: the later columns see this block's errors in one matmul.
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

    return W.to(dtype), ~pruned
