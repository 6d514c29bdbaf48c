"""Where the transformer blocks and their linear layers live in each supported Hugging Face architecture.

The pruning algorithms see every weight as W [d_out, d_in] acting as y = W x. GPT-2's ``Conv1D`` stores its
weight transposed ([d_in, d_out]); ``get_weight``/``set_weight`` hide that here and nowhere else.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class Family:
    """An architecture family: candidate paths to the block list, and its true-sequential layer groups."""

    name: str
    block_paths: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]  # layer names relative to a block, in pruning order


LLAMA = Family(
    "llama",
    ("model.layers",),
    (
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.up_proj", "mlp.gate_proj"),
        ("mlp.down_proj",),
    ),
)
OPT = Family(
    "opt",
    ("model.decoder.layers",),
    (
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.out_proj",),
        ("fc1",),
        ("fc2",),
    ),
)
GPT2 = Family(
    "gpt2", ("transformer.h", "h"), (("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",), ("mlp.c_proj",))
)
BERT = Family(
    "bert",
    ("bert.encoder.layer", "encoder.layer"),
    (
        ("attention.self.query", "attention.self.key", "attention.self.value"),
        ("attention.output.dense",),
        ("intermediate.dense",),
        ("output.dense",),
    ),
)
FAMILIES: dict[str, Family] = {"llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "opt": OPT, "gpt2": GPT2,
                               "bert": BERT}


def get_family(model: nn.Module) -> Family:
    """The family of a Hugging Face model, from ``config.model_type``; ValueError if unsupported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"unsupported architecture model_type={model_type!r} ({type(model).__name__}); "
            f"supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(path, blocks)``: the dotted path of the transformer-block ModuleList and the list itself."""
    family = get_family(model)
    for path in family.block_paths:
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList):
            return path, blocks
    raise ValueError(
        f"{type(model).__name__} ({family.name} family) has none of the block lists {family.block_paths}"
    )


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def _as_patterns(patterns: str | Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    if patterns is None:
        return tuple(default)
    return (patterns,) if isinstance(patterns, str) else tuple(patterns)


def find_layers(
    block: nn.Module,
    prefix: str = "",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> dict[str, nn.Module]:
    """Linear/Conv1D layers inside ``block`` as ``{full_name: module}``, in module order.

    Full names are ``prefix + "." + relative name``; ``include`` (default ``"*"``) and ``exclude``
    (default none) are fnmatch globs over them, so ``"*mlp*"`` or ``"*.0.self_attn.q_proj"`` both work.
    """
    inc, exc = _as_patterns(include, ("*",)), _as_patterns(exclude, ())
    layers = {}
    for rel, module in block.named_modules():
        if not rel or not is_prunable(module):
            continue
        name = f"{prefix}.{rel}" if prefix else rel
        if any(fnmatch.fnmatchcase(name, p) for p in inc) and not any(fnmatch.fnmatchcase(name, p) for p in exc):
            layers[name] = module
    return layers


def sequential_groups(family: Family, names: Sequence[str], prefix: str = "") -> list[list[str]]:
    """Split full layer ``names`` of one block into the family's true-sequential groups, in order.

    Layers the family table does not list go into one last group, so nothing selected is skipped.
    """
    strip = len(prefix) + 1 if prefix else 0
    remaining = list(names)
    groups = []
    for group in family.groups:
        chosen = [name for name in remaining if name[strip:] in group]
        if chosen:
            groups.append(chosen)
            remaining = [name for name in remaining if name not in chosen]
    if remaining:
        groups.append(remaining)
    return groups


def get_weight(module: nn.Module) -> Tensor:
    """The weight as W [d_out, d_in] (a transposed view for Conv1D)."""
    return module.weight.data.t() if isinstance(module, Conv1D) else module.weight.data


def set_weight(module: nn.Module, W: Tensor) -> None:
    """Write W [d_out, d_in] back in the module's own layout and dtype."""
    target = module.weight.data
    target.copy_(W.t() if isinstance(module, Conv1D) else W)


def to_param_layout(module: nn.Module, mask: Tensor) -> Tensor:
    """A [d_out, d_in] mask in the layout of ``module.weight`` (so ``weight * mask`` applies it)."""
    return mask.t().contiguous() if isinstance(module, Conv1D) else mask
