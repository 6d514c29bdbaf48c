"""train_replicates: K replicates at once equal K separate runs, and the batched optimizers equal torch.optim."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from lottery.data import BatchStream
from lottery.models import create_model, prunable_names
from lottery.pruning import Mask, magnitude_prune
from lottery.training.replicates import BatchedAdam, BatchedSGD, train_replicates


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lenet() -> torch.nn.Module:
    return create_model("lenet_300_100", seed=0)


def replicate_inputs(seeds: list[int]) -> tuple[list[dict], list[Mask | None]]:
    """Distinct inits per seed; distinct masks (one replicate dense), like ticket and control branches."""
    inits, masks = [], []
    for i, seed in enumerate(seeds):
        model = create_model("lenet_300_100", seed=seed)
        names = prunable_names(model)
        inits.append({k: v.clone() for k, v in model.state_dict().items()})
        masks.append(None if i == 0 else magnitude_prune(dict(model.named_parameters()), Mask.ones(model, names),
                                                         i, {n: 0.4 for n in names}, 0.4))
    return inits, masks


def plain_run(init: dict, mask: Mask | None, train, seed: int, opt: str, iterations: int, val) -> tuple[dict, list]:
    """One replicate the ordinary way: MaskedClassifier's math with torch.optim and a BatchStream."""
    model = lenet()
    model.load_state_dict(init)
    params = dict(model.named_parameters())
    masked = [(params[n], m.float()) for n, m in (mask or {}).items() if not m.all()]
    with torch.no_grad():
        for p, m in masked:
            p.mul_(m)
    lr = 1e-3 if opt == "adam" else 0.05
    optim = (torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-3) if opt == "adam"
             else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3))
    history = []
    for i, (x, y) in enumerate(BatchStream(*train, 20, seed=seed, end=iterations)):
        for group in optim.param_groups:  # milestone at iteration 15, gamma 0.5
            group["lr"] = lr * (0.5 if i >= 15 else 1.0)
        loss = F.cross_entropy(model(x), y)
        optim.zero_grad()
        loss.backward()
        for p, m in masked:
            p.grad.mul_(m)
        optim.step()
        with torch.no_grad():
            for p, m in masked:
                p.mul_(m)
        if (i + 1) % 10 == 0:
            with torch.no_grad():
                logits = model(val[0])
            history.append((F.cross_entropy(logits, val[1]).item(), (logits.argmax(1) == val[1]).float().mean().item()))
    return {k: v.detach() for k, v in model.state_dict().items()}, history


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_replicates_equal_separate_runs(opt: str) -> None:
    g = torch.Generator().manual_seed(0)
    train = (torch.randn(100, 1, 28, 28, generator=g), torch.randint(0, 10, (100,), generator=g))
    val = (torch.randn(30, 1, 28, 28, generator=g), torch.randint(0, 10, (30,), generator=g))
    seeds = [0, 1, 2]
    inits, masks = replicate_inputs(seeds)
    runs = train_replicates(lenet, inits, masks, train, 20, seeds, 30, optimizer=opt,
                            lr=1e-3 if opt == "adam" else 0.05, momentum=0.9, weight_decay=1e-3, milestones=[15],
                            gamma=0.5, eval_every=10, eval_sets={"val": val}, eval_batch_size=16)
    for r, seed in enumerate(seeds):
        want, history = plain_run(inits[r], masks[r], train, seed, opt, 30, val)
        got = runs[r].state
        for name, w in want.items():
            moved = (w - inits[r][name]).abs().max()
            # Batched matmuls sum in another order: equal up to float error, small next to how far training moved.
            assert (got[name] - w).abs().max() <= 1e-3 * moved + 1e-6, (r, name)
            if masks[r] is not None and name in masks[r]:
                assert torch.count_nonzero(got[name][~masks[r][name]]) == 0
        assert [h["iteration"] for h in runs[r].history] == [10, 20, 30]
        assert [h["lr"] for h in runs[r].history] == pytest.approx([runs[r].history[0]["lr"]] + 2 * [
            runs[r].history[0]["lr"] * 0.5])
        for h, (loss, acc) in zip(runs[r].history, history, strict=True):
            assert h["val_loss"] == pytest.approx(loss, rel=1e-4) and h["val_acc"] == pytest.approx(acc)
    # Different seeds, inits and masks: the replicates really are different runs.
    assert not torch.allclose(runs[1].state["layers.0.weight"], runs[2].state["layers.0.weight"])


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_batched_optimizers_match_torch_optim_bitwise(opt: str) -> None:
    g = torch.Generator().manual_seed(1)
    k, shapes = 3, [(5, 4), (5,)]
    stacked = [torch.randn(k, *s, generator=g) for s in shapes]
    singles = [[p[r].clone().requires_grad_() for p in stacked] for r in range(k)]
    optims = [torch.optim.Adam(ps, lr=0.01, weight_decay=0.1) if opt == "adam"
              else torch.optim.SGD(ps, lr=0.01, momentum=0.9, weight_decay=0.1) for ps in singles]
    batched = BatchedAdam(stacked, weight_decay=0.1) if opt == "adam" else BatchedSGD(stacked, 0.9, 0.1)
    for _ in range(4):
        grads = [torch.randn(k, *s, generator=g) for s in shapes]
        batched.step(grads, lr=0.01)
        for r in range(k):
            for p, grad in zip(singles[r], grads, strict=True):
                p.grad = grad[r].clone()
            optims[r].step()
    for r in range(k):
        for p, s in zip(singles[r], stacked, strict=True):
            assert torch.equal(p.detach(), s[r])


def test_bad_inputs_are_refused() -> None:
    inits, masks = replicate_inputs([0, 1])
    data = (torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,)))
    with pytest.raises(ValueError, match="one init and one mask per seed"):
        train_replicates(lenet, inits, masks, data, 20, [0, 1, 2], 2)
    with pytest.raises(ValueError, match="adam or sgd"):
        train_replicates(lenet, inits, masks, data, 20, [0, 1], 2, optimizer="rmsprop")
    with pytest.raises(ValueError, match="without buffers"):
        train_replicates(lambda: torch.nn.BatchNorm1d(3), [{}], [None], data, 20, [0], 2)
