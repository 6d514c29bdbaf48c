"""Mask analysis: sparsity, per-layer Jaccard overlap and θ0 histograms, against brute-force counts."""

from __future__ import annotations

import json

import pytest
import torch

from lottery.pruning import Mask, jaccard
from lottery.pruning.analysis import jaccard_per_layer, layer_sparsity, mask_overlap, surviving_init_histogram


def _init(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(20, 15, generator=g) * 0.3, "b.weight": torch.randn(6, 3, 3, 3, generator=g),
            "c.weight": torch.randn(4, 20, generator=g) * 2.0}


def _random_mask(density: float, seed: int) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({k: torch.rand(v.shape, generator=g) < density for k, v in _init().items()})


def _kept_set(m: torch.Tensor) -> set[int]:
    return {i for i, keep in enumerate(m.flatten().tolist()) if keep}


def test_layer_sparsity_is_the_pruned_fraction() -> None:
    mask = _random_mask(0.3, 1)
    got = layer_sparsity(mask)
    for name, m in mask.items():
        pruned = sum(1 for keep in m.flatten().tolist() if not keep)
        assert got[name] == pytest.approx(pruned / m.numel())


def test_jaccard_per_layer_matches_set_computation() -> None:
    a, b = _random_mask(0.5, 1), _random_mask(0.4, 2)
    got = jaccard_per_layer(a, b)
    assert set(got) == set(a)
    for name in a:
        sa, sb = _kept_set(a[name]), _kept_set(b[name])
        assert got[name] == pytest.approx(len(sa & sb) / len(sa | sb))
    pairs_a = {(n, i) for n in a for i in _kept_set(a[n])}
    pairs_b = {(n, i) for n in b for i in _kept_set(b[n])}
    overlap = mask_overlap(a, b)
    assert overlap["per_layer"] == got
    assert overlap["overall"] == pytest.approx(len(pairs_a & pairs_b) / len(pairs_a | pairs_b))
    assert overlap["overall"] == jaccard(a, b)
    assert jaccard_per_layer(a, a) == {name: 1.0 for name in a}


def test_jaccard_edge_cases() -> None:
    empty = Mask({"w": torch.zeros(3, 3, dtype=torch.bool)})
    assert jaccard_per_layer(empty, empty) == {"w": 1.0}
    full = Mask({"w": torch.ones(3, 3, dtype=torch.bool)})
    assert jaccard_per_layer(empty, full) == {"w": 0.0}
    with pytest.raises(ValueError, match="different layers"):
        jaccard_per_layer(full, Mask({"v": torch.ones(3, 3, dtype=torch.bool)}))
    with pytest.raises(ValueError, match="w: mask shapes differ"):
        jaccard_per_layer(full, Mask({"w": torch.ones(3, 4, dtype=torch.bool)}))


def _brute_counts(values: list[float], edges: list[float]) -> list[int]:
    counts = [0] * (len(edges) - 1)
    for x in values:
        for i in range(len(counts)):
            last = i == len(counts) - 1
            if edges[i] <= x < edges[i + 1] or (last and x == edges[-1]):
                counts[i] += 1
                break
    return counts


@pytest.mark.parametrize("bins", [1, 7, 50])
def test_histograms_count_survivors_and_pruned_on_a_shared_symmetric_range(bins: int) -> None:
    init, mask = _init(), _random_mask(0.35, 3)
    h = surviving_init_histogram(init, mask, bins=bins)
    assert h["bins"] == bins and set(h["layers"]) == set(mask)
    for name, m in mask.items():
        layer = h["layers"][name]
        bound = float(init[name].abs().max())
        assert len(layer["edges"]) == bins + 1
        assert layer["edges"][0] == pytest.approx(-bound) and layer["edges"][-1] == pytest.approx(bound)
        assert sum(layer["kept"]) == layer["num_kept"] == int(m.sum())
        assert sum(layer["pruned"]) == layer["num_pruned"] == int((~m).sum())
        assert layer["kept"] == _brute_counts(init[name][m].tolist(), layer["edges"])
        assert layer["pruned"] == _brute_counts(init[name][~m].tolist(), layer["edges"])
    overall = h["overall"]
    bound = max(float(v.abs().max()) for v in init.values())
    assert overall["edges"][0] == pytest.approx(-bound) and overall["edges"][-1] == pytest.approx(bound)
    total_kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    assert sum(overall["kept"]) == overall["num_kept"] == total_kept
    assert sum(overall["pruned"]) == overall["num_pruned"] == total - total_kept
    all_kept = [x for n, m in mask.items() for x in init[n][m].tolist()]
    assert overall["kept"] == _brute_counts(all_kept, overall["edges"])
    assert json.loads(json.dumps(h)) == h


def test_magnitude_survivors_sit_in_the_tails() -> None:
    # A mask that keeps the largest |θ0| (one-shot magnitude pruning at init) has no survivors near 0.
    init = {"w": (torch.arange(100, dtype=torch.float64) - 49.5) / 49.5}  # no value on a bin edge but ±1
    mask = Mask({"w": init["w"].abs() > 0.5})
    h = surviving_init_histogram(init, mask, bins=4)["layers"]["w"]
    assert h["kept"] == [25, 0, 0, 25] and h["pruned"] == [0, 25, 25, 0]


def test_histogram_edge_cases() -> None:
    init = {"z": torch.zeros(3, 4), "w": torch.randn(2, 2)}
    mask = Mask({"z": torch.ones(3, 4, dtype=torch.bool), "w": torch.zeros(2, 2, dtype=torch.bool)})
    h = surviving_init_histogram(init, mask, bins=4)
    assert h["layers"]["z"]["edges"] == [-0.5, -0.25, 0.0, 0.25, 0.5]
    assert sum(h["layers"]["z"]["kept"]) == 12 and sum(h["layers"]["w"]["kept"]) == 0
    assert sum(h["layers"]["w"]["pruned"]) == 4
    # The range is set by the largest |θ0|, here a negative one.
    skewed = surviving_init_histogram({"s": torch.tensor([-3.0, 1.0, 0.5, 2.0])},
                                      Mask({"s": torch.tensor([True, False, True, True])}), bins=3)
    assert skewed["layers"]["s"]["edges"] == [-3.0, -1.0, 1.0, 3.0]
    assert skewed["layers"]["s"]["kept"] == [1, 1, 1] and skewed["layers"]["s"]["pruned"] == [0, 0, 1]
    assert skewed["overall"] == skewed["layers"]["s"]
    with pytest.raises(ValueError, match="bins"):
        surviving_init_histogram(init, mask, bins=0)
    with pytest.raises(ValueError, match="w: .*shape"):
        surviving_init_histogram({"z": init["z"], "w": torch.randn(3)}, mask)
