"""Accelerator path: the model stays on CPU and only the block being pruned visits the GPU."""

import pytest
import torch
from tiny_hf import FAMILIES, calib_ids, tiny_model

from lottery.llm import find_blocks, prune_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_only_current_block_on_gpu_and_same_result_as_cpu(family, method):
    ids = calib_ids(8, 32)
    cpu_model, gpu_model = tiny_model(family), tiny_model(family)
    cpu_report = prune_model(cpu_model, method, 0.5, ids, true_sequential=True, progress=False)

    _, blocks = find_blocks(gpu_model)
    placements = []

    def record(module, _args, _out):
        placements.append((module, [next(b.parameters()).device.type for b in blocks]))

    # After each block's forward: capture moves a block to the GPU in its own pre-hook (which runs after any
    # hook registered here) and home again in its forward hook (likewise after this one), so this sees the
    # placement the block computed with.
    for block in blocks:
        block.register_forward_hook(record)
    gpu_report = prune_model(gpu_model, method, 0.5, ids, true_sequential=True, device="cuda", progress=False)

    assert placements
    for module, devices in placements:
        i = next(k for k, b in enumerate(blocks) if b is module)
        assert devices[i] == "cuda"  # every block computes on the GPU, the capture pass included
        assert devices.count("cuda") == 1  # and alone there
    assert all(p.device.type == "cpu" for p in gpu_model.parameters())
    assert all(b.device.type == "cpu" for b in gpu_model.buffers())
    assert gpu_report.total_sparsity == cpu_report.total_sparsity == 0.5
    for a, b in zip(cpu_report.layers, gpu_report.layers, strict=True):
        assert a.name == b.name and a.rel_error == pytest.approx(b.rel_error, rel=5e-2, abs=1e-3)
