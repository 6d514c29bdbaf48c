"""train_replicates on CUDA: the CUDA-graph step equals the eager step, and both equal the CPU reference."""

from __future__ import annotations

import pytest
import torch
from helpers import killed_at, run_replicates

from lottery.models import create_model, prunable_names
from lottery.pruning import Mask, magnitude_prune
from lottery.training import replicates

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def lenet() -> torch.nn.Module:
    return create_model("lenet_300_100", seed=0)


def problem(k: int):
    g = torch.Generator().manual_seed(0)
    train = (torch.randn(600, 1, 28, 28, generator=g), torch.randint(0, 10, (600,), generator=g))
    val = (torch.randn(200, 1, 28, 28, generator=g), torch.randint(0, 10, (200,), generator=g))
    inits, masks = [], []
    for seed in range(k):
        model = create_model("lenet_300_100", seed=seed)
        names = prunable_names(model)
        inits.append({n: v.clone() for n, v in model.state_dict().items()})
        masks.append(magnitude_prune(dict(model.named_parameters()), Mask.ones(model, names), seed + 1,
                                     {n: 0.3 for n in names}, 0.3))
    return inits, masks, train, val


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_cuda_graph_step_equals_eager_and_cpu(opt: str, tmp_path) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    inits, masks, train, val = problem(4)
    kw = dict(optimizer=opt, lr=1e-3 if opt == "adam" else 0.05, momentum=0.9, weight_decay=1e-4,
              milestones=[37, 80], gamma=0.3, eval_every=25, eval_sets={"val": val})
    # 100 steps over 10-batch epochs: 10 order refreshes and two lr milestones (two re-captures), with a
    # checkpoint-and-resume in the middle of the graphed run.
    eager = run_replicates(lenet, inits, masks, train, 60, [0, 1, 2, 3], 100, device="cuda", **kw)
    paths = [tmp_path / f"{r}.ckpt" for r in range(4)]
    with pytest.raises(RuntimeError, match="simulated failure"), killed_at(replicates, 45):
        run_replicates(lenet, inits, masks, train, 60, [0, 1, 2, 3], 100, device="cuda", cuda_graph=True,
                         checkpoints=paths, checkpoint_every=30, **kw)
    graphed = run_replicates(lenet, inits, masks, train, 60, [0, 1, 2, 3], 100, device="cuda", cuda_graph=True,
                               checkpoints=paths, checkpoint_every=30, **kw)
    cpu = run_replicates(lenet, inits, masks, train, 60, [0, 1, 2, 3], 100, device="cpu", **kw)
    for r in range(4):
        for other in (graphed[r], cpu[r]):
            assert [h["iteration"] for h in other.history] == [h["iteration"] for h in eager[r].history]
            for a, b in zip(other.history, eager[r].history, strict=True):
                assert a["lr"] == pytest.approx(b["lr"])
                assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
            for name, value in eager[r].state.items():
                moved = (value - inits[r][name]).abs().max()
                assert (other.state[name] - value).abs().max() <= 0.05 * moved + 1e-6, (r, name)
        for name, keep in masks[r].items():
            assert torch.count_nonzero(graphed[r].state[name][~keep]) == 0


def test_cuda_graph_with_batchnorm_and_augmentation_in_float64() -> None:
    """ResNet-20's BatchNorm buffers and the per-step crop randomness (copied into fixed buffers before each
    replay) under a CUDA graph: float64, so rounding cannot hide a difference from the CPU result."""
    shape = (3, 32, 32)
    fill = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)

    def resnet() -> torch.nn.Module:
        return create_model("resnet20", seed=0, input_shape=shape, num_classes=10).double()

    g = torch.Generator().manual_seed(3)
    train = (torch.randn(120, *shape, generator=g, dtype=torch.float64), torch.randint(0, 10, (120,), generator=g))
    val = (torch.randn(20, *shape, generator=g, dtype=torch.float64), torch.randint(0, 10, (20,), generator=g))
    inits = [{k: v.clone() for k, v in create_model("resnet20", seed=s, input_shape=shape, num_classes=10)
              .double().state_dict().items()} for s in range(3)]
    kw = dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4, milestones=[9], gamma=0.5, eval_every=6,
              eval_sets={"val": val}, crop_padding=4, crop_fill=fill)
    cpu = run_replicates(resnet, inits, [None] * 3, train, 10, [0, 1, 2], 15, device="cpu", **kw)
    graphed = run_replicates(resnet, inits, [None] * 3, train, 10, [0, 1, 2], 15, device="cuda", cuda_graph=True,
                               **kw)
    for a, b in zip(graphed, cpu, strict=True):
        for name, value in b.state.items():
            assert torch.allclose(a.state[name], value, rtol=1e-8, atol=1e-10), name
        assert [h["val_loss"] for h in a.history] == pytest.approx([h["val_loss"] for h in b.history], rel=1e-8)


def test_bf16_mixed_under_a_cuda_graph_equals_eager_bf16() -> None:
    """The autocast in the captured step recomputes its casts every replay (no autocast cache)."""
    inits, masks, train, val = problem(2)
    kw = dict(eval_every=25, eval_sets={"val": val}, device="cuda", precision="bf16-mixed")
    eager = run_replicates(lenet, inits, masks, train, 60, [0, 1], 60, **kw)
    graphed = run_replicates(lenet, inits, masks, train, 60, [0, 1], 60, cuda_graph=True, **kw)
    fp32 = run_replicates(lenet, inits, masks, train, 60, [0, 1], 60, cuda_graph=True, eval_every=25,
                            eval_sets={"val": val}, device="cuda")
    for r in range(2):
        for a, b, c in zip(graphed[r].history, eager[r].history, fp32[r].history, strict=True):
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-2)
            assert a["val_loss"] == pytest.approx(c["val_loss"], rel=0.05)
        # Weights moved by training (a stale cast cache would freeze the forward pass at the first weights).
        assert not torch.equal(graphed[r].state["layers.0.weight"], fp32[r].state["layers.0.weight"])
