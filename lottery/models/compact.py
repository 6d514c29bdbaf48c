"""Compact export: physically remove pruned neurons and filters from a sequential model.

`compact(model, mask)` returns a smaller dense copy (same class, same module names and forward pass, narrower
nn.Linear / nn.Conv2d / nn.BatchNorm2d) whose eval-mode outputs equal those of the masked model. A hidden unit
(neuron or filter) goes when

- *dead*: all its outgoing weights in the next layer are pruned (directly, or because they only feed units
  that are themselves dead), so its value never reaches the output; or
- *constant*: all its incoming weights are pruned (or only come from removed units), so it outputs the
  constant c = relu(BN(bias)). c is folded exactly into the next layer's bias when the next layer is linear
  (or an unpadded conv). Before a zero-padded conv a constant channel is not constant at the borders of the
  padded map, so it is removed only when c == 0 and kept otherwise.

Output units (classes) are never removed, and pruned weights inside kept units stay zero: compaction removes
only whole units.

LeNet, Conv-2/4/6 and VGG are chains and take the path above. Every other model (ResNet, or any model built from
Conv2d / Linear / BatchNorm, residual additions and element-wise ops) is traced into channel groups
(`lottery.pruning.groups`): a channel of a group is removed when it is dead, i.e. every consumer in the group
reads it only through pruned weights, so it never reaches the output; producers' rows, BatchNorm entries and
consumers' columns of that channel go together. Constant channels are not folded on this path (in a residual
stream a constant would have to be carried through every later addition), so a group pruned only at its
producers keeps its width; `group_prune` prunes both sides and is always fully exportable. A model whose
coupling cannot be traced raises LotteryError naming the layer.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lottery.models.conv import ConvNet
from lottery.models.lenet import LeNet
from lottery.models.vgg import VGG
from lottery.pruning.groups import ChannelGroup, channel_groups


@dataclass(frozen=True)
class LayerCompaction:
    """What happened to the units (rows / filters) of one layer."""

    name: str
    units_before: int
    units_after: int
    dead: int  # removed: every outgoing weight pruned
    folded: int  # removed: constant output, folded into the next layer's bias (or exactly zero)
    constant_kept: int  # constant output but nonzero before a padded conv, so kept for exactness


@dataclass(frozen=True)
class CompactSummary:
    """Per-layer unit counts and the parameter count of the model before and after compaction."""

    layers: tuple[LayerCompaction, ...]
    params_before: int
    params_after: int

    def __str__(self) -> str:
        rows = [f"{'layer':<12} {'units':>11} {'dead':>6} {'folded':>7} {'const kept':>10}"]
        for c in self.layers:
            units = f"{c.units_before}->{c.units_after}"
            rows.append(f"{c.name:<12} {units:>11} {c.dead:>6} {c.folded:>7} {c.constant_kept:>10}")
        ratio = self.params_after / max(self.params_before, 1)
        rows.append(f"parameters: {self.params_before:,} -> {self.params_after:,} ({ratio:.1%})")
        return "\n".join(rows)


@dataclass
class _Layer:
    name: str  # module path of the nn.Linear / nn.Conv2d
    module: nn.Linear | nn.Conv2d
    bn: str | None  # the BatchNorm2d between this layer and its ReLU, if any
    mask3: torch.Tensor  # keep-mask viewed as (out units, in units, columns per in unit)


@dataclass
class _Plan:
    layers: list[_Layer]
    keep: list[torch.Tensor]  # per layer: indices of the kept output units
    in_keep: list[torch.Tensor]  # per layer: indices of the kept input units (previous layer's keep)
    inert: list[torch.Tensor]  # per layer: positions (within in_keep) whose columns must be zeroed
    bias_delta: list[torch.Tensor]  # per layer: folded constants to add to the bias (float64)
    summary: CompactSummary


def _chain(model: nn.Module) -> list[tuple[str, str | None]]:
    """The model's weight layers in forward order, each with its BatchNorm (or None)."""
    if isinstance(model, LeNet):
        return [(f"layers.{i}", None) for i in range(len(model.layers))] + [("head", None)]
    if isinstance(model, ConvNet):
        convs = [(f"convs.{i}", None) for i in range(len(model.convs))]
        return convs + [(f"fcs.{i}", None) for i in range(len(model.fcs))] + [("head", None)]
    if isinstance(model, VGG):
        return [(f"convs.{i}", f"bns.{i}") for i in range(len(model.convs))] + [("head", None)]
    raise TypeError(f"{type(model).__name__} is not a chain model; compact() traces it into channel groups")


def _layers(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> list[_Layer]:
    layers: list[_Layer] = []
    prev_units: int | None = None
    for name, bn in _chain(model):
        module = model.get_submodule(name)
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError(f"compact() needs ungrouped convs; {name} has groups={module.groups}")
        weight = module.weight
        keep = mask.get(f"{name}.weight")
        keep = torch.ones_like(weight, dtype=torch.bool) if keep is None else keep.to(torch.bool).cpu()
        if keep.shape != weight.shape:
            raise ValueError(f"mask[{name}.weight] has shape {tuple(keep.shape)}, the weight {tuple(weight.shape)}")
        # Input units: the previous layer's units, or the model's input features/channels for the first layer.
        in_units = weight.shape[1] if prev_units is None else prev_units
        if weight.shape[1] % in_units:
            raise ValueError(f"{name} has {weight.shape[1]} inputs, not a multiple of the {in_units} units before it")
        # A Linear after a flattened conv map sees each channel as a block of H*W columns (channel-major).
        layers.append(_Layer(name, module, bn, keep.reshape(weight.shape[0], in_units, -1)))
        prev_units = weight.shape[0]
    return layers


def _bn_eval(model: nn.Module, bn: str | None, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """BatchNorm in eval mode applied to per-unit constants `x` of the units `units` (float64)."""
    if bn is None:
        return x
    norm = model.get_submodule(bn)
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(f"compact() needs running statistics in {bn} (track_running_stats=True)")
    mean, var = norm.running_mean.cpu()[units].double(), norm.running_var.cpu()[units].double()
    y = (x - mean) / torch.sqrt(var + norm.eps)
    if norm.affine:
        y = y * norm.weight.detach().cpu()[units].double() + norm.bias.detach().cpu()[units].double()
    return y


def _can_fold_into(consumer: nn.Module) -> bool:
    """Whether a spatially constant input channel gives a spatially constant contribution to `consumer`."""
    if isinstance(consumer, nn.Conv2d):
        return not isinstance(consumer.padding, str) and all(p == 0 for p in consumer.padding)
    return True


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def _plan(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> _Plan:
    layers = _layers(model, mask)
    n = len(layers)
    # Backward: a unit is alive if some kept weight connects it to an alive unit of the next layer.
    alive = [torch.ones(layer.mask3.shape[0], dtype=torch.bool) for layer in layers]
    for i in range(n - 2, -1, -1):
        alive[i] = layers[i + 1].mask3[alive[i + 1]].any(dim=2).any(dim=0)

    keep, in_keep, inert, deltas, stats = [], [], [], [], []
    current_in = torch.arange(layers[0].mask3.shape[1])
    current_inert = torch.zeros(0, dtype=torch.long)
    delta = torch.zeros(layers[0].mask3.shape[0], dtype=torch.float64)
    for i, layer in enumerate(layers):
        in_keep.append(current_in)
        inert.append(current_inert)
        deltas.append(delta)
        out_units = layer.mask3.shape[0]
        if i == n - 1:
            keep.append(torch.arange(out_units))
            stats.append(LayerCompaction(layer.name, out_units, out_units, 0, 0, 0))
            break
        live_in = torch.ones(len(current_in), dtype=torch.bool)
        live_in[current_inert] = False
        has_input = layer.mask3[:, current_in[live_in]].any(dim=2).any(dim=1)
        constant = alive[i] & ~has_input
        units = constant.nonzero().flatten()
        bias = layer.module.bias
        pre = delta[units] + (bias.detach().cpu()[units].double() if bias is not None else 0.0)
        value = torch.relu(_bn_eval(model, layer.bn, pre, units))
        consumer = layers[i + 1]
        foldable = value == 0
        if _can_fold_into(consumer.module) and consumer.module.bias is not None:
            foldable = torch.ones_like(foldable)
        fold = torch.zeros(out_units, dtype=torch.bool)
        fold[units[foldable]] = True
        folded = units[foldable]
        w_next = consumer.module.weight.detach().cpu().reshape(consumer.mask3.shape)[:, folded]
        w_next = w_next.double() * consumer.mask3[:, folded]
        delta = torch.einsum("oic,i->o", w_next, value[foldable])
        kept = alive[i] & ~fold
        current_inert = torch.zeros(0, dtype=torch.long)
        if not kept.any():
            # Zero-width layers are not valid modules: keep unit 0 and cut its outgoing weights instead.
            kept[0] = True
            current_inert = torch.zeros(1, dtype=torch.long)
        current_in = kept.nonzero().flatten()
        keep.append(current_in)
        stats.append(LayerCompaction(layer.name, out_units, int(kept.sum()), int((~alive[i] & ~kept).sum()),
                                     int((fold & ~kept).sum()), int((constant & ~fold).sum())))

    before = _param_count(model)
    after = before
    for layer, k, ik in zip(layers, keep, in_keep, strict=True):
        w = layer.module.weight
        cols = w[0].numel() // layer.mask3.shape[1]
        bn = 0 if layer.bn is None else _param_count(model.get_submodule(layer.bn)) // w.shape[0]
        per_unit = (1 if layer.module.bias is not None else 0) + bn
        after += len(k) * (len(ik) * cols + per_unit) - w.shape[0] * (w[0].numel() + per_unit)
    summary = CompactSummary(tuple(stats), before, after)
    return _Plan(layers, keep, in_keep, inert, deltas, summary)


def compact_summary(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> CompactSummary:
    """Predict what `compact(model, mask)` removes (units per layer, parameters); chain models without building
    it, traced (residual) models by building the compact copy."""
    if not isinstance(model, LeNet | ConvNet | VGG):
        return _compact_groups(model, mask).compact_summary
    return _plan(model, mask).summary


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def _shrink(layer: _Layer, keep: torch.Tensor, in_keep: torch.Tensor, inert: torch.Tensor,
            delta: torch.Tensor) -> nn.Module:
    old = layer.module
    weight = (old.weight.detach() * layer.mask3.reshape(old.weight.shape).to(old.weight))
    weight = weight.reshape(layer.mask3.shape)[keep][:, in_keep].clone()
    weight[:, inert] = 0
    kwargs = {"bias": old.bias is not None, "device": old.weight.device, "dtype": old.weight.dtype}
    if isinstance(old, nn.Conv2d):
        new = nn.utils.skip_init(nn.Conv2d, len(in_keep), len(keep), old.kernel_size, stride=old.stride,
                                 padding=old.padding, dilation=old.dilation, padding_mode=old.padding_mode,
                                 **kwargs)
    else:
        new = nn.utils.skip_init(nn.Linear, len(in_keep) * weight.shape[2], len(keep), **kwargs)
    new.weight.copy_(weight.reshape(new.weight.shape))
    if old.bias is not None:
        new.bias.copy_((old.bias.detach().cpu().double() + delta)[keep])
    new.train(old.training)
    return new


@torch.no_grad()
def _shrink_bn(old: nn.BatchNorm1d | nn.BatchNorm2d, keep: torch.Tensor) -> nn.Module:
    new = type(old)(len(keep), old.eps, old.momentum, old.affine, old.track_running_stats,
                         device=old.running_mean.device if old.running_mean is not None else None)
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(old, name) is not None:
            getattr(new, name).copy_(getattr(old, name)[keep])
    if old.num_batches_tracked is not None:
        new.num_batches_tracked.copy_(old.num_batches_tracked)
    new.train(old.training)
    return new


def compact(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> nn.Module:
    """A smaller dense copy of `model` ⊙ `mask` with removable units cut out; equal outputs in eval mode.

    `mask` maps weight names to boolean keep-masks (a `lottery.pruning.Mask`); weights it does not name are
    treated as fully kept. The copy has the same class and module names; its `compact_summary` attribute (a
    `CompactSummary`) gives the units removed per layer and the parameters before and after. Raises
    ValueError for a mask that does not fit the model, LotteryError for a model whose channel coupling cannot
    be traced (the message names the layer).
    """
    if not isinstance(model, LeNet | ConvNet | VGG):
        return _compact_groups(model, mask)
    plan = _plan(model, mask)
    out = copy.deepcopy(model)
    for layer, keep, in_keep, inert, delta in zip(plan.layers, plan.keep, plan.in_keep, plan.inert,
                                                  plan.bias_delta, strict=True):
        _set_submodule(out, layer.name, _shrink(layer, keep, in_keep, inert, delta))
        if layer.bn is not None:
            _set_submodule(out, layer.bn, _shrink_bn(model.get_submodule(layer.bn), keep))
    out.compact_summary = plan.summary
    return out


def _group_keep(model: nn.Module, mask: Mapping[str, torch.Tensor], group: ChannelGroup) -> torch.Tensor:
    """Indices of a group's channels that some consumer still reads through a kept weight (at least one)."""
    alive = torch.zeros(group.size, dtype=torch.bool)
    for layer, _ in group.consumers:
        keep = mask.get(f"{layer}.weight")
        if keep is None:
            return torch.arange(group.size)
        weight = model.get_submodule(layer).weight
        if keep.shape != weight.shape:
            raise ValueError(f"mask[{layer}.weight] has shape {tuple(keep.shape)}, the weight {tuple(weight.shape)}")
        alive |= keep.to(torch.bool).cpu().reshape(weight.shape[0], group.size, -1).any(dim=2).any(dim=0)
    if not alive.any():
        # Zero-width layers are not valid modules: keep channel 0; its consumers' columns are all pruned.
        alive[0] = True
    return alive.nonzero().flatten()


@torch.no_grad()
def _compact_groups(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> nn.Module:
    groups = channel_groups(model)
    out_keep: dict[str, torch.Tensor] = {}
    in_keep: dict[str, tuple[torch.Tensor, int]] = {}
    norm_keep: dict[str, torch.Tensor] = {}
    stats = []
    for group in groups:
        keep = _group_keep(model, mask, group) if group.prunable else torch.arange(group.size)
        for name in group.producers:
            out_keep[name] = keep
        for name in group.norms:
            norm_keep[name] = keep
        for name, _ in group.consumers:
            in_keep[name] = (keep, group.size)
        if group.prunable:
            removed = group.size - len(keep)
            stats.append(LayerCompaction(group.producers[0], group.size, len(keep), removed, 0, 0))
    out = copy.deepcopy(model)
    for name in dict.fromkeys([*out_keep, *in_keep]):
        old = model.get_submodule(name)
        keep = mask.get(f"{name}.weight")
        keep = torch.ones_like(old.weight, dtype=torch.bool) if keep is None else keep.to(torch.bool)
        if keep.shape != old.weight.shape:
            raise ValueError(f"mask[{name}.weight] has shape {tuple(keep.shape)}, the weight "
                             f"{tuple(old.weight.shape)}")
        rows = out_keep.get(name, torch.arange(old.weight.shape[0]))
        cols, size = in_keep.get(name, (torch.arange(old.weight.shape[1]), old.weight.shape[1]))
        mask3 = keep.cpu().reshape(old.weight.shape[0], size, -1)
        no_inert = torch.zeros(0, dtype=torch.long)
        no_delta = torch.zeros(old.weight.shape[0], dtype=torch.float64)
        _set_submodule(out, name, _shrink(_Layer(name, old, None, mask3), rows, cols, no_inert, no_delta))
    for name, keep in norm_keep.items():
        _set_submodule(out, name, _shrink_bn(model.get_submodule(name), keep))
    out.compact_summary = CompactSummary(tuple(stats), _param_count(model), _param_count(out))
    return out
