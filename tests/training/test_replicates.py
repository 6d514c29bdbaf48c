"""train_replicates: K replicates at once equal K separate runs; torch.optim on stacked tensors updates every
slice exactly as its own optimizer; a killed group resumes bitwise; the rewind point is captured per replicate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import killed_at, run_replicates

from lottery.data import BatchStream
from lottery.models import create_model, prunable_names
from lottery.pruning import Mask, magnitude_prune
from lottery.training import replicates
from lottery.training.optim import make_optimizer
from lottery.training.replicates import checkpoint_step

pytestmark = pytest.mark.usefixtures("one_thread")


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


def plain_run(init: dict, mask: Mask | None, train, seed: int, opt: str, iterations: int, val, model_fn=lenet, *,
              lr: float | None = None, weight_decay: float = 1e-3, milestone: int | None = 15,
              batch_size: int = 20, eval_every: int = 10, augment=None) -> tuple[dict, list]:
    """One replicate the ordinary way: MaskedClassifier's math with torch.optim and a BatchStream.

    SGD uses momentum 0.9; at `milestone` the lr halves. Returns the final state and (val loss, val acc) at
    every `eval_every` steps (evaluated in eval mode, as the Trainer does)."""
    model = model_fn()
    model.load_state_dict(init)
    params = dict(model.named_parameters())
    masked = [(params[n], m.to(params[n].dtype)) for n, m in (mask or {}).items() if not m.all()]
    with torch.no_grad():
        for p, m in masked:
            p.mul_(m)
    lr = lr if lr is not None else (1e-3 if opt == "adam" else 0.05)
    optim = (torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay) if opt == "adam"
             else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay))
    history = []
    stream = BatchStream(*train, batch_size, seed=seed, end=iterations, augment=augment)
    for i, (x, y) in enumerate(stream):
        for group in optim.param_groups:
            group["lr"] = lr * (0.5 if milestone is not None and i >= milestone else 1.0)
        model.train()
        loss = F.cross_entropy(model(x), y)
        optim.zero_grad()
        loss.backward()
        for p, m in masked:
            p.grad.mul_(m)
        optim.step()
        with torch.no_grad():
            for p, m in masked:
                p.mul_(m)
        if (i + 1) % eval_every == 0:
            model.eval()
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
    runs = run_replicates(lenet, inits, masks, train, 20, seeds, 30, optimizer=opt,
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
def test_stacked_optimizer_matches_one_optimizer_per_slice_bitwise(opt: str) -> None:
    g = torch.Generator().manual_seed(1)
    k, shapes = 3, [(5, 4), (5,)]
    stacked = [torch.randn(k, *s, generator=g).requires_grad_() for s in shapes]
    singles = [[p[r].detach().clone().requires_grad_() for p in stacked] for r in range(k)]
    optims = [torch.optim.Adam(ps, lr=0.01, weight_decay=0.1) if opt == "adam"
              else torch.optim.SGD(ps, lr=0.01, momentum=0.9, weight_decay=0.1) for ps in singles]
    batched = make_optimizer(stacked, opt, lr=0.01, momentum=0.9, weight_decay=0.1, foreach=True)
    for _ in range(4):
        grads = [torch.randn(k, *s, generator=g) for s in shapes]
        for p, grad in zip(stacked, grads, strict=True):
            p.grad = grad
        batched.step()
        for r in range(k):
            for p, grad in zip(singles[r], grads, strict=True):
                p.grad = grad[r].clone()
            optims[r].step()
    for r in range(k):
        for p, s in zip(singles[r], stacked, strict=True):
            assert torch.equal(p.detach(), s[r].detach())


def small_problem(seeds: list[int]):
    g = torch.Generator().manual_seed(5)
    train = (torch.randn(100, 1, 28, 28, generator=g), torch.randint(0, 10, (100,), generator=g))
    val = (torch.randn(30, 1, 28, 28, generator=g), torch.randint(0, 10, (30,), generator=g))
    inits, masks = replicate_inputs(seeds)
    return inits, masks, train, val


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_fused_optimizer_and_compiled_loss_equal_the_plain_step(opt: str) -> None:
    """The CUDA-graph step's fast parts (torch's fused optimizer, the compiled forward and loss), run here on
    the CPU: the same training to rounding, masks kept exactly."""
    seeds = [0, 1]
    inits, masks, train, val = small_problem(seeds)
    kw = dict(optimizer=opt, lr=1e-3 if opt == "adam" else 0.05, momentum=0.9, weight_decay=1e-3,
              milestones=[12], gamma=0.5, eval_every=5, eval_sets={"val": val})
    plain = run_replicates(lenet, inits, masks, train, 20, seeds, 23, **kw)
    fast = run_replicates(lenet, inits, masks, train, 20, seeds, 23, fused_optimizer=True, compile_loss=True,
                            **kw)
    for r, (a, b) in enumerate(zip(plain, fast, strict=True)):
        assert [h["iteration"] for h in a.history] == [h["iteration"] for h in b.history]
        for x, y in zip(a.history, b.history, strict=True):
            assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-4)
            assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)
        for name, value in a.state.items():
            moved = (value - inits[r][name]).abs().max()
            assert (b.state[name] - value).abs().max() <= 1e-3 * moved + 1e-7, name
        if masks[r] is not None:
            for name, keep in masks[r].items():
                assert torch.count_nonzero(b.state[name][~keep]) == 0


def test_compiled_loss_is_kept_across_calls_and_falls_back_to_eager(monkeypatch, caplog) -> None:
    """Levels are separate calls: the compiled loss is built once per structure (torch.compile would otherwise
    recompile each time and turn eager after a few); a step torch.compile cannot handle trains eagerly."""
    seeds = [0, 1]
    inits, masks, train, val = small_problem(seeds)
    kw = dict(eval_every=5, eval_sets={"val": val}, compile_loss=True)
    replicates._compiled_losses.clear()
    first = run_replicates(lenet, inits, masks, train, 20, seeds, 6, **kw)
    entry = next(iter(replicates._compiled_losses.values()))
    again = run_replicates(lenet, inits, masks, train, 20, seeds, 6, **kw)
    assert list(replicates._compiled_losses.values()) == [entry]
    assert first[1].history == again[1].history

    def broken(fn, **_):
        def fails(*args):
            raise RuntimeError("backend exploded")
        return fails

    replicates._compiled_losses.clear()
    monkeypatch.setattr(replicates.torch, "compile", broken)
    with caplog.at_level("WARNING", logger="lottery.training.replicates"):
        fallback = run_replicates(lenet, inits, masks, train, 20, seeds, 6, **kw)
    assert "torch.compile failed on the training step (RuntimeError: backend exploded)" in caplog.text
    plain = run_replicates(lenet, inits, masks, train, 20, seeds, 6, eval_every=5, eval_sets={"val": val})
    assert fallback[1].history == plain[1].history
    replicates._compiled_losses.clear()


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_killed_group_resumes_bitwise(opt: str, tmp_path) -> None:
    seeds = [0, 1]
    inits, masks, train, val = small_problem(seeds)
    kw = dict(optimizer=opt, lr=1e-3 if opt == "adam" else 0.05, momentum=0.9, weight_decay=1e-3,
              milestones=[12], gamma=0.5, eval_every=5, eval_sets={"val": val})
    whole = run_replicates(lenet, inits, masks, train, 20, seeds, 23, **kw)
    paths = [tmp_path / f"r{r}.ckpt" for r in range(2)]
    with pytest.raises(RuntimeError, match="simulated failure"), killed_at(replicates, 14):
        run_replicates(lenet, inits, masks, train, 20, seeds, 23, checkpoints=paths, checkpoint_every=4, **kw)
    assert [checkpoint_step(p) for p in paths] == [12, 12]  # the last checkpoint before the kill
    resumed = run_replicates(lenet, inits, masks, train, 20, seeds, 23, checkpoints=paths, checkpoint_every=4,
                               **kw)
    for a, b in zip(whole, resumed, strict=True):
        assert a.history == b.history
        for name in a.state:
            assert torch.equal(a.state[name], b.state[name]), name
    # Checkpoints of different steps cannot be stacked into one group.
    save_other = [tmp_path / "other.ckpt"]
    with pytest.raises(RuntimeError), killed_at(replicates, 9):
        run_replicates(lenet, inits[1:], masks[1:], train, 20, seeds[1:], 23, checkpoints=save_other,
                         checkpoint_every=8, **kw)
    with pytest.raises(ValueError, match="different steps"):
        run_replicates(lenet, inits, masks, train, 20, seeds, 23, checkpoints=[paths[0], save_other[0]], **kw)


def test_rewind_state_is_captured_per_replicate() -> None:
    seeds = [0, 1]
    inits, masks, train, val = small_problem(seeds)
    captured: dict[int, dict] = {}
    full = run_replicates(lenet, inits, masks, train, 20, seeds, 7, rewind=(4, captured.__setitem__))
    short = run_replicates(lenet, inits, masks, train, 20, seeds, 4)
    assert sorted(captured) == [0, 1]
    for r in range(2):
        for name, value in short[r].state.items():
            assert torch.equal(captured[r][name], value)
        assert not torch.equal(captured[r]["layers.0.weight"], full[r].state["layers.0.weight"])


def test_bad_inputs_are_refused() -> None:
    inits, masks = replicate_inputs([0, 1])
    data = (torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,)))
    with pytest.raises(ValueError, match="one init and one mask per seed"):
        run_replicates(lenet, inits, masks, data, 20, [0, 1, 2], 2)
    with pytest.raises(ValueError, match="adam or sgd"):
        run_replicates(lenet, inits, masks, data, 20, [0, 1], 2, optimizer="rmsprop")
    with pytest.raises(ValueError, match="init 0 lacks running_mean, running_var, num_batches_tracked"):
        run_replicates(lambda: torch.nn.BatchNorm1d(3), [{"weight": torch.ones(3), "bias": torch.zeros(3)}],
                         [None], data, 20, [0], 2)


def test_conv_replicates_equal_separate_runs() -> None:
    """Conv-N (vmapped conv2d) replicates follow their own runs as LeNet's do."""
    shape = (3, 32, 32)

    def conv2() -> torch.nn.Module:
        return create_model("conv2", seed=0, input_shape=shape, num_classes=10)

    g = torch.Generator().manual_seed(0)
    train = (torch.randn(80, *shape, generator=g), torch.randint(0, 10, (80,), generator=g))
    inits, masks = [], []
    for seed in range(2):
        model = create_model("conv2", seed=seed, input_shape=shape, num_classes=10)
        names = prunable_names(model)
        inits.append({k: v.clone() for k, v in model.state_dict().items()})
        masks.append(magnitude_prune(dict(model.named_parameters()), Mask.ones(model, names), 1,
                                     {n: 0.3 for n in names}, 0.3))
    runs = run_replicates(conv2, inits, masks, train, 20, [0, 1], 6, lr=1e-3, weight_decay=1e-3,
                            milestones=[15], gamma=0.5)
    for r in range(2):
        want, _ = plain_run(inits[r], masks[r], train, r, "adam", 6, None, model_fn=conv2)
        for name, value in want.items():
            moved = (value - inits[r][name] * (masks[r][name] if name in masks[r] else 1)).abs().max()
            assert (runs[r].state[name] - value).abs().max() <= 0.05 * moved + 1e-6, (r, name)


@pytest.mark.parametrize("fast", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["plain", "fast"])
def test_batchnorm_and_augmentation_replicates_equal_separate_runs_in_float64(fast: bool) -> None:
    """ResNet-20 (BatchNorm statistics as stacked buffers) with random crops and flips; `fast`: with the
    CUDA-graph step's fused optimizer and compiled loss (BatchNorm's buffer updates inside the compiled code).

    In float32 this training is ill-conditioned (BatchNorm over 10 images, constant padded borders at ReLU
    boundaries): a single float32 run and a float64 one part by ~1e-3 within three steps, so float32 cannot
    tell a bug from rounding. In float64 the replicates must equal their separate runs to ~1e-12.
    """
    from lottery.data.augment import crop_flip

    shape, fill = (3, 32, 32), torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)

    def resnet() -> torch.nn.Module:
        return create_model("resnet20", seed=0, input_shape=shape, num_classes=10).double()

    g = torch.Generator().manual_seed(2)
    train = (torch.randn(60, *shape, generator=g, dtype=torch.float64), torch.randint(0, 10, (60,), generator=g))
    val = (torch.randn(20, *shape, generator=g, dtype=torch.float64), torch.randint(0, 10, (20,), generator=g))
    inits, masks = [], []
    for seed in range(2):
        model = create_model("resnet20", seed=seed, input_shape=shape, num_classes=10).double()
        names = [n for n in prunable_names(model) if n != "head.weight"]
        inits.append({k: v.clone() for k, v in model.state_dict().items()})
        masks.append(magnitude_prune(dict(model.named_parameters()), Mask.ones(model, names), 1,
                                     {n: 0.3 for n in names}, 0.3))
    runs = run_replicates(resnet, inits, masks, train, 10, [0, 1], 4, optimizer="sgd", lr=0.05, momentum=0.9,
                            weight_decay=1e-4, eval_every=2, eval_sets={"val": val}, crop_padding=4, crop_fill=fill,
                            fused_optimizer=fast, compile_loss=fast)
    for r in range(2):
        want, history = plain_run(inits[r], masks[r], train, r, "sgd", 4, val, resnet, lr=0.05, weight_decay=1e-4,
                                  milestone=None, batch_size=10, eval_every=2,
                                  augment=lambda x, gen: crop_flip(x, gen, 4, fill))
        assert want.keys() == runs[r].state.keys()
        for name, value in want.items():
            assert torch.allclose(runs[r].state[name], value, rtol=1e-9, atol=1e-12), (r, name)
        assert int(runs[r].state["bn.num_batches_tracked"]) == 4
        assert [h["val_loss"] for h in runs[r].history] == pytest.approx([loss for loss, _ in history], rel=1e-9)
