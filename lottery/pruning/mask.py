"""A mask is data: parameter name -> boolean tensor (True = kept). Saved, loaded, compared and applied here."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn


class Mask(Mapping[str, torch.Tensor]):
    """An immutable-by-convention mapping from parameter names to boolean keep-masks."""

    def __init__(self, masks: Mapping[str, torch.Tensor]):
        self._masks = {name: m.detach().to(torch.bool).cpu() for name, m in masks.items()}

    @classmethod
    def ones(cls, model: nn.Module, names: Iterable[str]) -> Mask:
        """The dense mask over `names` (every weight kept)."""
        params = dict(model.named_parameters())
        return cls({name: torch.ones_like(params[name], dtype=torch.bool) for name in names})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask) or self.keys() != other.keys():
            return False
        return all(torch.equal(self[k], other[k]) for k in self)

    def __hash__(self) -> int:  # masks are compared by content, like tensors they are not hashable
        raise TypeError("Mask is not hashable")

    def kept(self) -> dict[str, int]:
        return {name: int(m.sum()) for name, m in self.items()}

    def sizes(self) -> dict[str, int]:
        return {name: m.numel() for name, m in self.items()}

    def density(self) -> dict[str, float]:
        """Fraction of weights remaining per layer."""
        return {name: int(m.sum()) / m.numel() for name, m in self.items()}

    def total_density(self) -> float:
        """Fraction of prunable weights remaining over all layers."""
        return sum(self.kept().values()) / max(sum(self.sizes().values()), 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._masks)

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> None:
        """Zero the pruned weights of `model` in place."""
        params = dict(model.named_parameters())
        for name, m in self.items():
            params[name].mul_(m.to(params[name].device, params[name].dtype))

    def apply_to_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A copy of a state dict with the pruned weights zeroed (e.g. a ticket: θ0 ⊙ mask)."""
        out = {k: v.clone() for k, v in state.items()}
        for name, m in self.items():
            out[name] = out[name] * m.to(out[name].dtype)
        return out


def jaccard(a: Mask, b: Mask) -> float:
    """Overlap of the kept weights of two masks: |a ∩ b| / |a ∪ b| over all layers."""
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    union = sum(int((a[k] | b[k]).sum()) for k in a)
    return inter / union if union else 1.0
