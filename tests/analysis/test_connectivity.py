"""lottery.analysis.connectivity: interpolation under a mask, BatchNorm recomputation, the error barrier, and
the barrier's two reference cases on a toy task (independent networks: large; identical copies: none)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lottery.analysis import error_barrier, evaluate, interpolate, linear_path, recompute_batchnorm


def _mlp(seed: int, hidden: int = 32, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    norm = [nn.BatchNorm1d(hidden)] if batchnorm else []
    return nn.Sequential(nn.Linear(2, hidden), *norm, nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 2))


def _xor(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points of the plane labelled by the sign of x0·x1: a task a linear model cannot solve."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    return x, ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()


def _train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], order_seed: int, steps: int = 300) -> nn.Module:
    x, y = data
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    order = torch.Generator().manual_seed(order_seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=order)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU results are then deterministic run to run
    yield
    torch.set_num_threads(threads)


def test_error_barrier_worked_example() -> None:
    # max 0.30 minus the endpoints' mean (0.10 + 0.20) / 2
    assert error_barrier([0.10, 0.25, 0.30, 0.20]) == pytest.approx(0.15)
    assert error_barrier([0.2, 0.1, 0.2]) == 0.0  # a dip is no barrier
    with pytest.raises(ValueError):
        error_barrier([0.1])


def test_interpolate_matches_the_formula_and_returns_exact_endpoints() -> None:
    a, b = _mlp(0).state_dict(), _mlp(1).state_dict()
    mid = interpolate(a, b, 0.3)
    for name in a:
        assert torch.allclose(mid[name], 0.7 * a[name] + 0.3 * b[name], atol=1e-7)
        assert torch.equal(interpolate(a, b, 0.0)[name], a[name])
        assert torch.equal(interpolate(a, b, 1.0)[name], b[name])


def test_interpolated_weights_keep_the_mask() -> None:
    a, b = _mlp(0).state_dict(), _mlp(1).state_dict()  # dense: nonzero where the mask prunes
    g = torch.Generator().manual_seed(0)
    mask = {name: torch.rand(a[name].shape, generator=g) < 0.3 for name in ("0.weight", "2.weight", "4.weight")}
    for alpha in torch.linspace(0, 1, 7).tolist():
        point = interpolate(a, b, alpha, mask)
        for name, keep in mask.items():
            assert torch.count_nonzero(point[name][~keep]) == 0
            assert torch.count_nonzero(point[name][keep]) == int(keep.sum())  # kept weights stay nonzero here
        assert torch.equal(point["0.bias"], interpolate(a, b, alpha)["0.bias"])  # unmasked tensors untouched


def test_path_endpoints_reproduce_the_two_networks_errors_exactly() -> None:
    data, test = _xor(256, 0), [_xor(500, 1)]
    a, b = _train(_mlp(0), data, 0, steps=60), _train(_mlp(1), data, 1, steps=60)
    path = linear_path(_mlp(2), a.state_dict(), b.state_dict(), 5, test)
    assert path.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert path.errors[0] == evaluate(a, test)[0] and path.losses[0] == evaluate(a, test)[1]
    assert path.errors[-1] == evaluate(b, test)[0] and path.losses[-1] == evaluate(b, test)[1]
    assert not path.batchnorm_recomputed


def test_barrier_of_a_network_with_itself_is_zero() -> None:
    net = _train(_mlp(0), _xor(256, 0), 0, steps=60)
    path = linear_path(_mlp(1), net.state_dict(), net.state_dict(), 6, [_xor(500, 1)])
    assert len(set(path.errors)) == 1 and path.barrier == 0.0


def test_independent_networks_show_a_large_barrier_and_same_order_copies_none() -> None:
    data, test = _xor(512, 0), [_xor(2000, 1)]
    for seed in (0, 1):
        a, b = _train(_mlp(seed), data, 0), _train(_mlp(seed + 10), data, 1)  # different inits and orders
        independent = linear_path(_mlp(0), a.state_dict(), b.state_dict(), 11, test)
        ends = (independent.errors[0] + independent.errors[-1]) / 2
        assert max(independent.errors[0], independent.errors[-1]) < 0.12  # both endpoints learn the task ...
        assert independent.barrier > max(0.1, 2 * ends)  # ... the line between them climbs well above them
        c, d = _train(_mlp(seed), data, 5), _train(_mlp(seed), data, 5)  # one state, one data order
        same = linear_path(_mlp(0), c.state_dict(), d.state_dict(), 11, test)
        assert same.barrier == 0.0


def test_recompute_batchnorm_gives_the_datas_statistics() -> None:
    model = _mlp(0, batchnorm=True)
    x = torch.randn(400, 2) * 3 + 1
    recompute_batchnorm(model, [(x, torch.zeros(400))])
    with torch.no_grad():
        features = model[0](x)
    bn = model[1]
    assert torch.allclose(bn.running_mean, features.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, features.var(0, unbiased=True), rtol=1e-4)
    assert bn.momentum == 0.1 and not model.training


def test_batchnorm_path_recomputes_statistics_at_every_point() -> None:
    data, test = _xor(256, 0), [_xor(500, 1)]
    a = _train(_mlp(0, batchnorm=True), data, 0, steps=60)
    b = _train(_mlp(1, batchnorm=True), data, 1, steps=60)
    bn_batches = [(data[0][i:i + 64], data[1][i:i + 64]) for i in range(0, 256, 64)]
    path = linear_path(_mlp(2, batchnorm=True), a.state_dict(), b.state_dict(), 3, test, bn_batches=bn_batches)
    assert path.batchnorm_recomputed
    recompute_batchnorm(a, bn_batches)  # the endpoint = network A with its statistics recomputed the same way
    assert path.errors[0] == evaluate(a, test)[0]
    with pytest.raises(ValueError, match="bn_batches"):
        linear_path(_mlp(2, batchnorm=True), a.state_dict(), b.state_dict(), 3, test)
    with pytest.raises(ValueError, match="points=1"):
        linear_path(_mlp(2), a.state_dict(), b.state_dict(), 1, test)
