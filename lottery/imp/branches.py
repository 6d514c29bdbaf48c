"""Control branches of a finished IMP level, stored beside it in level_NN/branch_<name>_s<seed>/.

    random_reinit  the level's mask, a fresh init drawn from branch.seed, trained from iteration 0
    random_prune   a random mask with the level's per-layer sparsity, on the weights the level's mask was
                   applied to (θ0, θk or the previous level's trained weights), trained like the level
    retrain        the level's ticket (mask and start weights) trained again with data order branch.seed
"""

from __future__ import annotations

from typing import Any

from lottery.data import DATASETS
from lottery.errors import StoreError
from lottery.imp.report import summary_row
from lottery.models import create_model
from lottery.pruning import Mask
from lottery.tracking import load_torch


def _unmasked_source(exp: Any, level: int) -> dict:
    """The weights the level's mask was applied to, to put a different mask on them."""
    rewind = exp.cfg.imp.rewind
    if rewind == "init":
        return exp.init_state
    if rewind in ("iteration", "epoch"):
        return exp.rewind_state if exp.rewind_state is not None else load_torch(exp.store.file("rewind.pt"))
    return exp.final_state(exp.store.level(level - 1))


def run_branch(exp: Any) -> list[dict[str, Any]]:
    """Train `exp.cfg.branch` beside every requested pruned level; return one summary row per level."""
    branch, cfg = exp.cfg.branch, exp.cfg
    pruned = [1] if cfg.imp.oneshot else list(range(1, cfg.imp.levels + 1))
    levels = list(branch.levels) if branch.levels else pruned
    seed = branch.seed if branch.seed is not None else cfg.seed + 1000
    tag = f"{branch.name}_s{seed}"
    rows = []
    for level in levels:
        level_dir = exp.store.level(level)
        level_metrics = exp.metrics(level_dir)
        if level_metrics is None:
            raise StoreError(f"level {level} of {exp.store.path} has not finished; its branch needs it")
        mask = ticket_mask = Mask(load_torch(level_dir / "mask.pt"))
        start = load_torch(level_dir / "start.pt")
        start_step = level_metrics["start_step"]
        data_seed = cfg.seed
        if branch.name == "random_reinit":
            info = DATASETS[cfg.data.name]
            fresh = create_model(cfg.model.name, seed=seed, init=cfg.model.init,
                                 input_shape=info.input_shape, num_classes=info.num_classes)
            start, start_step = mask.apply_to_state(fresh.state_dict()), 0
        elif branch.name == "random_prune":
            from lottery.pruning.random import random_mask_like

            mask = random_mask_like(mask, seed=seed)
            start = mask.apply_to_state(_unmasked_source(exp, level))
        elif branch.name == "retrain":
            data_seed = seed
        else:
            raise ValueError(f"branch.name={branch.name!r} is unknown")
        exp.datamodule.seed = data_seed
        try:
            metrics = exp.train(level_dir / f"branch_{tag}", level, mask, start, start_step, tag=tag,
                                finetune=cfg.imp.rewind == "finetune" and branch.name != "random_reinit",
                                compare_to=ticket_mask)
        finally:
            exp.datamodule.seed = cfg.seed
        rows.append(summary_row(metrics, branch=tag))
    return rows
