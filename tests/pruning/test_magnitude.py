"""Magnitude pruning: target counts, layerwise vs global allocation, per-layer rates and exclusions."""

from __future__ import annotations

import pytest
import torch

from lottery.pruning import Mask, kept_count, magnitude_prune, resolve_rates


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Very different scales per layer, so global and layerwise allocation must disagree.
    return {"a.weight": torch.randn(50, 40, generator=g) * 1.0,
            "b.weight": torch.randn(30, 50, generator=g) * 0.1,
            "c.weight": torch.randn(10, 30, generator=g) * 3.0}


def _ones(weights: dict[str, torch.Tensor]) -> Mask:
    return Mask({k: torch.ones_like(v, dtype=torch.bool) for k, v in weights.items()})


@pytest.mark.parametrize("rate", [0.2, 0.1, 0.35])
def test_layerwise_fraction_after_levels_is_geometric(rate: float) -> None:
    weights = _weights()
    mask = _ones(weights)
    rates = {k: rate for k in weights}
    for level in range(1, 13):
        # A fresh "training" each round: new magnitudes, as IMP sees after retraining.
        trained = {k: v * mask[k] + 0.01 * torch.randn_like(v) for k, v in _weights(level).items()}
        new = magnitude_prune(trained, mask, level, rates, global_rate=rate)
        for name, m in new.items():
            expected = m.numel() * (1 - rate) ** level
            assert abs(int(m.sum()) - expected) <= 1, (name, level, int(m.sum()), expected)
            assert not (m & ~mask[name]).any(), "a pruned weight came back"
        mask = new


def test_layerwise_prunes_smallest_magnitudes_within_each_layer() -> None:
    weights = _weights()
    mask = magnitude_prune(weights, _ones(weights), 1, {k: 0.5 for k in weights}, global_rate=0.5)
    for name, w in weights.items():
        kept, pruned = w.abs()[mask[name]], w.abs()[~mask[name]]
        assert kept.min() >= pruned.max()
        assert int(mask[name].sum()) == kept_count(w.numel(), 0.5, 1)


def test_global_uses_one_threshold_across_layers() -> None:
    weights = _weights()
    mask = magnitude_prune(weights, _ones(weights), 1, {k: None for k in weights}, global_rate=0.5)
    all_w = torch.cat([w.abs().flatten() for w in weights.values()])
    all_m = torch.cat([mask[k].flatten() for k in weights])
    # Brute force: the kept set is exactly the top half of all magnitudes.
    top = torch.zeros_like(all_m)
    top[all_w.argsort(descending=True)[: kept_count(all_w.numel(), 0.5, 1)]] = True
    assert torch.equal(all_m, top)
    # The small-scale layer loses far more than half, the large-scale one far less: unlike layerwise.
    density = mask.density()
    assert density["b.weight"] < 0.1 and density["c.weight"] > 0.8


def test_layer_rates_and_exclusions() -> None:
    names = ["layers.0.weight", "layers.1.weight", "head.weight"]
    rates = resolve_rates(names, "layerwise", 0.2, "head.weight", 0.1, {"layers.1": 0.5}, [])
    assert rates == {"layers.0.weight": 0.2, "layers.1.weight": 0.5, "head.weight": 0.1}
    rates = resolve_rates(names, "global", 0.2, "head.weight", None, {}, ["head"])
    assert rates == {"layers.0.weight": None, "layers.1.weight": None}
    rates = resolve_rates(names, "global", 0.2, "head.weight", 0.1, {"layers.*": 0.3}, [])
    assert rates == {"layers.0.weight": 0.3, "layers.1.weight": 0.3, "head.weight": 0.1}


def test_mixed_global_pool_and_fixed_layer() -> None:
    weights = _weights()
    rates = {"a.weight": None, "b.weight": None, "c.weight": 0.1}
    mask = magnitude_prune(weights, _ones(weights), 2, rates, global_rate=0.2)
    assert int(mask["c.weight"].sum()) == kept_count(300, 0.1, 2)
    pool = int(mask["a.weight"].sum()) + int(mask["b.weight"].sum())
    assert pool == kept_count(2000 + 1500, 0.2, 2)
