"""Random masks for the random-pruning control: exact per-layer counts, seeded, uniform positions."""

from __future__ import annotations

import torch

from lottery.pruning import Mask, magnitude_prune
from lottery.pruning.random import random_mask_like


def _mask() -> Mask:
    g = torch.Generator().manual_seed(0)
    weights = {"a.weight": torch.randn(30, 20, generator=g), "b.weight": torch.randn(8, 4, 3, 3, generator=g),
               "c.weight": torch.randn(10, 30, generator=g)}
    ones = Mask({k: torch.ones_like(v, dtype=torch.bool) for k, v in weights.items()})
    mask = magnitude_prune(weights, ones, 3, {"a.weight": 0.5, "b.weight": 0.2, "c.weight": 0.1}, 0.0)
    # Edge cases: a layer with nothing kept and one with everything kept.
    return Mask({**mask, "empty": torch.zeros(5, 5, dtype=torch.bool), "full": torch.ones(4, 6, dtype=torch.bool)})


def test_same_count_and_shape_in_every_layer() -> None:
    mask = _mask()
    for seed in range(5):
        rnd = random_mask_like(mask, seed)
        assert list(rnd) == list(mask)
        for name in mask:
            assert rnd[name].shape == mask[name].shape and rnd[name].dtype == torch.bool
            assert int(rnd[name].sum()) == int(mask[name].sum()), (name, seed)


def test_reproducible_per_seed_and_different_between_seeds() -> None:
    mask = _mask()
    assert random_mask_like(mask, 7) == random_mask_like(mask, 7)
    assert random_mask_like(mask, 7) != random_mask_like(mask, 8)
    # Not just the input mask again.
    assert not torch.equal(random_mask_like(mask, 7)["a.weight"], mask["a.weight"])


def test_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    random_mask_like(_mask(), 3)
    assert torch.equal(torch.get_rng_state(), state)


def test_positions_are_uniform() -> None:
    # 30 of 100 kept: over 400 seeds each position should be kept about 30% of the time (sd ≈ 0.023).
    mask = Mask({"w": torch.arange(100).view(10, 10) < 30})
    freq = torch.stack([random_mask_like(mask, s)["w"].float() for s in range(400)]).mean(dim=0)
    assert (freq - 0.3).abs().max() < 0.12
    # Rows 0-2 are the input mask's kept rows: they must not be favoured.
    assert abs(float(freq[:3].mean()) - 0.3) < 0.05
