"""Data-parallel calibration across devices gives the same pruning as one device."""

from __future__ import annotations

import pytest
import torch
from tiny_hf import calib_ids, tiny_model

from lottery.llm.sequential import _merge_stats, prune_model
from lottery.llm.stats import InputStats


def test_merged_statistics_equal_one_pass() -> None:
    x = torch.randn(6, 5, 8)
    one = InputStats(8)
    for row in x:
        one.add_batch(row.unsqueeze(0))
    a, b = InputStats(8), InputStats(8)
    for row in x[0::2]:
        a.add_batch(row.unsqueeze(0))
    for row in x[1::2]:
        b.add_batch(row.unsqueeze(0))
    merged = _merge_stats([a, b], torch.device("cpu"))
    assert merged.nsamples == 6
    torch.testing.assert_close(merged.H, one.H)
    torch.testing.assert_close(merged.sq_norm, one.sq_norm)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method,pattern", [("sparsegpt", (0, 0)), ("wanda", (2, 4))])
def test_two_replicas_prune_like_one_device(family: str, method: str, pattern: tuple[int, int]) -> None:
    ids = calib_ids(nsamples=6)
    single, split = tiny_model(family), tiny_model(family)
    a = prune_model(single, method, 0.5, ids, n=pattern[0], m=pattern[1], progress=False, true_sequential=True)
    b = prune_model(split, method, 0.5, ids, n=pattern[0], m=pattern[1], progress=False, true_sequential=True,
                    devices=["cpu", "cpu"])
    assert a.masks.keys() == b.masks.keys()
    agree = sum(int((a.masks[k] == b.masks[k]).sum()) for k in a.masks) / sum(m.numel() for m in a.masks.values())
    assert agree > 0.999  # only float summation order differs
    for (name, p), q in zip(single.named_parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=name)
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert la.rel_error == pytest.approx(lb.rel_error, rel=1e-3, abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_prune_like_one() -> None:
    ids = calib_ids(nsamples=8)
    single, split = tiny_model("llama"), tiny_model("llama")
    a = prune_model(single, "sparsegpt", 0.5, ids, device="cuda:0", progress=False)
    b = prune_model(split, "sparsegpt", 0.5, ids, devices=["cuda:0", "cuda:1"], progress=False)
    agree = sum(int((a.masks[k] == b.masks[k]).sum()) for k in a.masks) / sum(m.numel() for m in a.masks.values())
    assert agree > 0.999
    assert all(p.device.type == "cpu" for p in split.parameters())
