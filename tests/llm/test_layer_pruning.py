"""Layer-level magnitude / Wanda / SparseGPT: worked examples, exact sparsity, relative quality, bad input."""

import logging

import pytest
import torch

from lottery.llm import magnitude_prune, relative_error, sparsegpt_prune, wanda_prune
from lottery.pruning.nm import check_nm


def test_problem3_wanda_ranking_prunes_w6_w4_w3():
    W = torch.tensor([[0.8, 0.05, 1.5, 0.3, 0.01, 0.6]])
    x_norm = torch.tensor([1.0, 20.0, 0.5, 2.0, 100.0, 0.8])
    W_new, mask = wanda_prune(W, x_norm**2, 0.5)  # the API takes squared norms
    assert mask.tolist() == [[True, True, False, False, True, False]]  # w3, w4, w6 pruned
    assert torch.equal(W_new, W * mask)  # no weight update
    # Magnitude would prune w5 (the weight on the most active input) and w2 instead.
    assert magnitude_prune(W, 0.5)[1].tolist() == [[True, False, True, False, False, True]]


def _layer(seed: int, d_out: int = 64, d_in: int = 128, tokens: int = 2048):
    """A weight and inputs X [d_in, tokens] with correlated columns whose norms span ~100x."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.eye(d_in) + torch.randn(d_in, d_in, generator=g) / d_in**0.5
    scales = torch.exp(torch.randn(d_in, generator=g))
    X = (mixing @ torch.randn(d_in, tokens, generator=g)) * scales[:, None]
    return torch.randn(d_out, d_in, generator=g), X


def _output_error(W, W_new, X) -> float:
    return float(((W - W_new) @ X).norm() / (W @ X).norm())


@pytest.mark.parametrize(("n", "m"), [(0, 0), (2, 4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruction_error_sparsegpt_below_wanda_below_magnitude(seed, n, m):
    W, X = _layer(seed)
    H = 2 * X @ X.T / X.shape[1]
    err_sparsegpt = _output_error(W, sparsegpt_prune(W, H, 0.5, n, m)[0], X)
    err_wanda = _output_error(W, wanda_prune(W, (X**2).sum(dim=1), 0.5, n, m)[0], X)
    err_magnitude = _output_error(W, magnitude_prune(W, 0.5, n, m)[0], X)
    assert err_sparsegpt < err_wanda < err_magnitude


def test_relative_error_from_gram_matches_explicit_outputs():
    W, X = _layer(3, 16, 32, 256)
    W_new = magnitude_prune(W, 0.5)[0]
    H = 2 * X @ X.T / X.shape[1]
    assert relative_error(W, W_new, H) == pytest.approx(_output_error(W, W_new, X), rel=1e-4)


def test_sparsegpt_with_identity_hessian_is_per_matrix_magnitude():
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(4))
    W_new, mask = sparsegpt_prune(W, torch.eye(32), 0.5, blocksize=32)
    W_mag, mask_mag = magnitude_prune(W, 0.5)
    assert torch.equal(mask, mask_mag)
    torch.testing.assert_close(W_new, W_mag)  # no off-diagonal curvature, so nothing to compensate


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.7, 0.9])
def test_exact_target_sparsity(sparsity):
    W, X = _layer(5, 32, 64, 512)
    H = 2 * X @ X.T / X.shape[1]
    k_matrix, k_row = int(W.numel() * sparsity), int(W.shape[1] * sparsity)
    assert int((~magnitude_prune(W, sparsity)[1]).sum()) == k_matrix
    assert ((~magnitude_prune(W, sparsity, per_row=True)[1]).sum(dim=1) == k_row).all()
    assert ((~wanda_prune(W, (X**2).sum(1), sparsity)[1]).sum(dim=1) == k_row).all()
    W_new, mask = sparsegpt_prune(W, H, sparsity, blocksize=16)
    assert int((~mask).sum()) == 4 * int(32 * 16 * sparsity)  # int(numel * s) in each of the 4 blocks
    assert int((W_new == 0).sum()) == int((~mask).sum())


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8)])
def test_nm_patterns_are_valid(n, m):
    W, X = _layer(6, 32, 64, 512)
    H = 2 * X @ X.T / X.shape[1]
    for W_new, mask in (magnitude_prune(W, 0.0, n, m), wanda_prune(W, (X**2).sum(1), 0.0, n, m),
                        sparsegpt_prune(W, H, 0.0, n, m, blocksize=16)):
        assert check_nm(mask, n, m) and check_nm(W_new, n, m)
        assert int(mask.sum()) == W.numel() * n // m


def test_sparsegpt_dead_inputs_and_dtype():
    W, X = _layer(7, 8, 16, 128)
    X[3] = 0  # an input that never fires
    H = 2 * X @ X.T / X.shape[1]
    W_new, mask = sparsegpt_prune(W.half(), H, 0.5, blocksize=8)
    assert W_new.dtype == torch.float16
    assert torch.all(W_new[:, 3] == 0)


def test_sparsegpt_retries_with_more_damping_and_warns(caplog):
    H = torch.eye(8)
    H[0, 1] = H[1, 0] = 1.0  # singular: Cholesky fails without damping
    W = torch.randn(4, 8, generator=torch.Generator().manual_seed(8))
    with caplog.at_level(logging.WARNING, logger="lottery.llm.sparsegpt"):
        W_new, mask = sparsegpt_prune(W, H, 0.5, percdamp=0.0)
    assert "Cholesky" in caplog.text
    assert torch.isfinite(W_new).all() and int((~mask).sum()) == 16


BAD = [
    ({"sparsity": -0.1}, "sparsity must be in \\[0, 1\\)"),
    ({"sparsity": 1.0}, "sparsity must be in \\[0, 1\\)"),
    ({"sparsity": 0.5, "n": 4, "m": 2}, "n <= m"),
    ({"sparsity": 0.5, "n": 2, "m": 3}, "divisible by m=3"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    W = torch.randn(4, 8)
    with pytest.raises(ValueError, match=match):
        magnitude_prune(W, **kwargs)
    with pytest.raises(ValueError, match=match):
        wanda_prune(W, torch.ones(8), **kwargs)
    with pytest.raises(ValueError, match=match):
        sparsegpt_prune(W, torch.eye(8), **kwargs)


def test_shape_mismatches_raise():
    W = torch.randn(4, 8)
    with pytest.raises(ValueError, match="x_sq_norm must have shape"):
        wanda_prune(W, torch.ones(7), 0.5)
    with pytest.raises(ValueError, match="H must be"):
        sparsegpt_prune(W, torch.eye(7), 0.5)
    with pytest.raises(ValueError, match="2-D"):
        magnitude_prune(torch.randn(8), 0.5)
    with pytest.raises(ValueError, match="multiple of m"):
        sparsegpt_prune(W, torch.eye(8), 0.5, 2, 4, blocksize=6)
