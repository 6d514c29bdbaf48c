"""2:4 values + 2-bit index packing: exact round trip on CPU (torch has no CPU semi-structured path)."""

import pytest
import torch

from lottery.export import pack_24, unpack_24
from lottery.pruning.nm import check_nm, nm_mask


def _sparse24(rows: int, cols: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    return (w * nm_mask(w.abs(), 2, 4)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_is_exact(dtype):
    w = _sparse24(24, 64, dtype)
    p = pack_24(w)
    assert p.values.shape == (24, 32) and p.meta.shape == (24, 8) and p.meta.dtype == torch.uint8
    assert torch.equal(unpack_24(p), w)


def test_groups_with_fewer_than_two_nonzeros_round_trip():
    w = _sparse24(4, 16, torch.float32)
    w[0, :4] = 0
    w[1, 4:8] = torch.tensor([0.0, 0.0, 0.0, -3.0])
    w[2] = 0
    assert check_nm(w, 2, 4)
    assert torch.equal(unpack_24(pack_24(w)), w)


def test_indices_are_sorted_and_values_in_order():
    w = torch.zeros(1, 8)
    w[0, 1], w[0, 3], w[0, 4], w[0, 6] = 1.0, 2.0, 3.0, 4.0
    p = pack_24(w)
    assert p.values.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    # group 0 keeps (1, 3) -> 1 | 3 << 2 = 13; group 1 keeps (0, 2) -> 0 | 2 << 2 = 8; one byte per two groups
    assert p.meta.tolist() == [[13 | 8 << 4]]


def test_rejects_non_24_and_bad_shapes():
    with pytest.raises(ValueError, match="not 2:4"):
        pack_24(torch.ones(2, 8))
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_24(torch.zeros(2, 12))


def test_packed_size_is_about_56_percent_of_dense_fp16():
    w = _sparse24(64, 256, torch.float16)
    ratio = pack_24(w).nbytes() / (w.numel() * w.element_size())
    assert ratio == pytest.approx(0.5625)
