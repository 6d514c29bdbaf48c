"""SparseGPT's CUDA-graph column loop gives the same weights and masks as the eager loop, bit for bit."""

from __future__ import annotations

import pytest
import torch

import lottery.llm.sparsegpt as sg
from lottery.llm.graph_cache import GraphCache

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize(
    ("n", "m", "d_col", "mask_blocksize"),
    [(0, 0, 256, None), (2, 4, 256, None), (4, 8, 256, None), (0, 0, 256, 16), (0, 0, 200, None), (2, 4, 200, None)],
)
def test_graphed_columns_equal_eager(monkeypatch: pytest.MonkeyPatch, n: int, m: int, d_col: int,
                                     mask_blocksize: int | None) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    W = torch.randn(96, d_col, device="cuda", generator=g)
    X = torch.randn(512, d_col, device="cuda", generator=g)
    H = 2 * X.t() @ X / 512
    kwargs = dict(blocksize=64, mask_blocksize=mask_blocksize)
    sg._GRAPHS.clear()
    graphed = sg.sparsegpt_prune(W, H, 0.5, n, m, **kwargs)
    assert sg._GRAPHS._graphs, "the CUDA-graph path was not taken"
    monkeypatch.setattr(sg, "USE_CUDA_GRAPHS", False)
    eager = sg.sparsegpt_prune(W, H, 0.5, n, m, **kwargs)
    assert torch.equal(graphed[1], eager[1])
    assert torch.equal(graphed[0].view(torch.int32), eager[0].view(torch.int32))


def _axpy(y: torch.Tensor, x: torch.Tensor, a: float) -> None:
    y.add_(x * a)


def test_graph_cache_replays_new_data_and_keys_on_constants() -> None:
    cache = GraphCache()
    x, y = torch.arange(4.0, device="cuda"), torch.ones(4, device="cuda")
    cache(_axpy, (y, x), (2.0,))
    assert y.tolist() == [1.0, 3.0, 5.0, 7.0]  # the capture's warm-up ran on copies, not on y
    cache(_axpy, (y, x), (2.0,))  # replayed on the new contents of y
    assert y.tolist() == [1.0, 5.0, 9.0, 13.0]
    cache(_axpy, (y, x), (-1.0,))  # another constant is another graph
    assert y.tolist() == [1.0, 4.0, 7.0, 10.0] and len(cache._graphs) == 2
    view = torch.zeros(4, 2, device="cuda")[:, 1]  # a strided view is copied back into place
    cache(_axpy, (view, x), (2.0,))
    assert view.tolist() == [0.0, 2.0, 4.0, 6.0] and len(cache._graphs) == 2
