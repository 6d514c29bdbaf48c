"""Structured one-shot pruning of LLaMA-style decoders: whole MLP neurons and whole key/value groups.

Units: an MLP intermediate neuron j is row j of gate_proj and up_proj and column j of down_proj; a key/value
group g (grouped-query attention) is key/value head g (rows of k_proj and v_proj), the n_rep query heads that
read it (rows of q_proj) and their columns of o_proj. With one query head per key/value head it is one head.

Score: Wanda's |W_ij| * ||X_j||_2 (Sun et al. 2023, X = the layer's calibration inputs) summed over every
weight of the unit, in every member layer. The ratio is uniform per block, so every block keeps the same
widths and the narrower model is an ordinary config (`intermediate_size`, `num_attention_heads`,
`num_key_value_heads`, with `head_dim` written out): `export_narrow` saves it with `save_pretrained`, and
plain `AutoModelForCausalLM.from_pretrained` reloads it with the logits of the masked model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lottery.errors import ConfigError, LotteryError
from lottery.export.width import narrow_linear

__all__ = ["StructuredPlan", "apply_mask_", "calibration_norms", "check_structured", "export_narrow", "plan_structured",
           "unit_norms"]

_MLP = ("gate_proj", "up_proj", "down_proj")
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class StructuredPlan:
    """Per decoder block (in order): indices of the kept MLP neurons and of the kept key/value groups."""

    mlp_keep: tuple[Tensor, ...]
    kv_keep: tuple[Tensor, ...]
    head_dim: int
    n_rep: int


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks, each checked to have a LLaMA-style MLP and attention."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ConfigError(f"structured LLM pruning: {type(model).__name__} has no model.layers (LLaMA-style "
                           "decoders only: Llama, Mistral, Qwen2, SmolLM2)")
    for i, block in enumerate(layers):
        for part, names in (("mlp", _MLP), ("self_attn", _ATTN)):
            mod = getattr(block, part, None)
            missing = [n for n in names if not isinstance(getattr(mod, n, None), nn.Linear)]
            if missing:
                raise ConfigError(f"structured LLM pruning: model.layers.{i}.{part} has no nn.Linear "
                                   f"{', '.join(missing)}; its units cannot be resolved")
    return list(layers)


@torch.no_grad()
def calibration_norms(model: nn.Module, batches: Iterable[Tensor]) -> list[dict[str, Tensor]]:
    """Per block: ||X_j||_2 over all calibration tokens of the inputs of gate_proj (= up_proj), down_proj,
    q_proj (= k_proj, v_proj) and o_proj, in float64 on the CPU."""
    blocks = _blocks(model)
    sums: list[dict[str, Tensor]] = [{} for _ in blocks]
    hooks = []
    for i, block in enumerate(blocks):
        for part, name in (("mlp", "gate_proj"), ("mlp", "down_proj"), ("self_attn", "q_proj"),
                           ("self_attn", "o_proj")):
            def hook(_mod: nn.Module, args: tuple, _out: Tensor, i: int = i, name: str = name) -> None:
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                sums[i][name] = sums[i].get(name, 0) + x.pow(2).sum(dim=0).cpu()
            hooks.append(getattr(getattr(block, part), name).register_forward_hook(hook))
    try:
        for ids in batches:
            model(input_ids=ids.to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    if not sums[0]:
        raise ConfigError("structured LLM pruning needs at least one calibration batch")
    return [{k: v.sqrt() for k, v in s.items()} for s in sums]


def unit_norms(model: nn.Module) -> list[dict[str, Tensor]]:
    """All-ones input norms: with them the Wanda unit score is the plain magnitude score sum |W|."""
    out = []
    for block in _blocks(model):
        mlp, attn = block.mlp, block.self_attn
        out.append({"gate_proj": torch.ones(mlp.gate_proj.in_features, dtype=torch.float64),
                    "down_proj": torch.ones(mlp.down_proj.in_features, dtype=torch.float64),
                    "q_proj": torch.ones(attn.q_proj.in_features, dtype=torch.float64),
                    "o_proj": torch.ones(attn.o_proj.in_features, dtype=torch.float64)})
    return out


def _kept(ratio: float, units: int) -> int:
    """How many units of `units` a block keeps at `ratio` removed (the one rounding rule)."""
    return round((1 - ratio) * units)


def check_structured(model: nn.Module, mlp_ratio: float, kv_ratio: float, key: str = "prune.sparsity",
                     note: str = "") -> None:
    """ConfigError (naming `key`, then `note`, and the layer) if the ratios remove every unit of some block, or if the
    model's MLP / attention coupling cannot be resolved; nothing is computed on the weights."""
    for name, ratio in (("mlp_ratio", mlp_ratio), ("kv_ratio", kv_ratio)):
        _check_ratio(name, ratio)
    for i, block in enumerate(_blocks(model)):
        width = block.mlp.up_proj.out_features
        if _kept(mlp_ratio, width) == 0:
            raise ConfigError(f"{key}={mlp_ratio}{note} removes every neuron of model.layers.{i}.mlp ({width}); "
                              f"it must be below {1 - 0.5 / width:.4g}")
        groups = _kv_heads(model.config)
        if _kept(kv_ratio, groups) == 0:
            raise ConfigError(f"{key}={kv_ratio}{note} removes every key/value group of model.layers.{i}.self_attn "
                              f"({groups}); it must be below {1 - 0.5 / groups:.4g}, or use prune.pattern=neurons")


def _kv_heads(cfg: object) -> int:
    return getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads


def _wanda(weight: Tensor, norms: Tensor) -> Tensor:
    """Wanda's per-weight score |W_ij| * ||X_j||."""
    return weight.detach().double().cpu().abs() * norms


def _keep_top(score: Tensor, k: int) -> Tensor:
    return torch.sort(torch.argsort(score, descending=True, stable=True)[:k]).values


def _check_ratio(key: str, ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"{key}={ratio} must be in [0, 1): the fraction of units removed in every block")


@torch.no_grad()
def plan_structured(model: nn.Module, norms: list[dict[str, Tensor]], mlp_ratio: float,
                    kv_ratio: float = 0.0) -> StructuredPlan:
    """Keep the round((1 - ratio) * units) highest-scoring MLP neurons / key-value groups of every block."""
    _check_ratio("mlp_ratio", mlp_ratio)
    _check_ratio("kv_ratio", kv_ratio)
    blocks = _blocks(model)
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, _kv_heads(cfg)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    n_rep = heads // kv_heads
    mlp_keep, kv_keep = [], []
    for i, (block, x) in enumerate(zip(blocks, norms, strict=True)):
        mlp, attn = block.mlp, block.self_attn
        width = mlp.up_proj.out_features
        k = _kept(mlp_ratio, width)
        if k == 0:
            raise ConfigError(f"mlp_ratio={mlp_ratio} removes every neuron of model.layers.{i}.mlp ({width})")
        score = (_wanda(mlp.gate_proj.weight, x["gate_proj"]).sum(1) + _wanda(mlp.up_proj.weight, x["gate_proj"])
                 .sum(1) + _wanda(mlp.down_proj.weight, x["down_proj"]).sum(0))
        mlp_keep.append(_keep_top(score, k))
        g = _kept(kv_ratio, kv_heads)
        if g == 0:
            raise ConfigError(f"kv_ratio={kv_ratio} removes every key/value group of model.layers.{i}.self_attn "
                              f"({kv_heads})")
        q = _wanda(attn.q_proj.weight, x["q_proj"]).sum(1).view(kv_heads, n_rep * head_dim).sum(1)
        kv = (_wanda(attn.k_proj.weight, x["q_proj"]) + _wanda(attn.v_proj.weight, x["q_proj"])).sum(1)
        o = _wanda(attn.o_proj.weight, x["o_proj"]).sum(0).view(kv_heads, n_rep * head_dim).sum(1)
        kv_keep.append(_keep_top(q + kv.view(kv_heads, head_dim).sum(1) + o, g))
    return StructuredPlan(tuple(mlp_keep), tuple(kv_keep), head_dim, n_rep)


def _rows(groups: Tensor, per_group: int) -> Tensor:
    """Indices of the rows (or columns) of the kept groups, each `per_group` wide."""
    return (groups[:, None] * per_group + torch.arange(per_group)).flatten()


@torch.no_grad()
def apply_mask_(model: nn.Module, plan: StructuredPlan) -> None:
    """Zero every weight (and bias) of the removed units in place: the masked model, same shapes."""
    for block, mlp_keep, kv_keep in zip(_blocks(model), plan.mlp_keep, plan.kv_keep, strict=True):
        mlp, attn = block.mlp, block.self_attn
        dead = torch.ones(mlp.up_proj.out_features, dtype=torch.bool)
        dead[mlp_keep] = False
        for lin in (mlp.gate_proj, mlp.up_proj):
            lin.weight[dead.to(lin.weight.device)] = 0
            if lin.bias is not None:
                lin.bias[dead.to(lin.bias.device)] = 0
        mlp.down_proj.weight[:, dead.to(mlp.down_proj.weight.device)] = 0
        q_dead = torch.ones(attn.q_proj.out_features, dtype=torch.bool)
        q_dead[_rows(kv_keep, plan.n_rep * plan.head_dim)] = False
        kv_dead = torch.ones(attn.k_proj.out_features, dtype=torch.bool)
        kv_dead[_rows(kv_keep, plan.head_dim)] = False
        for lin, rows in ((attn.q_proj, q_dead), (attn.k_proj, kv_dead), (attn.v_proj, kv_dead)):
            lin.weight[rows.to(lin.weight.device)] = 0
            if lin.bias is not None:
                lin.bias[rows.to(lin.bias.device)] = 0
        attn.o_proj.weight[:, q_dead.to(attn.o_proj.weight.device)] = 0


@torch.no_grad()
def narrow(model: nn.Module, plan: StructuredPlan) -> nn.Module:
    """A copy of `model` with the removed units cut out and its config's widths and head counts updated."""
    out = copy.deepcopy(model)
    widths = {len(k) for k in plan.mlp_keep}
    groups = {len(k) for k in plan.kv_keep}
    if len(widths) != 1 or len(groups) != 1:
        raise LotteryError("export_narrow needs the same widths in every block (a uniform ratio)")
    for block, mlp_keep, kv_keep in zip(_blocks(out), plan.mlp_keep, plan.kv_keep, strict=True):
        mlp, attn = block.mlp, block.self_attn
        mlp.gate_proj = narrow_linear(mlp.gate_proj, keep_out=mlp_keep)
        mlp.up_proj = narrow_linear(mlp.up_proj, keep_out=mlp_keep)
        mlp.down_proj = narrow_linear(mlp.down_proj, keep_in=mlp_keep)
        q_rows, kv_rows = _rows(kv_keep, plan.n_rep * plan.head_dim), _rows(kv_keep, plan.head_dim)
        attn.q_proj = narrow_linear(attn.q_proj, keep_out=q_rows)
        attn.k_proj = narrow_linear(attn.k_proj, keep_out=kv_rows)
        attn.v_proj = narrow_linear(attn.v_proj, keep_out=kv_rows)
        attn.o_proj = narrow_linear(attn.o_proj, keep_in=q_rows)
        for attr, value in (("num_heads", len(kv_keep) * plan.n_rep), ("num_key_value_heads", len(kv_keep))):
            if hasattr(attn, attr):
                setattr(attn, attr, value)
    cfg = out.config
    cfg.intermediate_size = widths.pop()
    kv = groups.pop()
    cfg.head_dim = plan.head_dim  # written out: hidden_size // heads would change with fewer heads
    cfg.num_key_value_heads = kv
    cfg.num_attention_heads = kv * plan.n_rep
    return out


def export_narrow(model: nn.Module, plan: StructuredPlan, path: str | Path) -> nn.Module:
    """Save the narrower model (weights and config) with `save_pretrained` to `path`; return it."""
    small = narrow(model, plan)
    small.save_pretrained(str(path))
    return small
