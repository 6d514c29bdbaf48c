"""The papers' sequential one-shot protocol: prune block by block, feeding each block the pruned outputs.

Block 0's inputs are captured with a forward pre-hook that aborts the model's forward; after that each
block runs on its own: collect per-layer input statistics, prune, re-run the *pruned* block to get the
next block's inputs. Only the current block sits on ``device``, so peak accelerator memory is about one
block plus the calibration activations.

With several ``devices`` the calibration is data-parallel: each device holds a replica of the current block
and a share of the calibration rows; the per-device input statistics are merged (sample-weighted) before
the solve on the first device, and the pruned weights are copied back into the replicas.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.cache_utils import Cache

from lottery.llm.adapters import (
    find_blocks,
    find_layers,
    get_family,
    get_weight,
    sequential_groups,
    set_weight,
    to_param_layout,
)
from lottery.llm.magnitude import magnitude_prune
from lottery.llm.report import LayerReport, PruneReport
from lottery.llm.sparsegpt import sparsegpt_prune
from lottery.llm.stats import InputStats, relative_error
from lottery.llm.wanda import wanda_prune
from lottery.pruning.nm import check_nm

METHODS = ("magnitude", "wanda", "sparsegpt")


class _StopForward(Exception):
    """Raised by the capture hook: nothing after block 0 needs to run."""


def _no_cache(value: Any) -> Any:
    # A KV cache replayed across calibration samples would grow and mix them; blocks must see none.
    return None if isinstance(value, Cache) else value


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, calib_ids: Tensor, device: torch.device
) -> tuple[list[Tensor], tuple, dict]:
    """Hidden states entering ``blocks[0]`` for each calibration row, plus the other args/kwargs.

    The extra arguments (attention mask, position ids, Llama's ``position_embeddings``, GPT-2/BERT's
    positional ``cache``/``attention_mask``, ...) are taken from the first row: rows share one length.
    """
    inps: list[Tensor] = []
    saved: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if args:
            hidden, rest = args[0], args[1:]
        else:
            kwargs = dict(kwargs)
            hidden, rest = kwargs.pop("hidden_states"), ()
        inps.append(hidden.detach())
        if not saved:
            saved["args"] = tuple(_no_cache(a) for a in rest)
            saved["kwargs"] = {k: _no_cache(v) for k, v in kwargs.items()}
            if "use_cache" in saved["kwargs"]:
                saved["kwargs"]["use_cache"] = False
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for j in range(calib_ids.shape[0]):
            with contextlib.suppress(_StopForward):
                model(input_ids=calib_ids[j : j + 1].to(device))
    finally:
        handle.remove()
    return inps, saved["args"], saved["kwargs"]


def run_block(block: nn.Module, inps: Sequence[Tensor], args: tuple, kwargs: dict) -> list[Tensor]:
    """Run one block on every captured input; tolerates blocks that return a tuple (transformers 4.x)."""
    outs = []
    for x in inps:
        out = block(x, *args, **kwargs)
        outs.append(out[0] if isinstance(out, (tuple, list)) else out)
    return outs


@contextlib.contextmanager
def _outside_blocks_on(model: nn.Module, blocks_path: str, device: torch.device) -> Iterator[None]:
    """Temporarily move every module that is not a transformer block (embeddings, rotary, ...) to device."""
    home = next(model.parameters()).device
    moved: list[nn.Module] = []
    module = model
    for part in blocks_path.split("."):
        moved += [child for name, child in module.named_children() if name != part]
        module = getattr(module, part)
    try:
        for child in moved:
            child.to(device)
        yield
    finally:
        for child in moved:
            child.to(home)


def _prune_layer(method: str, W: Tensor, stats: InputStats | None, sparsity: float, opts: dict) -> tuple:
    n, m = opts["n"], opts["m"]
    if method == "magnitude":
        return magnitude_prune(W, sparsity, n, m, per_row=opts["per_row"])
    if method == "wanda":
        return wanda_prune(W, stats.sq_norm, sparsity, n, m)
    return sparsegpt_prune(W, stats.H, sparsity, n, m, blocksize=opts["blocksize"], percdamp=opts["percdamp"])


def _to(value: Any, device: torch.device) -> Any:
    """`value` with every tensor inside tuples, lists and dicts moved to `device`."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


@dataclass
class _Shard:
    """One device's part of the calibration: a replica of the current block and its share of the rows."""

    device: torch.device
    inps: list[Tensor]
    args: tuple
    kwargs: dict
    block: nn.Module | None = None
    layers: dict[str, nn.Module] | None = None


def _merge_stats(parts: list[InputStats], device: torch.device) -> InputStats:
    """Statistics of the union of the shards' rows: the running averages weighted by their sample counts."""
    if len(parts) == 1:
        return parts[0]
    total = sum(p.nsamples for p in parts)
    merged = InputStats(parts[0].sq_norm.shape[0], device, gram=parts[0].H is not None)
    merged.nsamples = total
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
            run_block(shard.block, shard.inps, shard.args, shard.kwargs)
        finally:
            for handle in handles:
                handle.remove()
        per_shard.append(stats)
    return {name: _merge_stats([stats[name] for stats in per_shard], shards[0].device) for name in names}


def _prune_block(shards: list[_Shard], groups: list[list[str]], report: PruneReport, opts: dict) -> None:
    """Prune one block's layer groups in order; each group's statistics see the earlier groups pruned.

    The solve runs on the first shard's block; the other replicas get the pruned weights copied in.
    """
    method, n, m = report.method, opts["n"], opts["m"]
    main = shards[0]
    for names in groups:
        stats = {}
        if main.inps:
            gram = opts["record_error"] or method == "sparsegpt"
            stats = _collect_stats(shards, names, gram)
        for name in names:
            module, st = main.layers[name], stats.get(name)
            W = get_weight(module)
            W_new, mask = _prune_layer(method, W, st, report.sparsity, opts)
            err = relative_error(W, W_new, st.H) if st is not None and st.H is not None else None
            set_weight(module, W_new)
            for replica in shards[1:]:
                replica.layers[name].weight.data.copy_(module.weight.data)
            report.masks[f"{name}.weight"] = to_param_layout(module, mask).cpu()
            report.layers.append(LayerReport(
                name=name, shape=tuple(W.shape), pruned=int((~mask).sum()), numel=mask.numel(),
                rel_error=err, nm_valid=check_nm(mask, n, m) if (n or m) else None,
            ))
        del stats


@torch.no_grad()
def prune_model(
    model: nn.Module,
    method: str,
    sparsity: float,
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
    device: torch.device | str | None = None,
    devices: Sequence[torch.device | str] | None = None,
    record_error: bool = True,
    progress: bool = True,
) -> PruneReport:
    """Prune the linear layers of every transformer block of a Hugging Face ``model`` in place.

    ``method``: "magnitude", "wanda" or "sparsegpt"; ``calib_ids`` [nsamples, seqlen] token ids (optional
    for magnitude, then no errors are recorded). ``device`` is where each block is computed (default: the
    model's device); the other blocks stay where they are. ``true_sequential`` prunes q/k/v, then the
    attention output, then up/gate, then down, re-collecting statistics after each group. Embeddings and
    heads are never touched; ``include``/``exclude`` are globs over full layer names. ``devices`` (two or
    more) makes the calibration data-parallel: rows are dealt round-robin to replicas of the current block
    on each device, and their statistics merged before each solve on ``devices[0]``. Returns a PruneReport
    (per-layer sparsity, ||WX - W'X|| / ||WX|| on the calibration inputs, N:M validity, keep-masks).
    """
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {METHODS}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if calib_ids is None and method != "magnitude":
        raise ValueError(f"{method} needs calibration data (calib_ids)")
    if calib_ids is not None and calib_ids.dim() != 2:
        raise ValueError(f"calib_ids must be [nsamples, seqlen], got shape {tuple(calib_ids.shape)}")
    family = get_family(model)
    blocks_path, blocks = find_blocks(model)
    if devices is not None and len(devices) > 1:
        device_list = [torch.device(d) for d in devices]
    else:
        device_list = [torch.device(device) if device is not None else next(model.parameters()).device]
    device = device_list[0]
    opts = {"n": n, "m": m, "per_row": per_row, "blocksize": blocksize, "percdamp": percdamp,
            "record_error": record_error, "device": device}
    report = PruneReport(method=method, sparsity=float(sparsity), n=n, m=m)

    use_cache, was_training = getattr(model.config, "use_cache", None), model.training
    model.eval()
    model.config.use_cache = False
    try:
        inps, args, kwargs = [], (), {}
        if calib_ids is not None:
            with _outside_blocks_on(model, blocks_path, device):
                inps, args, kwargs = capture_block_inputs(model, blocks, calib_ids, device)
        shards = [_Shard(d, [x.to(d) for x in inps[k::len(device_list)]], _to(args, d), _to(kwargs, d))
                  for k, d in enumerate(device_list)]
        del inps
        for i in tqdm(range(len(blocks)), desc=f"{method} pruning", unit="block", disable=not progress):
            block, prefix = blocks[i], f"{blocks_path}.{i}"
            home = next(block.parameters()).device
            block.to(device)
            for k, shard in enumerate(shards):
                shard.block = block if k == 0 else copy.deepcopy(block).to(shard.device)
                shard.layers = find_layers(shard.block, prefix, include, exclude)
            names = list(shards[0].layers)
            groups = sequential_groups(family, names, prefix) if true_sequential else [names]
            _prune_block(shards, groups, report, opts)
            for shard in shards:
                if shard.inps:
                    shard.inps = run_block(shard.block, shard.inps, shard.args, shard.kwargs)  # feeds the next block
                shard.block, shard.layers = None, None
            block.to(home)
    finally:
        model.config.use_cache = use_cache
        model.train(was_training)
    return report
