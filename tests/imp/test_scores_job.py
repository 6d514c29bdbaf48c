"""pruning.score in the IMP job: at-init one-shot pruning before training, IMP with a score, bad input, hashes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, TINY, imp_folder, make_config

from lottery.data import DataSpec, LoaderSpec, VisionDataModule
from lottery.data.stream import BatchStream
from lottery.imp.job import run
from lottery.models import create_model
from lottery.pruning import Mask, kept_count
from lottery.pruning.scores import ScoreInputs, compute_scores
from lottery.run import precheck
from lottery.tracking import load_torch
from lottery.tracking.store import config_hash


def _run(tmp_path, *overrides: str):
    cfg = make_config([*TINY, "logger=none", f"store.root={tmp_path / 'runs'}", *overrides])
    rows = run(cfg)
    return cfg, rows, imp_folder(cfg)


def test_at_init_score_prunes_theta0_before_training(tmp_path, mnist_root) -> None:
    cfg, rows, path = _run(tmp_path, "pruning=global", "pruning.score=snip", "imp.oneshot=true", "imp.levels=3",
                           "pruning.score_batches=2")
    assert [r["level"] for r in rows] == [1] and not (path / "level_00").exists()  # no dense training
    init = load_torch(path / "init.pt")
    mask = Mask(load_torch(path / "level_01" / "mask.pt"))
    start = load_torch(path / "level_01" / "start.pt")
    assert sum(mask.kept().values()) == kept_count(sum(mask.sizes().values()), 0.2, 3)
    for name in mask:
        assert torch.equal(start[name], init[name] * mask[name])
    # The mask is SNIP on θ0 with the run's first two training batches, computed here independently.
    data = DataSpec("mnist", cfg.data.root, download=False, val_size=cfg.data.val_size, split_seed=0,
                    train_subset=cfg.data.train_subset, eval_subset=cfg.data.eval_subset)
    dm = VisionDataModule(data, LoaderSpec(batch_size=cfg.training.batch_size))
    dm.setup()
    model = create_model("lenet_300_100", seed=cfg.seed, init=cfg.model.init, input_shape=(1, 28, 28),
                         num_classes=10)
    model.load_state_dict(init)
    scores = compute_scores("snip", model, Mask.ones(model, list(mask)),
                            ScoreInputs(BatchStream(*dm.tensors["train"], cfg.training.batch_size, cfg.seed, end=2), 2))
    flat = torch.cat([scores[n].flatten() for n in mask])
    kept = torch.cat([mask[n].flatten() for n in mask])
    assert float(flat[kept].min()) >= float(flat[~kept].max())
    assert load_torch(path / "level_01" / "final.pt")  # and then it trained


def test_imp_with_a_score_runs_level_by_level_reproducibly(tmp_path, mnist_root) -> None:
    _, rows, path = _run(tmp_path, "pruning.score=taylor1", "imp.levels=2", "pruning.score_batches=2")
    assert [r["level"] for r in rows] == [0, 1, 2]
    masks = [Mask(load_torch(path / f"level_{lv:02d}" / "mask.pt")) for lv in (1, 2)]
    assert all(bool((masks[1][n] <= masks[0][n]).all()) for n in masks[0])  # nested
    again = make_config([*TINY, "logger=none", f"store.root={tmp_path / 'again'}", "pruning.score=taylor1",
                         "imp.levels=1", "pruning.score_batches=2"])
    run(again)
    other = Mask(load_torch(imp_folder(again) / "level_01" / "mask.pt"))
    assert other == masks[0]  # same config, same batches, same mask


def test_new_keys_leave_the_default_hash_and_a_score_moves_it() -> None:
    base = make_config(["+exp=imp_lenet"])
    assert config_hash(base) == config_hash(make_config(["+exp=imp_lenet", "pruning.score=magnitude",
                                                         "pruning.score_batches=10", "pruning.prune_at=auto"]))
    assert config_hash(base) != config_hash(make_config(["+exp=imp_lenet", "pruning.score=snip"]))


@pytest.mark.parametrize("overrides,needle", [
    (["pruning.score=hessian"], "pruning.score='hessian' is not allowed"),
    (["pruning.score=grasp", "pruning.score_batches=0"], "pruning.score_batches=0"),
    (["pruning.score=synflow", "imp.oneshot=true", "imp.rewind=iteration", "imp.rewind_to=100"],
     "imp.rewind=iteration has no meaning when pruning at initialisation"),
])
def test_bad_score_config_is_one_line(overrides: list[str], needle: str) -> None:
    problem = precheck(["+exp=imp_lenet", *overrides])
    assert problem is not None and needle in problem and "\n" not in problem, problem


def test_bad_score_exits_2_before_any_folder(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "lottery.run", "+exp=imp_lenet", "pruning.score=snip",
                             "pruning.score_batches=0"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pruning.score_batches=0" in lines[0], lines
    assert not (tmp_path / "runs").exists()
