"""Channel groups: the sets of channels that residual additions, BatchNorm and shortcuts tie together.

In a residual network a channel is not owned by one layer. The output channel c of a block's second conv is
added to channel c of the block's input, so it can only be removed together with channel c of every conv that
writes into that residual stream (the stem, each block's last conv, a shortcut conv), of every BatchNorm on it,
and with input channel c of every layer that reads from it (the next convs, the shortcut conv, the head). Fang
et al. (2023, "DepGraph") call such a set a dependency group; Torch-Pruning builds it from a traced graph.

`channel_groups(model)` finds the groups by tracing the forward pass with torch.fx and joining channel spaces
with a union-find: a conv or linear layer starts a new space at its output, BatchNorm and channel-wise ops
(ReLU, pooling, dropout, flatten) pass a space through, and an addition unions the spaces of its operands.
Tracing, not forward hooks, because hooks see modules but not the `+` of a residual connection, which is
exactly the op that ties channels. An op whose channel mapping is not known (concatenation, reshapes,
products of two tensors, grouped convs) raises LotteryError naming the node or layer, rather than guessing.

A group's score for channel c is the sum, over its member layers, of the Ln norm of that member's slice for c
(producers' output rows, consumers' input columns), counting only kept weights. `group_prune` removes whole
channels by that score, per group, with the IMP schedule of `kept_count`; every member's slice goes, so the
mask can always be compacted exactly (`lottery.models.compact`).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from lottery.errors import ConfigError, LotteryError
from lottery.pruning.magnitude import kept_count
from lottery.pruning.mask import Mask

__all__ = ["ChannelGroup", "channel_groups", "group_prune", "group_scores", "prune_channel_groups"]

NORMS = ("l1", "l2")

# Modules and functions that keep channel c in channel c (element-wise or per-channel spatial ops).
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout,
                 nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PASS_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, torch.tanh, torch.sigmoid,
                   F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_PASS_METHODS = {"relu", "relu_", "tanh", "sigmoid", "contiguous", "clone", "detach"}
_ADD = {operator.add, operator.iadd, torch.add}
_SCALAR_OPS = {operator.mul, operator.truediv, operator.sub, torch.mul}


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be kept or removed together.

    producers: layers whose output rows (dim 0) are these channels; norms: BatchNorms over them; consumers:
    (layer, columns per channel) whose input columns (dim 1) are these channels, in channel-major blocks
    (a Linear after flattening a C x H x W map reads H*W columns per channel). `prunable` is False for the
    model's input channels and output units; `why` says which.
    """

    size: int
    producers: tuple[str, ...]
    norms: tuple[str, ...]
    consumers: tuple[tuple[str, int], ...]
    prunable: bool
    why: str = ""

    @property
    def layers(self) -> tuple[str, ...]:
        """Every member layer, producers first."""
        return self.producers + self.norms + tuple(name for name, _ in self.consumers)

    def label(self) -> str:
        """A short name for messages: the first producer (or consumer) and the member count."""
        first = self.producers[0] if self.producers else self.consumers[0][0]
        return f"group of {first} ({len(self.layers)} layers, {self.size} channels)"


class _Spaces:
    """Union-find over channel spaces, each with a channel count and its member layers."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int | None] = []
        self.where: list[str] = []

    def new(self, size: int | None, where: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.where.append(where)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def set_size(self, i: int, size: int, where: str) -> None:
        root = self.find(i)
        if self.size[root] is None:
            self.size[root] = size
        elif self.size[root] != size:
            raise LotteryError(f"channel coupling at {where}: it expects {size} channels but its input has "
                               f"{self.size[root]} (from {self.where[root]})")

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if self.size[rb] is not None:
                self.set_size(ra, self.size[rb], where)
            self.parent[rb] = ra
        return ra


@dataclass
class _Value:
    space: int
    flat: bool  # a flattened C*H*W vector rather than a C x H x W map


def _tensor_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    return [a for a in node.args if isinstance(a, torch.fx.Node)]


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """Trace `model` and return its channel groups in forward order (input group first).

    Supports nn.Conv2d (ungrouped), nn.Linear, BatchNorm1d/2d, residual additions, shortcut convs and the
    element-wise / pooling / flatten ops listed in this module; anything else raises LotteryError that names
    the node or layer where the coupling could not be resolved.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # torch.fx raises TraceError, TypeError, ... for data-dependent code
        raise LotteryError(f"channel groups: cannot trace {type(model).__name__} with torch.fx ({err})") from None
    spaces = _Spaces()
    values: dict[torch.fx.Node, _Value] = {}
    producers: dict[int, list[str]] = {}
    norms: dict[int, list[str]] = {}
    consumers: dict[int, list[tuple[str, int]]] = {}
    inputs: list[int] = []
    outputs: list[int] = []

    def unresolved(node: torch.fx.Node, what: str) -> LotteryError:
        return LotteryError(f"channel groups: cannot resolve the channel coupling of {type(model).__name__} at "
                            f"{what} (fx node {node.name}); supported: ungrouped Conv2d, Linear, BatchNorm, "
                            "residual additions, element-wise ops, pooling, flatten")

    for node in graph.nodes:
        if node.op == "placeholder":
            space = spaces.new(None, "the model input")
            inputs.append(space)
            values[node] = _Value(space, False)
        elif node.op == "output":
            for arg in _flatten_args(node.args):
                if arg in values:
                    outputs.append(values[arg].space)
        elif node.op == "call_module":
            module = model.get_submodule(node.target)
            name = str(node.target)
            args = _tensor_args(node)
            if len(args) != 1 or args[0] not in values:
                raise unresolved(node, f"layer {name}")
            src = values[args[0]]
            if isinstance(module, nn.Conv2d | nn.Linear):
                if isinstance(module, nn.Conv2d) and module.groups != 1:
                    raise unresolved(node, f"layer {name} (Conv2d with groups={module.groups})")
                if isinstance(module, nn.Conv2d) and src.flat:
                    raise unresolved(node, f"layer {name} (Conv2d on a flattened tensor)")
                n_in = module.weight.shape[1]
                root = spaces.find(src.space)
                size = spaces.size[root]
                repeat = 1
                if isinstance(module, nn.Linear) and src.flat and size is not None:
                    if n_in % size:
                        raise unresolved(node, f"layer {name} ({n_in} inputs, not a multiple of {size} channels)")
                    repeat = n_in // size
                elif isinstance(module, nn.Linear) and not src.flat and size is not None and n_in != size:
                    raise unresolved(node, f"layer {name} (Linear on an unflattened map)")
                else:
                    spaces.set_size(src.space, n_in, f"layer {name}")
                consumers.setdefault(src.space, []).append((name, repeat))
                out = spaces.new(module.weight.shape[0], f"layer {name}")
                producers[out] = [name]
                values[node] = _Value(out, isinstance(module, nn.Linear))
            elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                spaces.set_size(src.space, module.num_features, f"layer {name}")
                norms.setdefault(src.space, []).append(name)
                values[node] = src
            elif isinstance(module, _PASS_MODULES):
                values[node] = src
            elif isinstance(module, nn.Flatten) and module.start_dim == 1:
                values[node] = _Value(src.space, True)
            else:
                raise unresolved(node, f"layer {name} ({type(module).__name__})")
        elif node.op in ("call_function", "call_method"):
            args = [a for a in _tensor_args(node) if a in values]
            target = node.target
            what = f"{getattr(target, '__name__', target)}"
            if target in _ADD and len(args) == 2:
                a, b = values[args[0]], values[args[1]]
                if a.flat != b.flat:
                    raise unresolved(node, f"addition {what} of a map and a flat tensor")
                values[node] = _Value(spaces.union(a.space, b.space, f"addition {node.name}"), a.flat)
            elif len(args) == 1 and len(_tensor_args(node)) == 1 and (
                    target in _PASS_FUNCTIONS or (node.op == "call_method" and target in _PASS_METHODS)
                    or target in _ADD or target in _SCALAR_OPS):
                values[node] = values[args[0]]
            elif len(args) == 1 and target in (torch.flatten, "flatten") and _flatten_start(node) == 1:
                values[node] = _Value(values[args[0]].space, True)
            else:
                raise unresolved(node, f"op {what}")
        elif node.op == "get_attr":
            raise unresolved(node, f"parameter {node.target} used outside a layer")

    roots: dict[int, list[int]] = {}
    for i in range(len(spaces.parent)):
        roots.setdefault(spaces.find(i), []).append(i)
    input_roots = {spaces.find(i) for i in inputs}
    output_roots = {spaces.find(i) for i in outputs}
    groups = []
    for root, members in sorted(roots.items(), key=lambda kv: min(kv[1])):
        prods = [p for m in members for p in producers.get(m, [])]
        cons = [c for m in members for c in consumers.get(m, [])]
        bns = [b for m in members for b in norms.get(m, [])]
        if not prods and not cons:
            continue
        why = "model input" if root in input_roots else "model output" if root in output_roots else ""
        if not why and not cons:
            why = "read by no layer"
        groups.append(ChannelGroup(int(spaces.size[root] or 0), tuple(prods), tuple(bns), tuple(cons),
                                   prunable=not why, why=why))
    return groups


def _flatten_args(args: object) -> list[torch.fx.Node]:
    if isinstance(args, torch.fx.Node):
        return [args]
    if isinstance(args, list | tuple):
        return [n for a in args for n in _flatten_args(a)]
    if isinstance(args, dict):
        return [n for a in args.values() for n in _flatten_args(a)]
    return []


def _flatten_start(node: torch.fx.Node) -> int:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return start if end == -1 else -1


def _slices(weight: Tensor, keep: Tensor, kind: str, size: int, repeat: int) -> tuple[Tensor, Tensor]:
    """(kept weights, keep-mask) of `weight` viewed as (channel, everything else) for a group member."""
    w = weight.detach().cpu().double() * keep
    if kind == "out":
        return w.reshape(size, -1), keep.reshape(size, -1)
    out_units = weight.shape[0]
    return (w.reshape(out_units, size, repeat, -1).transpose(0, 1).reshape(size, -1),
            keep.reshape(out_units, size, repeat, -1).transpose(0, 1).reshape(size, -1))


def _members(group: ChannelGroup) -> list[tuple[str, str, int]]:
    return [(p, "out", 1) for p in group.producers] + [(c, "in", r) for c, r in group.consumers]


def _keep_of(mask: Mapping[str, Tensor], weights: Mapping[str, Tensor], layer: str) -> Tensor:
    key = f"{layer}.weight"
    keep = mask.get(key)
    return torch.ones_like(weights[key], dtype=torch.bool).cpu() if keep is None else keep.to(torch.bool).cpu()


@torch.no_grad()
def group_scores(weights: Mapping[str, Tensor], mask: Mapping[str, Tensor], group: ChannelGroup,
                 norm: str = "l1") -> tuple[Tensor, Tensor]:
    """Per channel: the sum over members of the Ln norm of its kept weights, and whether it is still alive.

    A channel is alive while some consumer still reads it through a kept weight; a dead channel never reaches
    the output, whatever its producers compute.
    """
    if norm not in NORMS:
        raise ConfigError(f"pruning.norm={norm!r} is not a structured norm; choose one of {', '.join(NORMS)}")
    score = torch.zeros(group.size, dtype=torch.float64)
    alive = torch.zeros(group.size, dtype=torch.bool)
    for layer, kind, repeat in _members(group):
        w, keep = _slices(weights[f"{layer}.weight"], _keep_of(mask, weights, layer), kind, group.size, repeat)
        score += w.abs().sum(dim=1) if norm == "l1" else w.pow(2).sum(dim=1).sqrt()
        if kind == "in":
            alive |= keep.any(dim=1)
    return score, alive


def _remove(mask: dict[str, Tensor], group: ChannelGroup, channels: Tensor) -> None:
    """Prune every member's slice of `channels` (bool over the group's channels) in `mask`, in place."""
    for layer, kind, _ in _members(group):  # the channel-major view covers a channel's `repeat` columns
        key = f"{layer}.weight"
        keep = mask[key].clone()
        if kind == "out":
            keep.view(group.size, -1)[channels] = False
        else:
            keep.view(keep.shape[0], group.size, -1)[:, channels] = False
        mask[key] = keep


def _group_excluded(group: ChannelGroup, exclude: Iterable[str]) -> bool:
    names = set(exclude)
    return any(f"{layer}.weight" in names or layer in names for layer in group.layers)


@torch.no_grad()
def group_prune(weights: Mapping[str, Tensor], mask: Mask, groups: list[ChannelGroup], level: int, rate: float,
                norm: str = "l1", exclude: Iterable[str] = ()) -> Mask:
    """The level-`level` mask that keeps `kept_count(size, rate, level)` channels of every prunable group.

    Channels rank by `group_scores` (ties to the lower index; dead channels last); a removed channel loses
    its producers' rows and its consumers' columns in every member, so the result is nested in `mask` and
    `compact()` can always remove it. Groups with a member in `exclude` (layer or weight names) are left alone.
    Raises ConfigError if `rate` is outside [0, 1) or would remove every channel of a group.
    """
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"pruning.rate={rate} must be in [0, 1) for channel groups")
    new = {k: v.to(torch.bool).cpu().clone() for k, v in mask.items()}
    for group in groups:
        if not group.prunable or _group_excluded(group, exclude):
            continue
        missing = [layer for layer, _, _ in _members(group) if f"{layer}.weight" not in new]
        if missing:
            raise ConfigError(f"channel groups: {group.label()} has members without a mask ({', '.join(missing)});"
                              " prune every Linear/Conv weight or exclude the group's layers")
        k = kept_count(group.size, rate, level)
        if k == 0:
            first = next((lv for lv in range(1, int(level) + 1) if kept_count(group.size, rate, lv) == 0), level)
            raise ConfigError(f"pruning.rate={rate} would remove every channel of the {group.label()} at level "
                              f"{first} (of {level}); lower pruning.rate or imp.levels")
        score, alive = group_scores(weights, new, group, norm)
        ranked = torch.where(alive, score, torch.tensor(float("-inf"), dtype=score.dtype))
        gone = torch.ones(group.size, dtype=torch.bool)
        gone[torch.argsort(ranked, descending=True, stable=True)[:k]] = False
        _remove(new, group, gone | ~alive)
    return Mask({name: keep.to(mask[name].device) for name, keep in new.items()})


def prune_channel_groups(model: nn.Module, ratio: float, norm: str = "l1",
                         mask: Mask | None = None) -> Mask:
    """One shot: remove `ratio` of the channels of every prunable group of `model` by group score.

    `mask` (default: all kept) names the weights; the result keeps round((1 - ratio) * size) channels of each
    group. Raises ConfigError for a ratio outside [0, 1) or one that leaves a group empty.
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"ratio={ratio} must be in [0, 1): the fraction of each group's channels to remove")
    groups = channel_groups(model)
    weights = {k: v for k, v in model.state_dict().items()}
    if mask is None:
        mask = Mask({f"{name}.weight": torch.ones_like(m.weight, dtype=torch.bool).cpu()
                     for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)})
    return group_prune(weights, mask, groups, 1, ratio, norm)
