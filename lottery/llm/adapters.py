"""Where the transformer blocks and their prunable layers live in a Hugging Face model, found generically.

Blocks: the ``nn.ModuleList`` whose elements are of a class the model names in ``_no_split_modules`` (the
classes ``accelerate`` must never split across devices are exactly its repeated blocks), else the outermost,
longest ModuleList of identical modules that hold linear layers. ``BLOCK_PATHS`` overrides the search for a
``model_type`` where it would pick wrong.

Layers: every ``nn.Linear`` and ``Conv1D`` inside a block, minus the routers/gates of mixture-of-experts
blocks (a linear that is a direct child of a module holding ``experts``). The pruning algorithms see every
weight as W [d_out, d_in] acting as y = W x; ``LAYOUTS`` is the one small registry of weight layouts that
differ from that (GPT-2's ``Conv1D`` stores [d_in, d_out]). Fused mixture-of-experts weights (3-D parameters)
are handled by ``lottery.llm.experts``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from lottery.errors import ConfigError


@dataclass(frozen=True)
class Layout:
    """How a layer type stores its weight relative to W [d_out, d_in]."""

    to_out_in: Callable[[Tensor], Tensor]  # the stored weight (or a mask of its shape) -> [d_out, d_in] view
    from_out_in: Callable[[Tensor], Tensor]  # [d_out, d_in] -> the stored layout


def _same(t: Tensor) -> Tensor:
    return t


def _transposed(t: Tensor) -> Tensor:
    return t.t()


LAYOUTS: dict[type[nn.Module], Layout] = {
    nn.Linear: Layout(_same, _same),
    Conv1D: Layout(_transposed, _transposed),  # GPT-2 family: y = x W + b with W [d_in, d_out]
}
BLOCK_PATHS: dict[str, str] = {}  # model_type -> dotted path of the block list, where the search needs help
MOE_CONTAINER_CHILD = "experts"  # a module with a child of this name is a mixture-of-experts block


def _layout(module: nn.Module) -> Layout:
    for cls in type(module).__mro__:
        if cls in LAYOUTS:
            return LAYOUTS[cls]
    raise TypeError(f"{type(module).__name__} is not a prunable layer type ({', '.join(c.__name__ for c in LAYOUTS)})")


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, tuple(LAYOUTS))


def _identical_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every non-empty ModuleList whose elements share one class and hold a prunable layer, outermost first."""
    found = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(b) for b in module}) == 1 and any(is_prunable(m) for m in module[0].modules()):
            found.append((path, module))
    return found


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(path, blocks)``: the dotted path of the transformer-block ModuleList and the list itself.

    ConfigError (naming what was searched) when no block list is found, or when two lists of blocks are
    equally good (encoder-decoder models such as T5 have one per stack).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in BLOCK_PATHS:
        blocks = model.get_submodule(BLOCK_PATHS[model_type])
        return BLOCK_PATHS[model_type], blocks
    candidates = _identical_lists(model)
    named = set(getattr(model, "_no_split_modules", None) or ())
    preferred = [(p, b) for p, b in candidates if type(b[0]).__name__ in named]
    if not preferred:  # outermost lists only: a list nested in another list's element is not the stack
        preferred = [(p, b) for p, b in candidates
                     if not any(p != q and p.startswith(q + ".") for q, _ in candidates)]
    if not preferred:
        lists = [p for p, m in model.named_modules() if isinstance(m, nn.ModuleList)]
        raise ConfigError(
            f"no decoder blocks found in {type(model).__name__} (model_type={model_type!r}): searched for an "
            f"nn.ModuleList of modules named in _no_split_modules={sorted(named)} or of identical modules with "
            f"Linear/Conv1D layers; ModuleLists present: {lists or 'none'}"
        )
    longest = max(len(b) for _, b in preferred)
    best = [(p, b) for p, b in preferred if len(b) == longest]
    if len(best) > 1:
        raise ConfigError(
            f"{type(model).__name__} (model_type={model_type!r}) has several block lists "
            f"({', '.join(p for p, _ in best)}); only decoder-only and encoder-only models are supported"
        )
    return best[0]


def _as_patterns(patterns: str | Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    if patterns is None:
        return tuple(default)
    return (patterns,) if isinstance(patterns, str) else tuple(patterns)


def router_names(block: nn.Module) -> set[str]:
    """Relative names of the routers/gates of mixture-of-experts modules in ``block``.

    A prunable layer that is a direct child of a module holding ``experts`` decides routing (Mixtral's
    ``gate``, Qwen-MoE's ``shared_expert_gate``): pruning it changes which experts run, so it stays dense.
    """
    names = set()
    for path, module in block.named_modules():
        if MOE_CONTAINER_CHILD not in dict(module.named_children()):
            continue
        for child_name, child in module.named_children():
            if child_name != MOE_CONTAINER_CHILD and is_prunable(child):
                names.add(f"{path}.{child_name}" if path else child_name)
    return names


def find_layers(
    block: nn.Module,
    prefix: str = "",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    routers: bool = False,
) -> dict[str, nn.Module]:
    """Linear/Conv1D layers inside ``block`` as ``{full_name: module}``, in module order.

    Full names are ``prefix + "." + relative name``; ``include`` (default ``"*"``) and ``exclude``
    (default none) are fnmatch globs over them, so ``"*mlp*"`` or ``"*.0.self_attn.q_proj"`` both work.
    Mixture-of-experts routers are left out unless ``routers``.
    """
    inc, exc = _as_patterns(include, ("*",)), _as_patterns(exclude, ())
    skip = set() if routers else router_names(block)
    layers = {}
    for rel, module in block.named_modules():
        if not rel or not is_prunable(module) or rel in skip:
            continue
        name = f"{prefix}.{rel}" if prefix else rel
        if any(fnmatch.fnmatchcase(name, p) for p in inc) and not any(fnmatch.fnmatchcase(name, p) for p in exc):
            layers[name] = module
    return layers


def get_weight(module: nn.Module) -> Tensor:
    """The weight as W [d_out, d_in] (a transposed view for Conv1D)."""
    return _layout(module).to_out_in(module.weight.data)


def set_weight(module: nn.Module, W: Tensor) -> None:
    """Write W [d_out, d_in] back in the module's own layout and dtype."""
    module.weight.data.copy_(_layout(module).from_out_in(W))


def to_param_layout(module: nn.Module, mask: Tensor) -> Tensor:
    """A [d_out, d_in] mask in the layout of ``module.weight`` (so ``weight * mask`` applies it)."""
    return _layout(module).from_out_in(mask).contiguous()
