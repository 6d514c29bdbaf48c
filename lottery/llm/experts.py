"""Fused mixture-of-experts weights as one ``nn.Linear`` per expert while a block is pruned.

transformers 5 stores the experts of Mixtral, Qwen-MoE, ... as 3-D parameters (``gate_up_proj`` [E, 2I, H],
``down_proj`` [E, H, I]) in a module decorated with ``use_experts_implementation``. To give every expert its
own statistics (exactly the tokens routed to it) and its own mask, ``unfused_experts`` swaps such a module for
``UnfusedExperts`` — the same eager computation, written with per-expert linears — and on exit writes the
pruned weights back into the 3-D parameters and restores the original module. The swap is checked on a
random routed batch before it is used: a layout this eager loop does not reproduce is refused, not guessed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from lottery.errors import ConfigError

FUSED = ("gate_up_proj", "down_proj")


def is_fused_experts(module: nn.Module) -> bool:
    """A module holding its experts as 3-D parameters (any direct parameter with 3 dimensions)."""
    return any(p.dim() == 3 for p in module.parameters(recurse=False))


def _expert_weight(param: Tensor, e: int, transposed: bool) -> Tensor:
    """Expert ``e``'s weight as [d_out, d_in]."""
    return param[e].t() if transposed else param[e]


class UnfusedExperts(nn.Module):
    """Per-expert linears ``gate_up_proj.<e>`` and ``down_proj.<e>`` computing what the fused module computes."""

    def __init__(self, fused: nn.Module) -> None:
        super().__init__()
        self.num_experts = fused.num_experts
        self.transposed = bool(getattr(fused, "is_transposed", False))
        self.act_fn = fused.act_fn
        self._gate = type(fused)._apply_gate  # the class's own gating (default: act(gate) * up)
        self.gate_up_proj = nn.ModuleList()
        self.down_proj = nn.ModuleList()
        for e in range(self.num_experts):
            for name, target in (("gate_up_proj", self.gate_up_proj), ("down_proj", self.down_proj)):
                W = _expert_weight(getattr(fused, name).data, e, self.transposed)
                bias = getattr(fused, f"{name}_bias", None) if getattr(fused, "has_bias", False) else None
                linear = nn.Linear(W.shape[1], W.shape[0], bias=bias is not None, device=W.device, dtype=W.dtype)
                linear.weight.data.copy_(W)
                if bias is not None:
                    linear.bias.data.copy_(bias.data[e])
                target.append(linear)

    def forward(self, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
        final = torch.zeros_like(hidden_states)
        for e in range(self.num_experts):
            top_k_pos, token_idx = torch.where((top_k_index == e).t())  # the eager loop's order
            if token_idx.numel() == 0:
                continue  # the linears of an expert nobody is routed to are not called: no statistics
            h = self._gate(self, self.gate_up_proj[e](hidden_states[token_idx]))
            h = self.down_proj[e](h) * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, h.to(final.dtype))
        return final

    def write_back(self, fused: nn.Module) -> None:
        """Copy the (pruned) per-expert weights into the fused 3-D parameters."""
        for name in FUSED:
            param = getattr(fused, name).data
            for e, linear in enumerate(getattr(self, name)):
                param[e].copy_(linear.weight.data.t() if self.transposed else linear.weight.data)


@torch.no_grad()
def _check_equivalent(fused: nn.Module, unfused: UnfusedExperts, path: str) -> None:
    """Refuse a fused layout the eager loop does not reproduce, on 16 random tokens routed to every expert."""
    E = unfused.num_experts
    d_in = unfused.gate_up_proj[0].in_features
    p = unfused.gate_up_proj[0].weight
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(16, d_in, generator=g).to(p.device, p.dtype)
    k = min(2, E)
    idx = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(16)]).to(p.device)
    idx[: min(16, E), 0] = torch.arange(min(16, E), device=p.device)  # every expert gets a token (if E <= 16)
    w = torch.softmax(torch.randn(16, k, generator=g), dim=-1).to(p.device, p.dtype)
    want, got = fused(x, idx, w), unfused(x, idx, w)
    tol = 1e-4 if p.dtype == torch.float32 else 2e-2
    scale = want.abs().max().clamp_min(1e-12)
    if not bool(torch.isfinite(got).all()) or float((got - want).abs().max() / scale) > tol:
        raise ConfigError(f"{path} ({type(fused).__name__}): this fused mixture-of-experts layout is not supported "
                          "(the per-expert eager loop does not reproduce it); exclude the block's experts or add an "
                          "adapter in lottery/llm/experts.py")


@contextlib.contextmanager
def unfused_experts(block: nn.Module, prefix: str) -> Iterator[dict[str, tuple[nn.Module, UnfusedExperts]]]:
    """Within the block: every fused experts module replaced by ``UnfusedExperts``; restored (pruned) on exit.

    Yields ``{full path of the experts module: (fused, unfused)}``.
    """
    swapped: dict[str, tuple[nn.Module, UnfusedExperts]] = {}
    for rel, module in list(block.named_modules()):
        if rel and is_fused_experts(module):
            full = f"{prefix}.{rel}"
            if not all(hasattr(module, a) for a in ("num_experts", "_apply_gate", *FUSED)):
                raise ConfigError(f"{full} ({type(module).__name__}) holds 3-D expert weights in a layout this driver "
                                  f"does not know (expected {' and '.join(FUSED)} with num_experts)")
            try:
                unfused = UnfusedExperts(module)
                _check_equivalent(module, unfused, full)
            except (AttributeError, RuntimeError, TypeError) as err:
                raise ConfigError(f"{full} ({type(module).__name__}): this fused mixture-of-experts layout is not "
                                  f"supported ({type(err).__name__}: {err})") from None
            parent_path, _, child = rel.rpartition(".")
            setattr(block.get_submodule(parent_path) if parent_path else block, child, unfused)
            swapped[full] = (module, unfused)
    try:
        yield swapped
    finally:
        for full, (fused, unfused) in swapped.items():
            unfused.write_back(fused)
            rel = full[len(prefix) + 1:]
            parent_path, _, child = rel.rpartition(".")
            setattr(block.get_submodule(parent_path) if parent_path else block, child, fused)


def fuse_masks(masks: dict[str, Tensor], swapped: dict[str, tuple[nn.Module, UnfusedExperts]]) -> None:
    """Replace per-expert mask entries ``<experts>.<proj>.<e>.weight`` by one ``<experts>.<proj>`` in the fused layout.

    Experts excluded from pruning get all-True (keep) slices; a projection with no pruned expert gets no mask.
    """
    for full, (fused, unfused) in swapped.items():
        for name in FUSED:
            keys = [f"{full}.{name}.{e}.weight" for e in range(unfused.num_experts)]
            if not any(k in masks for k in keys):
                continue
            param = getattr(fused, name)
            parts = []
            for e, key in enumerate(keys):
                mask = masks.pop(key, None)
                if mask is None:
                    mask = torch.ones_like(_expert_weight(param.data, e, unfused.transposed), dtype=torch.bool)
                parts.append(mask.t() if unfused.transposed else mask)
            masks[f"{full}.{name}"] = torch.stack([p.cpu() for p in parts]).contiguous()
