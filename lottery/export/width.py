"""Structured (whole-neuron) pruning made real: drop pruned rows/columns and get a narrower dense layer.

A pruned intermediate neuron j of an MLP is row j of up (and gate) and column j of down. Removing it from all
of them gives the same function with smaller matmuls, which cuBLAS runs at full dense speed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["compact_llama_mlps", "compact_mlp", "live_neurons", "narrow_linear"]


def narrow_linear(linear: nn.Linear, keep_out: Tensor | None = None, keep_in: Tensor | None = None) -> nn.Linear:
    """A new `nn.Linear` holding only the kept output rows and/or input columns (bool masks or indices)."""
    w = linear.weight.detach()
    b = linear.bias.detach() if linear.bias is not None else None
    if keep_out is not None:
        keep_out = _indices(keep_out, w.shape[0])
        w = w.index_select(0, keep_out)
        b = b.index_select(0, keep_out) if b is not None else None
    if keep_in is not None:
        w = w.index_select(1, _indices(keep_in, w.shape[1]))
    out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
    return out


def _indices(keep: Tensor, size: int) -> Tensor:
    if keep.dtype == torch.bool:
        if keep.numel() != size:
            raise ValueError(f"keep mask has {keep.numel()} entries for a dim of size {size}")
        return keep.nonzero(as_tuple=False).flatten()
    return keep.to(torch.long)


def live_neurons(up: nn.Linear, down: nn.Linear, gate: nn.Linear | None = None) -> Tensor:
    """Bool mask of intermediate neurons that can change the output.

    Neuron j is dead if column j of down is zero, or if row j of up (or of gate) and its bias are zero;
    the latter assumes act(0) = 0, true of ReLU, GELU and SiLU.
    """
    def row_alive(lin: nn.Linear) -> Tensor:
        alive = lin.weight.detach().ne(0).any(dim=1)
        if lin.bias is not None:
            alive |= lin.bias.detach().ne(0)
        return alive

    alive = row_alive(up) & down.weight.detach().ne(0).any(dim=0)
    if gate is not None:
        alive &= row_alive(gate)
    return alive


def compact_mlp(up: nn.Linear, down: nn.Linear, gate: nn.Linear | None = None,
                keep: Tensor | None = None) -> tuple[nn.Linear, nn.Linear, nn.Linear | None, Tensor]:
    """Narrow an MLP's intermediate width to `keep` (default: `live_neurons`); returns (up, down, gate, kept)."""
    if up.out_features != down.in_features or (gate is not None and gate.out_features != up.out_features):
        raise ValueError("compact_mlp: up/gate out_features must equal down in_features")
    if keep is None:
        keep = live_neurons(up, down, gate)
    idx = _indices(keep, up.out_features)
    new_gate = narrow_linear(gate, keep_out=idx) if gate is not None else None
    return narrow_linear(up, keep_out=idx), narrow_linear(down, keep_in=idx), new_gate, idx


def compact_llama_mlps(model: nn.Module, multiple_of: int = 1) -> dict[str, tuple[int, int]]:
    """Compact every module with gate_proj/up_proj/down_proj (LLaMA, Mistral, Qwen MLPs) in place.

    `multiple_of` > 1 keeps a few dead neurons so the width stays a multiple of it (tensor cores like 8/64).
    Returns {module name: (old width, new width)}.
    """
    report: dict[str, tuple[int, int]] = {}
    for name, mod in model.named_modules():
        if not all(isinstance(getattr(mod, a, None), nn.Linear) for a in ("gate_proj", "up_proj", "down_proj")):
            continue
        keep = live_neurons(mod.up_proj, mod.down_proj, mod.gate_proj)
        width = int(keep.sum())
        target = min(keep.numel(), -(-width // multiple_of) * multiple_of) if width else 0
        if target > width:
            keep[(~keep).nonzero(as_tuple=False).flatten()[: target - width]] = True
        old = mod.up_proj.out_features
        mod.up_proj, mod.down_proj, mod.gate_proj, _ = compact_mlp(mod.up_proj, mod.down_proj, mod.gate_proj, keep)
        if hasattr(mod, "intermediate_size"):
            mod.intermediate_size = int(keep.sum())
        report[name] = (old, int(keep.sum()))
    return report
