"""Structured IMP patterns: whole units by Ln norm, and N:M groups, checked against brute-force loops."""

from __future__ import annotations

import pytest
import torch

from lottery.pruning import Mask, kept_count
from lottery.pruning.nm import check_nm
from lottery.pruning.structured import nm_prune, structured_prune


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(20, 12, generator=g),
            "conv.weight": torch.randn(16, 8, 3, 3, generator=g),
            "head.weight": torch.randn(5, 20, generator=g)}


def _ones(weights: dict[str, torch.Tensor]) -> Mask:
    return Mask({k: torch.ones_like(v, dtype=torch.bool) for k, v in weights.items()})


def _random_mask(weights: dict[str, torch.Tensor], density: float, seed: int) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({k: torch.rand(v.shape, generator=g) < density for k, v in weights.items()})


def _brute_units(w: torch.Tensor, m: torch.Tensor, dim: int, norm: str, k: int) -> set[int]:
    """Indices of the k alive units with the largest norm of kept weights, ties to the lower index."""
    scores = []
    for i in range(w.shape[dim]):
        kept = [float(x) for x, keep in zip(w.select(dim, i).flatten(), m.select(dim, i).flatten(), strict=True)
                if keep]
        if kept:
            s = sum(abs(x) for x in kept) if norm == "l1" else sum(x * x for x in kept) ** 0.5
            scores.append((-s, i))
    return {i for _, i in sorted(scores)[:k]}


def _alive_units(m: torch.Tensor, dim: int) -> set[int]:
    return {i for i in range(m.shape[dim]) if bool(m.select(dim, i).any())}


CASES = [  # (layer, pattern, unit dim)
    ("fc.weight", "neurons", 0),
    ("fc.weight", "channels", 1),
    ("fc.weight", "filters", 0),
    ("conv.weight", "filters", 0),
    ("conv.weight", "neurons", 0),
    ("conv.weight", "channels", 1),
]


@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize(("layer", "pattern", "dim"), CASES)
def test_removes_whole_units_and_keeps_the_top_k_by_norm(layer: str, pattern: str, dim: int, norm: str) -> None:
    weights = _weights()
    new = structured_prune(weights, _ones(weights), 1, {layer: 0.4}, pattern, norm)
    m = new[layer]
    units = m.shape[dim]
    for i in range(units):
        s = m.select(dim, i)
        assert bool(s.all()) or not bool(s.any()), f"unit {i} is partly pruned"
    k = kept_count(units, 0.4, 1)
    assert _alive_units(m, dim) == _brute_units(weights[layer], torch.ones_like(m), dim, norm, k)


@pytest.mark.parametrize(("layer", "pattern", "dim"), CASES)
def test_scores_only_kept_weights_and_kept_units_keep_their_element_mask(layer: str, pattern: str,
                                                                         dim: int) -> None:
    weights = _weights(1)
    old = _random_mask(weights, 0.6, seed=2)
    new = structured_prune(weights, old, 2, {layer: 0.3}, pattern, "l1")
    k = kept_count(old[layer].shape[dim], 0.3, 2)
    expected = _brute_units(weights[layer], old[layer], dim, "l1", k)
    assert _alive_units(new[layer], dim) == expected
    for i in range(old[layer].shape[dim]):
        want = old[layer].select(dim, i) if i in expected else torch.zeros_like(old[layer].select(dim, i))
        assert torch.equal(new[layer].select(dim, i), want)


def test_pruned_weights_do_not_count_towards_the_norm() -> None:
    # Row 0 is huge but only through a weight that is already pruned; row 1 is small but fully kept.
    w = torch.tensor([[100.0, 0.1], [1.0, 1.0]])
    old = Mask({"w": torch.tensor([[True, True], [True, True]])})
    assert torch.equal(structured_prune({"w": w}, old, 1, {"w": 0.5}, "neurons")["w"][0], torch.tensor([True, True]))
    old = Mask({"w": torch.tensor([[False, True], [True, True]])})
    new = structured_prune({"w": w}, old, 1, {"w": 0.5}, "neurons")["w"]
    assert torch.equal(new, torch.tensor([[False, False], [True, True]]))


def test_l1_and_l2_rank_differently() -> None:
    # Row 0: L1 = 4, L2 = 2. Row 1: L1 = 3, L2 = 3.
    w = {"w": torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])}
    mask = Mask({"w": torch.ones(2, 4, dtype=torch.bool)})
    l1 = structured_prune(w, mask, 1, {"w": 0.5}, "neurons", "l1")["w"]
    l2 = structured_prune(w, mask, 1, {"w": 0.5}, "neurons", "l2")["w"]
    assert l1[0].all() and not l1[1].any()
    assert l2[1].all() and not l2[0].any()


def test_ties_go_to_the_lower_index() -> None:
    # Enough equal units that an unstable sort would reorder them.
    w = {"w": torch.ones(60, 3)}
    w["w"][::7] = 2.0
    new = structured_prune(w, Mask({"w": torch.ones(60, 3, dtype=torch.bool)}), 1, {"w": 0.5}, "neurons")
    big = list(range(0, 60, 7))
    expected = big + [i for i in range(60) if i not in big][: 30 - len(big)]
    assert [i for i in range(60) if new["w"][i].all()] == sorted(expected)


@pytest.mark.parametrize(("layer", "pattern", "dim"), CASES)
def test_counts_follow_kept_count_and_masks_are_nested_across_levels(layer: str, pattern: str, dim: int) -> None:
    weights = _weights()
    mask = _ones(weights)
    units = mask[layer].shape[dim]
    for level in range(1, 8):
        # New magnitudes each round, as after retraining: the ranking moves, the nesting must hold.
        trained = {k: v * mask[k] + 0.05 * torch.randn_like(v) for k, v in _weights(100 + level).items()}
        new = structured_prune(trained, mask, level, {layer: 0.25}, pattern, "l2")
        assert len(_alive_units(new[layer], dim)) == kept_count(units, 0.25, level)
        for name in new:
            assert not (new[name] & ~mask[name]).any(), f"{name}: a pruned weight came back at level {level}"
            if name != layer:
                assert torch.equal(new[name], mask[name]), "a layer without a rate changed"
        mask = new


def test_dead_units_never_come_back_even_below_target() -> None:
    w = {"w": torch.randn(10, 4)}
    old = torch.ones(10, 4, dtype=torch.bool)
    old[:7] = False  # 3 alive units, target at level 1 is 8
    new = structured_prune(w, Mask({"w": old}), 1, {"w": 0.2}, "neurons")["w"]
    assert torch.equal(new, old)


def test_structured_errors() -> None:
    weights = _weights()
    mask = _ones(weights)
    with pytest.raises(ValueError, match="pattern"):
        structured_prune(weights, mask, 1, {"fc.weight": 0.2}, "rows")
    with pytest.raises(ValueError, match="norm"):
        structured_prune(weights, mask, 1, {"fc.weight": 0.2}, "neurons", norm="l3")
    bias = {"b": torch.randn(5)}
    with pytest.raises(ValueError, match="b: .*shape"):
        structured_prune(bias, Mask({"b": torch.ones(5, dtype=torch.bool)}), 1, {"b": 0.2}, "neurons")


# --- N:M ---------------------------------------------------------------------------------------------------


def _groups(shape: torch.Size, m: int) -> dict[tuple[int, int], list[tuple[int, ...]]]:
    """Brute force: (row, group) -> element indices, with groups along the row-major input index."""
    out: dict[tuple[int, int], list[tuple[int, ...]]] = {}
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in shape]).tolist():
        j = 0
        for d in range(1, len(shape)):  # row-major position within the row: in·kh·kw
            j = j * shape[d] + idx[d]
        out.setdefault((idx[0], j // m), []).append(tuple(idx))
    return out


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (3, 3)])
@pytest.mark.parametrize("prior_density", [1.0, 0.7])
def test_nm_keeps_exactly_the_n_largest_kept_weights_of_every_group(n: int, m: int, prior_density: float) -> None:
    g = torch.Generator().manual_seed(3)
    weights = {"fc.weight": torch.randn(6, 24, generator=g), "conv.weight": torch.randn(4, 2, 3, 4, generator=g)}
    old = _random_mask(weights, prior_density, seed=4) if prior_density < 1 else _ones(weights)
    new = nm_prune(weights, old, list(weights), n, m)
    for name, w in weights.items():
        assert not (new[name] & ~old[name]).any()
        assert check_nm(new[name].reshape(w.shape[0], -1), n, m)
        for (row, grp), idxs in _groups(w.shape, m).items():
            assert len(idxs) == m
            candidates = [i for i in idxs if bool(old[name][i])]
            kept = {i for i in idxs if bool(new[name][i])}
            assert len(kept) <= n, (name, row, grp)
            want = set(sorted(candidates, key=lambda i: -abs(float(w[i])))[:n])
            assert kept == want, (name, row, grp)


def test_nm_is_idempotent_under_retraining() -> None:
    weights = _weights()
    names = ["fc.weight", "conv.weight", "head.weight"]
    first = nm_prune(weights, _ones(weights), names, 2, 4)
    again = nm_prune(_weights(7), first, {n: 0.5 for n in names}, 2, 4)  # other weights, rates mapping
    assert again == first
    assert nm_prune(weights, first, names, 2, 4) == first


def test_nm_leaves_other_layers_alone() -> None:
    weights = _weights()
    mask = _random_mask(weights, 0.8, seed=5)
    new = nm_prune(weights, mask, ["conv.weight"], 1, 4)
    assert torch.equal(new["fc.weight"], mask["fc.weight"]) and torch.equal(new["head.weight"], mask["head.weight"])
    assert not torch.equal(new["conv.weight"], mask["conv.weight"])


def test_nm_errors() -> None:
    weights = _weights()
    mask = _ones(weights)
    with pytest.raises(ValueError, match="n <= m"):
        nm_prune(weights, mask, ["fc.weight"], 5, 4)
    with pytest.raises(ValueError, match="1 <= n"):
        nm_prune(weights, mask, ["fc.weight"], 0, 4)
    # head has 20 inputs per row: not divisible by 8.
    with pytest.raises(ValueError, match=r"head\.weight.*m=8.*\(5, 20\).*20 inputs"):
        nm_prune(weights, mask, ["head.weight"], 2, 8)
