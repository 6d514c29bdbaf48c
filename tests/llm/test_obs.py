"""Exact OBS against the subject text's Example 2, and SparseGPT's Cholesky sweep against exact OBS."""

import torch

from lottery.llm import obs_prune_columns, obs_prune_step, sparsegpt_prune

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
