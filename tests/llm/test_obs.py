"""Exact OBS against the subject text's Example 2, and SparseGPT's Cholesky sweep against exact OBS."""

import pytest
import torch

from lottery.llm import obs_prune_columns, obs_prune_step, sparsegpt_prune
from lottery.llm._common import lowest_k_pruned
from lottery.llm.obs import obs_downdate
from lottery.pruning.nm import nm_mask

# Example 2 of the subject text: w and the calibration H^-1 (positive definite).
W_EX2 = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
HINV_EX2 = torch.tensor(
    [[4, 0, -2, 1, 0], [0, 1, 1, 0, -1], [-2, 1, 3, 0, 0], [1, 0, 0, 2, -1], [0, -1, 0, -1, 5]],
    dtype=torch.float64,
)
# Exact OBS: pruning w5 adds -Hinv[:,5] -> [1, 3, 3, 5, 0]; then, with Hinv downdated (Hinv44 = 1.8,
# Hinv14 = 1, Hinv24 = -0.2), pruning w4 = 5 gives [1 - 25/9, 3 + 5/9, 3, 0, 0].
AFTER_W5 = torch.tensor([1.0, 3.0, 3.0, 5.0, 0.0], dtype=torch.float64)
AFTER_W4 = torch.tensor([1 - 25 / 9, 3 + 5 / 9, 3.0, 0.0, 0.0], dtype=torch.float64)
TEXT_WITHOUT_DOWNDATE = torch.tensor([-1.5, 3.0, 3.0, 0.0, 0.0], dtype=torch.float64)


def test_example2_exact_obs_steps():
    w1, Hinv1 = obs_prune_step(W_EX2, HINV_EX2, 4)
    torch.testing.assert_close(w1, AFTER_W5)
    assert Hinv1[3, 3].item() == 2 - 1 / 5
    w2, _ = obs_prune_step(w1, Hinv1, 3)
    torch.testing.assert_close(w2, AFTER_W4)
    torch.testing.assert_close(w2, torch.tensor([-1.7778, 3.5556, 3.0, 0.0, 0.0], dtype=torch.float64),
                               atol=1e-4, rtol=0)
    # The text's shortcut (no downdate after step 1) lands elsewhere.
    assert not torch.allclose(w2, TEXT_WITHOUT_DOWNDATE, atol=1e-2)


def test_example2_obs_step_is_the_constrained_least_squares_optimum():
    """Independent check: with H = inv(Hinv), minimise (w-w0)^T H (w-w0) s.t. w5 = w4 = 0 directly."""
    H = torch.linalg.inv(HINV_EX2)
    free = [0, 1, 2]
    fixed = [3, 4]
    # d/dw_free: H_ff (w_f - w0_f) + H_fp (0 - w0_p) = 0
    w_f = W_EX2[free] + torch.linalg.solve(H[free][:, free], H[free][:, fixed] @ W_EX2[fixed])
    torch.testing.assert_close(w_f, AFTER_W4[free])


def test_example2_through_sparsegpt_update():
    """SparseGPT sweeps left to right, so feed Example 2 with reversed columns and a fixed mask."""
    rev = [4, 3, 2, 1, 0]
    Hinv = HINV_EX2[rev][:, rev]
    W = W_EX2[rev].reshape(1, -1)
    mask = torch.tensor([[False, False, True, True, True]])
    W_new, kept = sparsegpt_prune(W, torch.linalg.inv(Hinv), 0.0, percdamp=0.0, mask=mask)
    assert torch.equal(kept, mask)
    torch.testing.assert_close(W_new[0, rev], AFTER_W4, atol=1e-4, rtol=0)


def _hessian(d_in: int, tokens: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = (torch.eye(d_in) + torch.randn(d_in, d_in, generator=g) / d_in**0.5) @ torch.randn(d_in, tokens, generator=g)
    return (2 * X @ X.T / tokens).double()


def test_sparsegpt_column_update_equals_exact_obs_with_downdates():
    H = _hessian(32, 256, 0)
    W = torch.randn(8, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for n, m, blocksize in [(0, 0, 8), (0, 0, 32), (0, 0, 128), (2, 4, 8), (2, 4, 128)]:
        W_new, mask = sparsegpt_prune(W, H, 0.5, n, m, blocksize=blocksize, percdamp=0.0)
        expected = obs_prune_columns(W, torch.linalg.inv(H), mask)
        torch.testing.assert_close(W_new, expected, atol=1e-4, rtol=1e-4)  # float32 inside
        assert torch.all(W_new[~mask] == 0)


def test_sparsegpt_damping_is_percdamp_times_mean_diagonal():
    H = _hessian(16, 64, 2)
    W = torch.randn(4, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    W_new, mask = sparsegpt_prune(W, H, 0.5, percdamp=0.1, blocksize=4)
    Hd = H + 0.1 * torch.diag(H).mean() * torch.eye(16, dtype=H.dtype)
    torch.testing.assert_close(W_new, obs_prune_columns(W, torch.linalg.inv(Hd), mask), atol=1e-5, rtol=1e-5)


def _reference_sparsegpt(W, H, p, B_s, n=0, m=0):
    """Algorithm 1 with exact OBS steps and explicit downdates instead of the Cholesky factor and lazy batches.

    Every B_s columns the mask is chosen by w_c^2 / [H_c^-1]_cc with H_c = H[c:, c:], the Hessian left when
    the sweep reaches column c: the squared diagonal of the Cholesky factor that the paper reads it from.
    """
    W, Hinv = W.clone(), torch.linalg.inv(H)
    d = torch.stack([torch.linalg.inv(H[c:, c:])[0, 0] for c in range(H.shape[0])])
    keep = torch.ones_like(W, dtype=torch.bool)
    for j in range(W.shape[1]):
        if j % B_s == 0:
            error = W[:, j : j + B_s] ** 2 / d[j : j + B_s]
            keep[:, j : j + B_s] = nm_mask(error, n, m) if n else ~lowest_k_pruned(
                error.flatten(), int(p * error.numel())).reshape(error.shape)
        W -= torch.outer(torch.where(keep[:, j], 0.0, W[:, j]) / Hinv[j, j], Hinv[j])
        W[~keep[:, j], j] = 0
        Hinv = obs_downdate(Hinv, j)
    return W, keep


@pytest.mark.parametrize(("n", "m", "B", "B_s"), [(0, 0, 32, None), (0, 0, 16, 4), (0, 0, 8, 8), (2, 4, 16, None)])
def test_sparsegpt_equals_algorithm1_with_exact_obs_and_mask_selection(n, m, B, B_s):
    H = _hessian(32, 256, 0)
    W = torch.randn(8, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    W_new, keep = sparsegpt_prune(W, H, 0.5, n, m, blocksize=B, percdamp=0.0, mask_blocksize=B_s)
    W_ref, keep_ref = _reference_sparsegpt(W, H, 0.5, m or B_s or B, n, m)
    assert torch.equal(keep, keep_ref)
    torch.testing.assert_close(W_new, W_ref, atol=1e-4, rtol=1e-4)  # float32 inside


def test_mask_blocksize_prunes_exactly_p_of_every_slice():
    W = torch.randn(8, 48, generator=torch.Generator().manual_seed(6))
    _, keep = sparsegpt_prune(W, _hessian(48, 192, 7).float(), 0.75, blocksize=24, mask_blocksize=6)
    assert (~keep).reshape(8, 8, 6).sum(dim=(0, 2)).tolist() == [int(0.75 * 8 * 6)] * 8


@pytest.mark.parametrize("kwargs", [dict(mask_blocksize=5), dict(mask_blocksize=0), dict(n=2, m=4, mask_blocksize=8)])
def test_mask_blocksize_must_divide_blocksize_and_be_m_for_nm(kwargs):
    with pytest.raises(ValueError, match="mask_blocksize"):
        sparsegpt_prune(torch.randn(4, 16), torch.eye(16), 0.5, blocksize=16, **kwargs)
