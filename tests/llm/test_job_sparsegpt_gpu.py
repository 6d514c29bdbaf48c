"""SparseGPT's CUDA-graph column loop gives the same weights and masks as the eager loop."""

from __future__ import annotations

import pytest
import torch

import lottery.llm.sparsegpt as sg

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("n", "m"), [(0, 0), (2, 4)])
def test_graphed_sweep_equals_eager(monkeypatch: pytest.MonkeyPatch, n: int, m: int) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    W = torch.randn(96, 256, device="cuda", generator=g)
    X = torch.randn(512, 256, device="cuda", generator=g)
    H = 2 * X.t() @ X / 512
    graphed = sg.sparsegpt_prune(W, H, 0.5, n, m, blocksize=64)
    monkeypatch.setattr(sg, "USE_CUDA_GRAPHS", False)
    eager = sg.sparsegpt_prune(W, H, 0.5, n, m, blocksize=64)
    assert torch.equal(graphed[1], eager[1]) and torch.equal(graphed[0], eager[0])
