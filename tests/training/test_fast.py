"""training.engine=fabric: the same level as the Lightning Trainer path, bitwise on CPU, and resumable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import killed_at, make_config

from lottery.data import DataSpec, LoaderSpec, VisionDataModule
from lottery.errors import ConfigError
from lottery.imp.level import LevelSpec, seed_everything, train_level
from lottery.imp.schema import validate_imp
from lottery.models import create_model, prunable_names
from lottery.pruning import Mask, magnitude_prune
from lottery.tracking.atomic import save_torch
from lottery.training import fast

pytestmark = pytest.mark.usefixtures("one_thread")


def datamodule() -> VisionDataModule:
    """MNIST-shaped random tensors in memory (setup() keeps them: no files needed)."""
    g = torch.Generator().manual_seed(0)
    dm = VisionDataModule(DataSpec("mnist", "/nonexistent", download=False), LoaderSpec(batch_size=20, seed=3))

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)

    dm.tensors = {"train": split(120), "val": split(40), "test": split(30)}
    return dm


def spec(engine: str, optimizer: str = "adam", start_step: int = 0, iterations: int = 23) -> LevelSpec:
    # 23 steps with eval every 10: the final evaluation falls off the cadence, as train_level handles it.
    return LevelSpec(start_step=start_step, iterations=iterations, optimizer=optimizer,
                     lr=1e-3 if optimizer == "adam" else 0.05, momentum=0.9 if optimizer == "sgd" else 0.0,
                     weight_decay=1e-3, milestones=(start_step + 8,), gamma=0.5, eval_every=10,
                     checkpoint_every=5, progress_bar=False, engine=engine)


def level(engine: str, tmp: Path, optimizer: str = "adam", start_step: int = 0, **kw):
    seed_everything(0)
    model = create_model("lenet_300_100", seed=0)
    names = prunable_names(model)
    mask = magnitude_prune(dict(model.named_parameters()), Mask.ones(model, names), 2, {n: 0.3 for n in names}, 0.3)
    captured: list[dict[str, torch.Tensor]] = []
    run = train_level if engine == "trainer" else _fabric
    result = run(model, mask, datamodule(), spec(engine, optimizer, start_step), tmp / f"{engine}.ckpt",
                 rewind=(start_step + 7, captured.append), **kw)
    return result, mask, captured


def _fabric(*args, **kw):
    from lottery.training.fast import train_level_fabric

    return train_level_fabric(*args, **kw)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("optimizer,start_step", [("adam", 0), ("sgd", 4)])
def test_fabric_equals_trainer_bitwise(tmp_path: Path, optimizer: str, start_step: int) -> None:
    ref, mask, ref_rewind = level("trainer", tmp_path, optimizer, start_step)
    fast, _, fast_rewind = level("fabric", tmp_path, optimizer, start_step)
    # Same ops in the same order on one CPU thread, deterministic kernels: identical to the bit.
    assert fast.history == ref.history
    cadence = [it for it in (start_step + 10, start_step + 20) if it < 23]
    assert [h["iteration"] for h in fast.history] == [*cadence, 23]
    assert_same_state(fast.model.state_dict(), ref.model.state_dict())
    assert len(fast_rewind) == len(ref_rewind) == 1
    assert_same_state(fast_rewind[0], ref_rewind[0])
    for name, keep in mask.items():  # pruned weights stayed exactly zero, kept ones trained
        weight = fast.model.get_parameter(name).detach()
        assert torch.count_nonzero(weight[~keep]) == 0
    assert fast.history[-1]["lr"] == pytest.approx(spec("fabric", optimizer).lr * 0.5)


def test_fabric_resumes_after_a_kill(tmp_path: Path) -> None:
    ref, _, _ = level("fabric", tmp_path / "ref")
    with pytest.raises(RuntimeError, match="simulated failure"), killed_at(fast, 13):
        level("fabric", tmp_path)  # checkpoints at steps 5 and 10; killed at 13
    ckpt = torch.load(tmp_path / "fabric.ckpt", weights_only=True)
    assert ckpt["step"] == 10 and [h["iteration"] for h in ckpt["history"]] == [10]
    resumed, _, captured = level("fabric", tmp_path)
    assert captured == []  # the rewind point (iteration 7) lies before the checkpoint: it was saved already
    assert resumed.history == ref.history
    assert_same_state(resumed.model.state_dict(), ref.model.state_dict())


def test_fabric_refuses_a_foreign_checkpoint(tmp_path: Path) -> None:
    save_torch({"state_dict": {}}, tmp_path / "fabric.ckpt")
    with pytest.raises(ValueError, match="not written by training.engine=fabric"):
        level("fabric", tmp_path)


def test_engine_config_is_validated() -> None:
    assert make_config(["+exp=imp_lenet"]).training.engine == "auto"
    validate_imp(make_config(["+exp=imp_lenet", "training.engine=fabric"]))
    with pytest.raises(ConfigError, match="training.engine='turbo'.*auto, trainer, fabric"):
        validate_imp(make_config(["+exp=imp_lenet", "training.engine=turbo"]))
    with pytest.raises(ConfigError, match="training.engine=fabric trains on one device"):
        validate_imp(make_config(["+exp=imp_lenet", "training.engine=fabric", "trainer=ddp_cpu"]))
