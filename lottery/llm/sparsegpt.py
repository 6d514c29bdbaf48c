"""SparseGPT (Frantar & Alistarh 2023), Algorithm 1: one-shot pruning with OBS weight reconstruction.

The paper's notation: W [d_row, d_col] is the layer weight (d_row outputs, d_col inputs), H = 2 X X^T / N the
Hessian of the layer-wise loss ||WX - W'X||^2, p the sparsity, M the binary mask (1 = kept), E the pruning
errors of one block, B the lazy-batch block size and B_s the mask-selection block size. Algorithm 1, numbered
here without its end-if / end-for lines:

     1  M <- 1 (d_row x d_col)                                      binary pruning mask
     2  E <- 0 (d_row x B)                                          block pruning errors
     3  H^-1 <- Cholesky(H^-1)^T                                    Hessian inverse information
     4  for i = 0, B, 2B, ...:
     5      for j = i, ..., i + B - 1:
     6          if j mod B_s = 0:
     7              M[:, j:j+B_s] <- keep the (1-p) of W[:, j:j+B_s] with the largest w_c^2 / [H^-1]_cc^2
     8          E[:, j-i] <- W[:, j] / [H^-1]_jj                    pruning error
     9          E[:, j-i] <- (1 - M[:, j]) * E[:, j-i]              freeze weights that are not pruned
    10          W[:, j:i+B] <- W[:, j:i+B] - E[:, j-i] H^-1[j, j:i+B]  OBS update
    11      W[:, i+B:] <- W[:, i+B:] - E H^-1[i:i+B, i+B:]          lazy batch update
    12  W <- W * M                                                  set pruned weights to 0

From line 3 on, H^-1 is the upper Cholesky factor U of the inverse Hessian. With F = {j, j+1, ...} the columns
not yet processed, U_jj U[j, j:] = [H_F^-1]_(j, j:), so the OBS step for w_j, -w_j [H_F^-1]_(j,:) / [H_F^-1]_jj,
is -(w_j / U_jj) U[j, :] (lines 8 and 10), and U_jj^2 = [H_F^-1]_jj is line 7's denominator: one factorization
gives every step of the left-to-right sweep without downdates (Sec. 3.2). N:M sparsity (Sec. 3.3) is line 7
with B_s = m, keeping n of every m in each row.
Lines 5-10 are ``_columns``; ``sparsegpt_prune`` is the rest, and on a GPU replays ``_columns`` from a CUDA
graph (``lottery.llm.graph_cache``).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from lottery.llm._common import is_nm, lowest_k_pruned, validate_prune_args
from lottery.llm.graph_cache import GraphCache
from lottery.pruning.nm import nm_mask

log = logging.getLogger(__name__)

USE_CUDA_GRAPHS = True  # set False to run the column loop eagerly on GPUs too (same results, slower)
_GRAPHS = GraphCache()


def inverse_hessian_cholesky(H: Tensor, percdamp: float, retries: int = 4) -> Tensor:
    """Line 3: the upper Cholesky factor of (H + damp*I)^-1, with damp = percdamp * mean(diag H).

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


def _select(W: Tensor, Hinv_diag: Tensor, p: float, n: int, m: int) -> Tensor:
    """Line 7: the keep-mask of W's columns by the OBS error w_c^2 / [H^-1]_cc^2.

    Unstructured: the int(p * numel) lowest errors of the whole slice are pruned. N:M: the n highest errors
    of every m consecutive weights in a row are kept (``p`` unused).
    """
    error = W**2 / Hinv_diag**2
    if is_nm(n, m):
        return nm_mask(error, n, m)
    return ~lowest_k_pruned(error.flatten(), int(error.numel() * p)).reshape(error.shape)


def _columns(W: Tensor, M: Tensor, E: Tensor, Hinv: Tensor, p: float, B_s: int, n: int, m: int,
             select: bool) -> None:
    """Lines 5-10 for one block of columns: W [d_row, B], M, E and the block's Hinv [B, B], in place.

    Free of host synchronisation (no boolean indexing, no .item()), so it can be captured in a CUDA graph.
    With ``select`` each B_s columns get their mask when the sweep reaches them, so its errors include the
    updates from the columns before; otherwise M is fixed.
    """
    for j in range(W.shape[1]):  # j counts from the block's first column; B_s divides B, so j mod B_s is unchanged
        if select and j % B_s == 0:
            M[:, j : j + B_s] = _select(W[:, j : j + B_s], Hinv.diagonal()[j : j + B_s], p, n, m)
        E[:, j] = (W[:, j] / Hinv[j, j]).masked_fill(M[:, j], 0)  # lines 8-9: kept weights have no error
        W[:, j:] -= E[:, j : j + 1].matmul(Hinv[j : j + 1, j:])  # line 10


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
    mask_blocksize: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Prune ``W`` ([d_row, d_col]) given the Hessian ``H`` ([d_col, d_col]) of its calibration inputs.

    ``blocksize`` is the paper's B, ``mask_blocksize`` its B_s (default B; a divisor of B). Unstructured:
    in each B_s columns, the ``int(sparsity * numel)`` weights of the slice with the lowest OBS error are pruned.
    N:M: every m columns, the n highest-error weights of each row are kept (B_s = m, ``sparsity`` ignored).
    ``mask`` (True = keep) fixes M instead of selecting it. ``percdamp`` damps H by that fraction of its
    mean diagonal. Returns ``(W_new, M)`` with ``W_new`` in the dtype of ``W`` and ``M`` True where kept.
    """
    validate_prune_args(W, sparsity, n, m)
    d_row, d_col = W.shape
    if H.shape != (d_col, d_col):
        raise ValueError(f"H must be [d_in, d_in] = [{d_col}, {d_col}], got {tuple(H.shape)}")
    if blocksize <= 0 or (is_nm(n, m) and blocksize % m != 0):
        raise ValueError(f"blocksize must be positive and a multiple of m, got blocksize={blocksize}, m={m}")
    if mask_blocksize is not None and (
        mask_blocksize <= 0 or blocksize % mask_blocksize != 0 or (is_nm(n, m) and mask_blocksize != m)
    ):
        raise ValueError(f"mask_blocksize must divide blocksize={blocksize} (and equal m for N:M), "
                         f"got mask_blocksize={mask_blocksize}, m={m}")
    if percdamp < 0:
        raise ValueError(f"percdamp must be >= 0, got {percdamp}")
    if mask is not None and mask.shape != W.shape:
        raise ValueError(f"mask must have the shape of W {tuple(W.shape)}, got {tuple(mask.shape)}")
    B = blocksize
    B_s = m if is_nm(n, m) else (mask_blocksize or B)

    dtype = W.dtype
    W = W.detach().clone().float()
    H = H.detach().clone().float().to(W.device)
    # Inputs that never fire carry no information: fix H to stay invertible, and their weights are moot.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = inverse_hessian_cholesky(H, percdamp)  # line 3
    del H

    M = torch.ones_like(W, dtype=torch.bool) if mask is None else mask.to(W.device, torch.bool, copy=True)  # line 1
    consts = (sparsity, B_s, n, m, mask is None)
    for i in range(0, d_col, B):  # line 4
        i_end = min(i + B, d_col)
        E = W.new_zeros(d_row, i_end - i)  # line 2
        block = (W[:, i:i_end], M[:, i:i_end], E, Hinv[i:i_end, i:i_end])
        if USE_CUDA_GRAPHS:
            _GRAPHS(_columns, block, consts)  # lines 5-10
        else:
            _columns(*block, *consts)
        W[:, i_end:] -= E.matmul(Hinv[i:i_end, i_end:])  # line 11
    return W.masked_fill(~M, 0).to(dtype), M  # line 12 (masked_fill: pruned weights are +0.0)
