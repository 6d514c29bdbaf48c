"""What the model passes to each of its blocks, recorded during one dense forward, and how to replay it.

Every block gets its own arguments: position embeddings, attention masks, cache positions, ... differ from
block to block in families that alternate sliding-window and global attention (Gemma 2/3). A forward
pre-hook on every block records them while the model runs the first calibration row; the other rows only
run up to block 0 (their hidden states are all the driver needs). The replay calls a block with its own
recorded arguments and the hidden states replaced by the (pruned) stream. Arguments are assumed not to
depend on the tokens (no padding: every row has the same length), as in the papers' protocol.

``layer_groups`` derives the true-sequential groups from the block's own forward instead of a family table:
layers that read the same input tensor (q/k/v; gate/up) form one group, groups ordered by first call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache

from lottery.errors import ConfigError


class _StopForward(Exception):
    """Raised by a capture hook: nothing after the recorded block needs to run."""


@dataclass
class BlockCall:
    """A block's arguments other than the hidden states, and where the hidden states go."""

    args: tuple
    kwargs: dict
    hidden_kw: bool = False  # the model passed ``hidden_states=`` as a keyword

    def to(self, device: torch.device) -> BlockCall:
        return BlockCall(_to(self.args, device), _to(self.kwargs, device), self.hidden_kw)


@dataclass
class Captured:
    """Hidden states entering block 0 (one [1, seqlen, hidden] tensor per calibration row) and every block's call."""

    inputs: list[Tensor]
    calls: list[BlockCall]


def _to(value: Any, device: torch.device) -> Any:
    """`value` with every tensor inside tuples, lists and dicts moved to `device`."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _no_cache(value: Any) -> Any:
    # A KV cache replayed across calibration samples would grow and mix them; blocks must see none.
    return None if isinstance(value, Cache) else value


def _split_call(args: tuple, kwargs: dict, index: int) -> tuple[Tensor, BlockCall]:
    """The hidden states and the rest of one block call."""
    if args:
        hidden, rest, kw, by_name = args[0], args[1:], dict(kwargs), False
    elif "hidden_states" in kwargs:
        kw = dict(kwargs)
        hidden, rest, by_name = kw.pop("hidden_states"), (), True
    else:
        raise ConfigError(f"block {index} was called without positional arguments or hidden_states= "
                          f"(keywords: {sorted(kwargs)}); cannot tell which argument is the hidden stream")
    kw = {k: _no_cache(v) for k, v in kw.items()}
    if "use_cache" in kw:
        kw["use_cache"] = False
    return hidden.detach(), BlockCall(tuple(_no_cache(a) for a in rest), kw, by_name)


@contextlib.contextmanager
def outside_blocks_on(model: nn.Module, blocks_path: str, device: torch.device) -> Iterator[None]:
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


@torch.no_grad()
def capture(model: nn.Module, blocks_path: str, blocks: nn.ModuleList, calib_ids: Tensor,
            device: torch.device) -> Captured:
    """Block 0's input for every row of ``calib_ids`` [nsamples, seqlen] and every block's own arguments.

    Only the modules outside the blocks and, one at a time during row 0, the blocks themselves sit on
    ``device``; the last block is never run.
    """
    inputs: list[Tensor] = []
    calls: list[BlockCall | None] = [None] * len(blocks)
    last = len(blocks) - 1

    def record(i: int, first_row: bool):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden, call = _split_call(args, kwargs, i)
            if i == 0:
                inputs.append(hidden)
            if not first_row or i == last:
                if first_row:
                    calls[i] = call
                raise _StopForward
            calls[i] = call
            module.to(device)
        return hook

    def home_hook(home: torch.device):
        def hook(module: nn.Module, _args: tuple, _out: Any) -> None:  # returns None: the output stays
            module.to(home)
        return hook

    with outside_blocks_on(model, blocks_path, device):
        handles = [b.register_forward_pre_hook(record(i, True), with_kwargs=True) for i, b in enumerate(blocks)]
        handles += [b.register_forward_hook(home_hook(next(b.parameters()).device)) for b in blocks]
        try:
            with contextlib.suppress(_StopForward):
                model(input_ids=calib_ids[:1].to(device))
        finally:
            for handle in handles:
                handle.remove()
        missing = [i for i, c in enumerate(calls) if c is None]
        if missing:
            raise ConfigError(f"{type(model).__name__}'s forward did not call blocks {missing} of {blocks_path}; "
                              "the block list found is not the model's decoder stack")
        handle = blocks[0].register_forward_pre_hook(record(0, False), with_kwargs=True)
        try:
            for j in range(1, calib_ids.shape[0]):
                with contextlib.suppress(_StopForward):
                    model(input_ids=calib_ids[j : j + 1].to(device))
        finally:
            handle.remove()
    return Captured(inputs, calls)  # type: ignore[arg-type]


def hidden_of(out: Any) -> Tensor:
    """The hidden states a block returned (a tensor, or the first item of a tuple in older families)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def call_block(block: nn.Module, x: Tensor, call: BlockCall) -> Tensor:
    """One block on hidden states ``x`` with its recorded arguments."""
    if call.hidden_kw:
        return hidden_of(block(*call.args, hidden_states=x, **call.kwargs))
    return hidden_of(block(x, *call.args, **call.kwargs))


def run_block(block: nn.Module, inps: Sequence[Tensor], call: BlockCall) -> list[Tensor]:
    """Run one block on every captured input."""
    return [call_block(block, x, call) for x in inps]


@torch.no_grad()
def layer_groups(block: nn.Module, layers: dict[str, nn.Module], x: Tensor, call: BlockCall) -> list[list[str]]:
    """True-sequential groups of ``layers`` (a block's ``{name: module}``) from one forward on ``x``.

    Layers whose input is the same tensor (same storage, offset, shape and strides) share a group; groups
    are ordered by their first call, names within a group in module order. Layers that ``x`` never reaches
    (experts no token was routed to) form one last group.
    """
    seen: list[tuple[str, tuple]] = []
    keep: list[Tensor] = []  # references keep storage alive so a data pointer is not reused mid-forward

    def hook(name: str):
        def fn(_module: nn.Module, inp: tuple, _out: Any) -> None:
            t = inp[0]
            keep.append(t)
            seen.append((name, (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())))
        return fn

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    try:
        call_block(block, x, call)
    finally:
        for handle in handles:
            handle.remove()
    order = list(layers)
    groups: dict[tuple, list[str]] = {}
    placed: set[str] = set()
    for name, key in seen:
        if name not in placed:
            groups.setdefault(key, []).append(name)
            placed.add(name)
    result = [sorted(g, key=order.index) for g in groups.values()]
    uncalled = [name for name in order if name not in placed]
    return result + ([uncalled] if uncalled else [])
