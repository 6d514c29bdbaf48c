"""Mask as data: apply, densities, save/load round trip, comparison, overlap."""

from __future__ import annotations

import torch
from torch import nn

from lottery.pruning import Mask, jaccard
from lottery.tracking import load_torch, save_torch


def test_apply_zeroes_exactly_the_pruned_weights(tmp_path) -> None:
    model = nn.Linear(6, 4)
    keep = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.5
    mask = Mask({"weight": keep})
    before = model.weight.detach().clone()
    mask.apply_(model)
    assert torch.equal(model.weight[~keep], torch.zeros(int((~keep).sum())))
    assert torch.equal(model.weight[keep], before[keep])
    assert mask.density()["weight"] == int(keep.sum()) / keep.numel()

    save_torch(mask.state_dict(), tmp_path / "mask.pt")
    again = Mask(load_torch(tmp_path / "mask.pt"))
    assert again == mask
    assert again != Mask({"weight": ~keep})


def test_jaccard() -> None:
    a = Mask({"w": torch.tensor([True, True, False, False])})
    b = Mask({"w": torch.tensor([True, False, True, False])})
    assert jaccard(a, b) == 1 / 3
    assert jaccard(a, a) == 1.0
