"""OWL's layerwise outlier ratios: a dense pre-pass over the calibration data, block by block.

OWL (Yin et al. 2024) scores every weight with Wanda's S_ij = |W_ij| * ||X_j||_2 on the *dense* model and calls a
weight an outlier when its score exceeds M times the mean score. OWL's "layer" is a decoder block: as in the
reference code, the scores of all of a block's pruned linears are pooled, so the block's outlier ratio is

    D_b = #{S_ij > M * mean(S) : over every pruned weight of block b} / #(pruned weights of block b).

The pre-pass runs the same capture / run_block machinery as the pruning driver, collecting only Wanda's
per-column statistics (no Gram matrix), and feeds each block the dense outputs of the one before: nothing is
pruned. Fused mixture-of-experts weights are unfolded, as when they are pruned, so the pooled weights are
exactly the weights that the pruning pass will prune.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lottery.llm.adapters import find_blocks, find_layers, get_weight
from lottery.llm.capture import capture, outside_blocks_on, run_block
from lottery.llm.experts import unfused_experts
from lottery.llm.stats import InputStats


@dataclass
class BlockOutliers:
    """Per block: the outlier ratio D_b (a fraction) and the number of pruned weights n_b."""

    ratios: list[float]
    sizes: list[int]


def block_sizes(model: nn.Module, include: str | Sequence[str] | None = None,
                exclude: str | Sequence[str] | None = None) -> list[int]:
    """Number of weights the driver prunes in each block (the allocation's weights n_b)."""
    path, blocks = find_blocks(model)
    sizes = []
    for i, block in enumerate(blocks):
        with unfused_experts(block, f"{path}.{i}"):
            layers = find_layers(block, f"{path}.{i}", include, exclude)
            sizes.append(sum(get_weight(m).numel() for m in layers.values()))
    return sizes


def pooled_outlier_ratio(scores: Sequence[Tensor], m: float) -> float:
    """Share of all entries of ``scores`` (one tensor per layer) above ``m`` times their pooled mean."""
    total = sum(s.numel() for s in scores)
    if total == 0:
        return 0.0
    mean = sum(float(s.double().sum()) for s in scores) / total
    above = sum(int((s > m * mean).sum()) for s in scores)
    return above / total


@torch.no_grad()
def outlier_ratios(
    model: nn.Module,
    calib_ids: Tensor,
    m: float = 5.0,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> BlockOutliers:
    """OWL's outlier ratio of every block of the dense ``model`` (not modified), from Wanda scores on ``calib_ids``."""
    if m <= 0:
        raise ValueError(f"the outlier threshold M must be > 0, got {m}")
    blocks_path, blocks = find_blocks(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    use_cache, was_training = getattr(model.config, "use_cache", None), model.training
    model.eval()
    model.config.use_cache = False
    ratios, sizes = [], []
    try:
        with outside_blocks_on(model, blocks_path, device):
            captured = capture(model, blocks_path, blocks, calib_ids, device)
        inps, captured.inputs = captured.inputs, []
        for i in tqdm(range(len(blocks)), desc="OWL outlier ratios", unit="block", disable=not progress):
            block, prefix = blocks[i], f"{blocks_path}.{i}"
            home = next(block.parameters()).device
            block.to(device)
            call = captured.calls[i].to(device)
            with unfused_experts(block, prefix):
                layers = find_layers(block, prefix, include, exclude)
                stats = {name: InputStats(get_weight(mod).shape[1], device, gram=False) for name, mod in layers.items()}
                handles = [mod.register_forward_hook(lambda _m, inp, _o, st=stats[name]: st.add_batch(inp[0].detach()))
                           for name, mod in layers.items()]
                try:
                    outs = run_block(block, inps, call)  # dense outputs: the next block's inputs
                finally:
                    for handle in handles:
                        handle.remove()
                scores = [get_weight(mod).detach().abs().float() * stats[name].sq_norm.sqrt().reshape(1, -1)
                          for name, mod in layers.items()]
                ratios.append(pooled_outlier_ratio(scores, m))
                sizes.append(sum(s.numel() for s in scores))
                del scores, stats
            inps = outs
            block.to(home)
    finally:
        model.config.use_cache = use_cache
        model.train(was_training)
    return BlockOutliers(ratios, sizes)
