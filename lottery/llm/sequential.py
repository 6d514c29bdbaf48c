"""The papers' sequential one-shot protocol: prune block by block, feeding each block the pruned outputs.

Works for any decoder-only (or encoder-only) Hugging Face model: the blocks are found generically
(lottery.llm.adapters), each block's own call arguments are recorded during one dense forward and replayed
(lottery.llm.capture), and the per-layer statistics come from forward hooks on the linears themselves, so an
expert of a mixture-of-experts block sees exactly the tokens routed to it (fused experts are unfolded into
per-expert linears while their block is pruned, lottery.llm.experts). After the capture each block runs on
its own: collect per-layer input statistics, prune, re-run the *pruned* block to get the next block's inputs.
Only the current block sits on ``device``, so peak accelerator memory is about one block plus the
calibration activations.

With several ``devices`` the calibration is data-parallel: each device holds a replica of the current block
and a share of the calibration rows; the per-device input statistics are merged (sample-weighted) before
the solve on the first device, and the pruned weights are copied back into the replicas.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lottery.llm.adapters import find_blocks, find_layers, get_weight, set_weight, to_param_layout
from lottery.llm.capture import BlockCall, Captured, capture, layer_groups, outside_blocks_on, run_block
from lottery.llm.experts import fuse_masks, unfused_experts
from lottery.llm.methods import METHODS, get_method
from lottery.llm.report import LayerReport, PruneReport
from lottery.llm.solvers import magnitude_layer
from lottery.llm.stats import InputStats, relative_error
from lottery.pruning.nm import check_nm

__all__ = ["METHODS", "prune_model"]
log = logging.getLogger(__name__)
NO_TOKENS = "no calibration tokens reached this layer: magnitude fallback"


def _prune_layer(method: str, W: Tensor, stats: InputStats | None, sparsity: float, opts: dict) -> tuple:
    """One layer through the registered solver of ``method``; (W_new, keep_mask)."""
    return get_method(method).load()(W, stats, sparsity, opts)


@dataclass
class _Shard:
    """One device's part of the calibration: a replica of the current block and its share of the rows."""

    device: torch.device
    inps: list[Tensor]
    call: BlockCall | None = None
    block: nn.Module | None = None
    layers: dict[str, nn.Module] | None = None


def _merge_stats(parts: list[InputStats], device: torch.device) -> InputStats:
    """Statistics of the union of the shards' rows: the running averages weighted by their sample counts."""
    if len(parts) == 1:
        return parts[0]
    total = sum(p.nsamples for p in parts)
    merged = InputStats(parts[0].sq_norm.shape[0], device, gram=parts[0].H is not None)
    merged.nsamples = total
    if total == 0:
        return merged
    merged.sq_norm = sum(p.sq_norm.to(device) * (p.nsamples / total) for p in parts)
    if merged.H is not None:
        merged.H = sum(p.H.to(device) * (p.nsamples / total) for p in parts)
    return merged


def _collect_stats(shards: list[_Shard], names: list[str], gram: bool) -> dict[str, InputStats]:
    """Per-layer input statistics of layers `names`, gathered on every shard (queued device by device, so
    accelerators overlap) and merged onto the first shard's device."""
    per_shard = []
    for shard in shards:
        stats = {name: InputStats(get_weight(shard.layers[name]).shape[1], shard.device, gram) for name in names}
        handles = [
            shard.layers[name].register_forward_hook(lambda _m, inp, _o, st=stats[name]: st.add_batch(inp[0].detach()))
            for name in names
        ]
        try:
            run_block(shard.block, shard.inps, shard.call)
        finally:
            for handle in handles:
                handle.remove()
        per_shard.append(stats)
    return {name: _merge_stats([stats[name] for stats in per_shard], shards[0].device) for name in names}


def _prune_block(shards: list[_Shard], groups: list[list[str]], report: PruneReport, opts: dict,
                 sparsity: float) -> None:
    """Prune one block's layer groups in order; each group's statistics see the earlier groups pruned.

    The solve runs on the first shard's block; the other replicas get the pruned weights copied in. A layer
    that no calibration token reached (an expert nobody was routed to) is pruned by magnitude, and reported.
    """
    method, n, m = report.method, opts["n"], opts["m"]
    spec = get_method(method)
    main = shards[0]
    for names in groups:
        stats = {}
        if main.inps:
            gram = opts["record_error"] or spec.needs_gram
            stats = _collect_stats(shards, names, gram)
        for name in names:
            module, st = main.layers[name], stats.get(name)
            W = get_weight(module)
            fallback = None
            if st is not None and st.nsamples == 0:
                st, fallback = None, NO_TOKENS
                log.warning("%s: %s", name, NO_TOKENS)
            if st is None and spec.needs_calibration:
                W_new, mask = magnitude_layer(W, None, sparsity, opts)
            else:
                W_new, mask = _prune_layer(method, W, st, sparsity, opts)
            err = relative_error(W, W_new, st.H) if st is not None and st.H is not None else None
            set_weight(module, W_new)
            for replica in shards[1:]:
                replica.layers[name].weight.data.copy_(module.weight.data)
            report.masks[f"{name}.weight"] = to_param_layout(module, mask).cpu()
            report.layers.append(LayerReport(
                name=name, shape=tuple(W.shape), pruned=int((~mask).sum()), numel=mask.numel(),
                rel_error=err, nm_valid=check_nm(mask, n, m) if (n or m) else None, fallback=fallback,
            ))
        del stats


@torch.no_grad()
def prune_model(
    model: nn.Module,
    method: str,
    sparsity: float | Sequence[float],
    calib_ids: Tensor | None = None,
    *,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    per_row: bool = False,
    true_sequential: bool = False,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    prune_routers: bool = False,
    device: torch.device | str | None = None,
    devices: Sequence[torch.device | str] | None = None,
    record_error: bool = True,
    progress: bool = True,
) -> PruneReport:
    """Prune the linear layers of every transformer block of a Hugging Face ``model`` in place.

    ``method``: a name in ``lottery.llm.methods.METHODS`` (magnitude, wanda, sparsegpt); ``sparsity``: one value
    for every block, or a sequence with one value per block (a layerwise allocation, lottery.llm.allocation; an
    N:M pattern ignores it and must not be given unequal values); ``calib_ids``
    [nsamples, seqlen] token ids (optional for magnitude, then no errors are recorded). ``device`` is where
    each block is computed (default: the model's device); the other blocks stay where they are.
    ``true_sequential`` prunes the layers of a block in groups (layers reading the same input: q/k/v, then
    the attention output, then up/gate, then down), re-collecting statistics after each group. Embeddings,
    heads and mixture-of-experts routers (unless ``prune_routers``) are never touched; ``include``/``exclude``
    are globs over full layer names (experts of fused MoE modules are named ``<experts>.gate_up_proj.<e>``
    and ``<experts>.down_proj.<e>``). ``devices`` (two or more) makes the calibration data-parallel: rows
    are dealt round-robin to replicas of the current block on each device, and their statistics merged
    before each solve on ``devices[0]``. Returns a PruneReport (per-layer sparsity, ||WX - W'X|| / ||WX||
    on the calibration inputs, N:M validity, keep-masks keyed by parameter name).
    """
    spec = get_method(method)
    blocks_path, blocks = find_blocks(model)
    per_block = _block_sparsities(sparsity, len(blocks), n, m)
    if calib_ids is None and spec.needs_calibration:
        raise ValueError(f"{method} needs calibration data (calib_ids)")
    if calib_ids is not None and calib_ids.dim() != 2:
        raise ValueError(f"calib_ids must be [nsamples, seqlen], got shape {tuple(calib_ids.shape)}")
    if devices is not None and len(devices) > 1:
        device_list = [torch.device(d) for d in devices]
    else:
        device_list = [torch.device(device) if device is not None else next(model.parameters()).device]
    device = device_list[0]
    opts = {"n": n, "m": m, "per_row": per_row, "blocksize": blocksize, "percdamp": percdamp,
            "record_error": record_error, "device": device}
    uniform = isinstance(sparsity, (int, float))
    report = PruneReport(method=method, sparsity=float(sparsity) if uniform else 0.0, n=n, m=m, block_sparsity=per_block)

    use_cache, was_training = getattr(model.config, "use_cache", None), model.training
    model.eval()
    model.config.use_cache = False
    try:
        captured = Captured([], [BlockCall((), {}) for _ in blocks])
        if calib_ids is not None:
            with outside_blocks_on(model, blocks_path, device):
                captured = capture(model, blocks_path, blocks, calib_ids, device)
        shards = [_Shard(d, [x.to(d) for x in captured.inputs[k::len(device_list)]])
                  for k, d in enumerate(device_list)]
        captured.inputs = []
        for i in tqdm(range(len(blocks)), desc=f"{method} pruning", unit="block", disable=not progress):
            block, prefix = blocks[i], f"{blocks_path}.{i}"
            home = next(block.parameters()).device
            block.to(device)
            with unfused_experts(block, prefix) as swapped:
                for k, shard in enumerate(shards):
                    shard.block = block if k == 0 else copy.deepcopy(block).to(shard.device)
                    shard.layers = find_layers(shard.block, prefix, include, exclude, routers=prune_routers)
                    shard.call = captured.calls[i].to(shard.device)
                names = list(shards[0].layers)
                if true_sequential and shards[0].inps:
                    groups = layer_groups(block, shards[0].layers, shards[0].inps[0], shards[0].call)
                else:
                    groups = [names]
                _prune_block(shards, groups, report, opts, per_block[i])
            fuse_masks(report.masks, swapped)
            for shard in shards:
                if shard.inps:
                    shard.inps = run_block(shard.block, shard.inps, shard.call)  # feeds the next block
                shard.block, shard.layers, shard.call = None, None, None
            block.to(home)
    finally:
        model.config.use_cache = use_cache
        model.train(was_training)
    if n or m:  # the pattern fixes every block's sparsity
        report.block_sparsity = [1 - n / m] * len(blocks)
    elif not uniform:
        # The target of a layerwise allocation: its per-block values weighted by the weights each block pruned.
        sizes = [sum(lr.numel for lr in report.layers if lr.name.startswith(f"{blocks_path}.{i}."))
                 for i in range(len(blocks))]
        report.sparsity = sum(n_b * s_b for n_b, s_b in zip(sizes, per_block, strict=True)) / max(sum(sizes), 1)
    return report


def _block_sparsities(sparsity: float | Sequence[float], count: int, n: int, m: int) -> list[float]:
    """One sparsity per block; ValueError for values outside [0, 1), a wrong count, or unequal values with N:M."""
    values = [float(sparsity)] * count if isinstance(sparsity, (int, float)) else [float(s) for s in sparsity]
    if len(values) != count:
        raise ValueError(f"sparsity has {len(values)} values but the model has {count} blocks")
    for s in values:
        if not 0.0 <= s < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {s}")
    if (n or m) and len(set(values)) > 1:
        raise ValueError("N:M patterns are uniform by definition; give one sparsity, not one per block")
    return values
