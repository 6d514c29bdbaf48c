"""Pruning scores (lottery.pruning.scores) against independent computations, and their allocation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lottery.errors import ConfigError
from lottery.imp.masks import next_mask
from lottery.pruning import Mask, kept_count
from lottery.pruning.magnitude import _keep_top
from lottery.pruning.nm import check_nm
from lottery.pruning.scores import (
    GRASP_TEMPERATURE,
    SCORES,
    ScoreInputs,
    compute_scores,
    hutchinson_diagonal,
    obd_saliency,
    validate_score,
)

# The subject's Example 1: w, diag(H), gradient 0.
W1 = torch.tensor([0.5, 0.02, 1.0, 0.001, 0.3], dtype=torch.float64)
H1 = torch.tensor([1.0, 100.0, 1.0, 50.0, 1.0], dtype=torch.float64)


class Quadratic(nn.Module):
    """A 'model' whose only parameter is w and whose loss is ½(w − w*)ᵀH(w − w*) (batches ignored)."""

    def __init__(self, w: torch.Tensor, hessian: torch.Tensor, minimum: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(w.clone())
        self.hessian, self.minimum = hessian, minimum

    def loss(self, w: torch.Tensor | None = None) -> torch.Tensor:
        d = (self.weight if w is None else w) - self.minimum
        return 0.5 * d @ self.hessian @ d


def quadratic_loss(model: nn.Module, batch) -> torch.Tensor:
    return model.loss()


def dummy_batches(n: int):
    return [(torch.zeros(1), torch.zeros(1))] * n


def test_obd_reproduces_example_1() -> None:
    expected = torch.tensor([0.125, 0.02, 0.5, 2.5e-5, 0.045], dtype=torch.float64)
    assert torch.allclose(obd_saliency(W1, H1), expected, rtol=1e-12)
    # Through the registered score: a diagonal Hessian makes Hutchinson's estimate exact (z_i² = 1).
    model = Quadratic(W1, torch.diag(H1), minimum=W1)
    mask = Mask({"weight": torch.ones(5, dtype=torch.bool)})
    score = compute_scores("obd", model, mask, ScoreInputs(dummy_batches(1), 1, loss_fn=quadratic_loss))["weight"]
    assert torch.allclose(score, expected, rtol=1e-12)
    assert torch.argsort(score).tolist() == [3, 1, 4, 0, 2]  # prune w4, w2, w5, w1, w3 (in that order)


def test_obd_matches_measured_loss_change_on_a_quadratic() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    hessian = a @ a.T / 5 + torch.eye(5, dtype=torch.float64)  # correlated weights: off-diagonal terms
    w = torch.randn(5, generator=g, dtype=torch.float64)
    model = Quadratic(w, hessian, minimum=w)  # at the minimum, so g = 0 and ΔL is exactly ½·H_ii·w_i²
    mask = Mask({"weight": torch.ones(5, dtype=torch.bool)})
    diag = hutchinson_diagonal(model, [model.weight], dummy_batches(4000), quadratic_loss, seed=1)[0]
    assert torch.allclose(diag, torch.diag(hessian), rtol=0.05)
    estimate = compute_scores("obd", model, mask, ScoreInputs(dummy_batches(4000), 4000,
                                                              loss_fn=quadratic_loss, seed=1))["weight"]
    for i in range(5):
        removed = w.clone()
        removed[i] = 0
        measured = float((model.loss(removed) - model.loss()).detach())
        assert estimate[i] == pytest.approx(measured, rel=0.05)


def test_obd_and_magnitude_rank_alike_when_h_is_isotropic() -> None:
    w = torch.randn(50, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model = Quadratic(w, 3.0 * torch.eye(50, dtype=torch.float64), minimum=w)
    mask = Mask({"weight": torch.ones(50, dtype=torch.bool)})
    obd = compute_scores("obd", model, mask, ScoreInputs(dummy_batches(1), 1, loss_fn=quadratic_loss))["weight"]
    mag = compute_scores("magnitude", model, mask, ScoreInputs())["weight"]
    assert torch.equal(torch.argsort(obd), torch.argsort(mag))


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def tiny_batches(n: int = 3, size: int = 5, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 8, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


NAMES = ["1.weight", "3.weight"]


def dense(model: nn.Module) -> Mask:
    return Mask.ones(model, NAMES)


def test_snip_and_taylor1_equal_g_times_w_from_autograd() -> None:
    model, batches = tiny_mlp(), tiny_batches()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    params = dict(model.named_parameters())
    # Equal batch sizes: the mean of the batch means is the mean over all examples.
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), [params[n] for n in NAMES])
    for name in ("snip", "taylor1"):
        scores = compute_scores(name, model, dense(model), ScoreInputs(batches, len(batches)))
        for n, g in zip(NAMES, grads, strict=True):
            assert torch.allclose(scores[n], (g * params[n]).abs().detach(), atol=1e-7)


def test_grasp_equals_w_times_hessian_gradient_product() -> None:
    model, batches = tiny_mlp(), tiny_batches()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in NAMES]
    sizes = [s.numel() for s in shapes]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        w1, w2 = (p.view(s) for p, s in zip(flat.split(sizes), shapes, strict=True))
        h = F.relu(F.linear(x, w1, params["1.bias"].detach()))
        return F.cross_entropy(F.linear(h, w2, params["3.bias"].detach()) / GRASP_TEMPERATURE, y)

    flat = torch.cat([params[n].detach().flatten() for n in NAMES]).requires_grad_(True)
    g = torch.autograd.grad(loss_of(flat), flat)[0]
    hessian = torch.autograd.functional.hessian(loss_of, flat.detach())
    expected = (flat.detach() * (hessian @ g)).split(sizes)
    scores = compute_scores("grasp", model, dense(model), ScoreInputs(batches, len(batches)))
    for n, e, s in zip(NAMES, expected, shapes, strict=True):
        assert torch.allclose(scores[n], e.view(s), atol=1e-9, rtol=1e-4)


class NoBatches:
    def __iter__(self):
        raise AssertionError("a data-free score read a batch")


def test_synflow_is_data_free_positive_and_matches_the_path_sum() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    names = ["0.weight", "2.weight"]
    mask = Mask.ones(model, names)
    scores = compute_scores("synflow", model, mask, ScoreInputs(NoBatches(), 10, input_shape=(4,)))
    w1, w2 = model[0].weight.detach().double().abs(), model[2].weight.detach().double().abs()
    # R = 1ᵀ|W2||W1|1, so |w ⊙ ∂R/∂w| is |W1_ij|·Σ_k|W2_ki| and |W2_ki|·Σ_j|W1_ij|.
    assert torch.allclose(scores["0.weight"], w1 * w2.sum(0)[:, None])
    assert torch.allclose(scores["2.weight"], w2 * w1.sum(1)[None, :])
    assert all(bool((s > 0).all()) for s in scores.values())


def test_iterative_synflow_reaches_the_target_and_reproduces_its_last_round() -> None:
    model = tiny_mlp()
    mask = dense(model)
    rates = {n: None for n in NAMES}

    def allocate(scores, fraction):
        return next_mask({}, mask, 4 * fraction, rates, 0.5, scores=scores)

    inputs = ScoreInputs(NoBatches(), 1, input_shape=(8,), allocate=allocate, rounds=20)
    scores = compute_scores("synflow", model, mask, inputs)
    final = allocate(scores, 1.0)
    assert sum(final.kept().values()) == kept_count(sum(mask.sizes().values()), 0.5, 4)
    assert all(bool((scores[n][final[n]] > 0).all()) for n in NAMES)  # every kept weight has a finite score


@pytest.mark.parametrize("score", list(SCORES))
@pytest.mark.parametrize("allocation", ["layerwise", "global", "neurons", "2:4"])
def test_every_score_gives_the_exact_target_with_every_allocation(score: str, allocation: str) -> None:
    model = tiny_mlp()
    mask = dense(model)
    level, rate = 2, 0.3
    pattern = allocation if allocation in ("neurons", "2:4") else "unstructured"
    nm = (2, 4) if allocation == "2:4" else None
    rates = {n: (None if allocation == "global" else rate) for n in NAMES}
    trained = dict(model.state_dict())

    def allocate(scores, fraction):
        return next_mask(trained, mask, level * fraction, rates, rate, pattern, "l1", "3.weight", nm, scores=scores)

    inputs = ScoreInputs(tiny_batches(), 3, input_shape=(8,), allocate=allocate, rounds=5)
    new = allocate(compute_scores(score, model, mask, inputs), 1.0)
    if allocation == "global":
        assert sum(new.kept().values()) == kept_count(sum(mask.sizes().values()), rate, level)
    elif allocation == "layerwise":
        assert new.kept() == {n: kept_count(mask[n].numel(), rate, level) for n in NAMES}
    elif allocation == "neurons":  # the output layer's units are the classes: never removed this way
        rows = new["1.weight"].any(dim=1)
        assert int(rows.sum()) == kept_count(8, rate, level) and bool(new["1.weight"][rows].all())
        assert bool(new["3.weight"].all())
    else:
        assert all(check_nm(new[n], 2, 4) and new.kept()[n] == new[n].numel() // 2 for n in NAMES)


def test_structured_unit_score_is_the_sum_of_its_weights() -> None:
    model = tiny_mlp()
    mask = dense(model)
    scores = {"1.weight": torch.zeros(8, 8), "3.weight": torch.zeros(4, 8)}
    scores["1.weight"][[1, 4]] = torch.linspace(1, 2, 8)  # rows 1 and 4 carry the largest sums
    scores["1.weight"][0, 0] = 5.0  # the largest single score, but a small row sum
    new = next_mask(dict(model.state_dict()), mask, 1, {n: 0.75 for n in NAMES}, 0.75, "neurons", "l1", "3.weight", scores=scores)
    assert new["1.weight"].any(dim=1).nonzero().flatten().tolist() == [1, 4]


def test_random_scores_are_independent_of_the_init_drawn_from_the_same_seed() -> None:
    # A generator seeded like the init would pick weights by sign; the salted stream must not.
    model = nn.Linear(400, 300)
    torch.manual_seed(0)
    nn.init.normal_(model.weight)
    mask = Mask.ones(model, ["weight"])
    scores = compute_scores("random", model, mask, ScoreInputs(seed=0))
    keep = _keep_top(scores["weight"], mask["weight"], 60_000)
    assert 0.48 < float((model.weight.detach()[keep] > 0).float().mean()) < 0.52


def test_keep_top_is_the_stable_argsort_top_k() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(500):
        n = int(torch.randint(1, 30, (1,), generator=g))
        s = torch.randint(0, 3, (n,), generator=g).float() if trial % 2 else torch.randn(n, generator=g)
        if trial % 5 == 0:
            s[torch.rand(n, generator=g) < 0.3] = float("-inf")
        current = torch.rand(n, generator=g) < 0.7
        k = int(torch.randint(0, n + 2, (1,), generator=g))
        flat = torch.where(current, s, torch.tensor(float("-inf")))
        ref = torch.zeros(n, dtype=torch.bool)
        ref[torch.argsort(flat, descending=True, stable=True)[:k]] = True
        assert torch.equal(_keep_top(s, current, k), ref & current)


def test_data_scores_read_exactly_score_batches() -> None:
    seen = []

    def stream():
        for i, batch in enumerate(tiny_batches(10)):
            seen.append(i)
            yield batch

    model = tiny_mlp()
    compute_scores("taylor1", model, dense(model), ScoreInputs(stream(), 4))
    assert seen == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="score_batches=4"):
        compute_scores("snip", model, dense(model), ScoreInputs(tiny_batches(2), 4))


GOOD = dict(score="snip", score_batches=10, rounds=100, prune_at="auto", oneshot=True, rewind="init",
            pattern="unstructured", norm="l1")


@pytest.mark.parametrize("change,needle", [
    ({"score": "hessian"}, "pruning.score='hessian' is not allowed; choose one of magnitude, taylor1"),
    ({"score_batches": 0}, "pruning.score_batches=0 must be >= 1"),
    ({"score": "obd", "score_batches": -2}, "pruning.score_batches=-2"),
    ({"rewind": "iteration"}, "imp.rewind=iteration has no meaning when pruning at initialisation"),
    ({"score": "synflow", "rewind": "lr"}, "imp.rewind=lr has no meaning"),
    ({"score": "magnitude", "prune_at": "init", "rewind": "finetune"}, "imp.rewind=finetune"),
    ({"prune_at": "init", "oneshot": False}, "it needs imp.oneshot=true"),
    ({"prune_at": "later"}, "pruning.prune_at='later'"),
    ({"score": "synflow", "rounds": 0}, "pruning.synflow_rounds=0"),
    ({"pattern": "neurons", "norm": "l2"}, "pruning.norm=l2 applies to magnitude only"),
])
def test_bad_score_settings_name_the_key(change: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        validate_score(**{**GOOD, **change})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_good_score_settings_pass() -> None:
    validate_score(**GOOD)
    validate_score(**{**GOOD, "score": "magnitude", "score_batches": 0, "rewind": "iteration"})  # data-free
    validate_score(**{**GOOD, "score": "snip", "oneshot": False, "rewind": "iteration"})  # IMP with SNIP
    validate_score(**{**GOOD, "prune_at": "trained", "rewind": "lr"})  # SNIP on trained weights
