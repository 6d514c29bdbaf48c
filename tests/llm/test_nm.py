"""N:M mask selection: the subject text's Example 3, and argument checks."""

import pytest
import torch

from lottery.pruning.nm import check_nm, nm_mask

# Example 3 of /work/shared/seed/000_58bc78996d89e78b.txt: 2:4 greedy selection on a 4x8 matrix.
W_EX3 = torch.tensor([
    [0.5, -0.3, 1.2, 0.0, -0.8, 0.1, 2.1, -0.4],
    [0.2, 0.9, 0.1, -1.1, 0.6, 0.3, -0.2, 0.7],
    [1.5, 0.4, -0.5, 0.8, 0.0, -1.3, 0.2, 0.9],
    [-0.1, 0.3, 1.1, 0.4, -0.6, 0.0, 0.8, -0.5],
])
EXPECTED_EX3 = torch.tensor([
    [0.5, 0, 1.2, 0, -0.8, 0, 2.1, 0],
    [0, 0.9, 0, -1.1, 0.6, 0, 0, 0.7],
    [1.5, 0, 0, 0.8, 0, -1.3, 0, 0.9],
    [0, 0, 1.1, 0.4, -0.6, 0, 0.8, 0],
])


def test_example3_two_four_selection_matches_text():
    mask = nm_mask(W_EX3.abs(), 2, 4)
    assert torch.equal(W_EX3 * mask, EXPECTED_EX3)
    assert int(mask.sum()) == 16  # 8 groups x 2 kept
    assert check_nm(mask, 2, 4) and check_nm(W_EX3 * mask, 2, 4)


def test_nm_keeps_largest_per_group_for_other_patterns():
    score = torch.tensor([[5.0, 1, 4, 2, 3, 8, 7, 6]])
    assert nm_mask(score, 1, 4).tolist() == [[True, False, False, False, False, True, False, False]]
    assert nm_mask(score, 3, 8).tolist() == [[False, False, False, False, False, True, True, True]]
    assert nm_mask(score, 4, 4).all()


def test_check_nm_rejects_violations():
    assert not check_nm(torch.tensor([[1.0, 1.0, 1.0, 0.0]]), 2, 4)
    assert check_nm(torch.tensor([[1.0, 0.0, 1.0, 0.0]]), 2, 4)
    assert not check_nm(torch.ones(2, 6), 2, 4)  # last dim not a multiple of m


@pytest.mark.parametrize(
    ("n", "m", "cols", "match"),
    [(3, 2, 4, "n <= m"), (-1, 4, 8, "n >= 0"), (1, 0, 8, "m > 0"), (2, 4, 6, "last dim \\(6\\) divisible by m=4")],
)
def test_nm_mask_bad_arguments(n, m, cols, match):
    with pytest.raises(ValueError, match=match):
        nm_mask(torch.rand(2, cols), n, m)
