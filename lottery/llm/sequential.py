"""The papers' sequential one-shot protocol: prune block by block, feeding each block the pruned outputs.

Block 0's inputs are captured with a forward pre-hook that aborts the model's forward; after that each
block runs on its own: collect per-layer input statistics, prune, re-run the *pruned* block to get the
next block's inputs. Only the current block sits on ``device``, so peak accelerator memory is about one
block plus the calibration activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
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


def _collect_stats(
    block: nn.Module, layers: dict[str, nn.Module], inps: list[Tensor], args: tuple, kwargs: dict,
    device: torch.device, gram: bool,
) -> dict[str, InputStats]:
    stats = {name: InputStats(get_weight(module).shape[1], device, gram) for name, module in layers.items()}
    handles = [
        module.register_forward_hook(lambda _mod, inp, _out, st=stats[name]: st.add_batch(inp[0].detach()))
        for name, module in layers.items()
    ]
    try:
        run_block(block, inps, args, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _prune_block(
    block: nn.Module, groups: list[dict[str, nn.Module]], inps: list[Tensor], args: tuple, kwargs: dict,
    report: PruneReport, opts: dict,
) -> None:
    """Prune one block's layer groups in order; each group's statistics see the earlier groups pruned."""
    method, n, m = report.method, opts["n"], opts["m"]
    for layers in groups:
        stats = {}
        if inps:
            gram = opts["record_error"] or method == "sparsegpt"
            stats = _collect_stats(block, layers, inps, args, kwargs, opts["device"], gram)
        for name, module in layers.items():
            st = stats.get(name)
            W = get_weight(module)
            W_new, mask = _prune_layer(method, W, st, report.sparsity, opts)
            err = relative_error(W, W_new, st.H) if st is not None and st.H is not None else None
            set_weight(module, W_new)
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
    record_error: bool = True,
    progress: bool = True,
) -> PruneReport:
    """Prune the linear layers of every transformer block of a Hugging Face ``model`` in place.

    ``method``: "magnitude", "wanda" or "sparsegpt"; ``calib_ids`` [nsamples, seqlen] token ids (optional
    for magnitude, then no errors are recorded). ``device`` is where each block is computed (default: the
    model's device); the other blocks stay where they are. ``true_sequential`` prunes q/k/v, then the
    attention output, then up/gate, then down, re-collecting statistics after each group. Embeddings and
    heads are never touched; ``include``/``exclude`` are globs over full layer names. Returns a PruneReport
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
    device = torch.device(device) if device is not None else next(model.parameters()).device
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
        for i in tqdm(range(len(blocks)), desc=f"{method} pruning", unit="block", disable=not progress):
            block, prefix = blocks[i], f"{blocks_path}.{i}"
            home = next(block.parameters()).device
            block.to(device)
            layers = find_layers(block, prefix, include, exclude)
            names = sequential_groups(family, list(layers), prefix) if true_sequential else [list(layers)]
            groups = [{name: layers[name] for name in group} for group in names]
            _prune_block(block, groups, inps, args, kwargs, report, opts)
            if inps:
                inps = run_block(block, inps, args, kwargs)  # the pruned block feeds the next one
            block.to(home)
    finally:
        model.config.use_cache = use_cache
        model.train(was_training)
    return report
