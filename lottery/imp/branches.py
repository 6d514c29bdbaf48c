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
from lottery.imp.instability import run_instability
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


def branch_tag(cfg: Any) -> str:
    """The branch's folder suffix and W&B tag: <name>_s<seed> (seed null: the run's seed + 1000)."""
    seed = cfg.branch.seed if cfg.branch.seed is not None else cfg.seed + 1000
    return f"{cfg.branch.name}_s{seed}"


def branch_levels(cfg: Any) -> list[int]:
    """The pruned levels that get the control branch."""
    pruned = [1] if cfg.imp.oneshot else list(range(1, cfg.imp.levels + 1))
    return list(cfg.branch.levels) if cfg.branch.levels else pruned


def branch_plan(exp: Any, level: int, ticket_mask: Mask, ticket_start: dict, start_step: int) -> Any:
    """The control branch of level `level`, whose ticket is (`ticket_mask`, `ticket_start`, `start_step`)."""
    from lottery.imp.job import LevelPlan

    cfg, branch = exp.cfg, exp.cfg.branch
    tag = branch_tag(cfg)
    seed = int(tag.rsplit("_s", 1)[1])
    mask, start, data_seed = ticket_mask, ticket_start, cfg.seed
    if branch.name == "random_reinit":
        info = DATASETS[cfg.data.name]
        fresh = create_model(cfg.model.name, seed=seed, init=cfg.model.init,
                             input_shape=info.input_shape, num_classes=info.num_classes)
        start, start_step = mask.apply_to_state(fresh.state_dict()), 0
    elif branch.name == "random_prune":
        from lottery.pruning.random import random_mask_like

        mask = random_mask_like(ticket_mask, seed=seed)
        start = mask.apply_to_state(_unmasked_source(exp, level))
    elif branch.name == "retrain":
        data_seed = seed
    else:
        raise ValueError(f"branch.name={branch.name!r} is unknown")
    return LevelPlan(level, exp.store.level(level) / f"branch_{tag}", mask, start, start_step, tag=tag,
                     finetune=cfg.imp.rewind == "finetune" and branch.name != "random_reinit",
                     compare_to=ticket_mask, data_seed=data_seed)


def run_branch(exp: Any) -> list[dict[str, Any]]:
    """Train `exp.cfg.branch` beside every requested pruned level; return one summary row per level."""
    if exp.cfg.branch.name == "instability":
        return run_instability([exp], lambda pairs: [e.train(plan) for e, plan in pairs])[0]
    rows = []
    for level in branch_levels(exp.cfg):
        level_dir = exp.store.level(level)
        level_metrics = exp.metrics(level_dir)
        if level_metrics is None:
            raise StoreError(f"level {level} of {exp.store.path} has not finished; its branch needs it")
        plan = branch_plan(exp, level, Mask(load_torch(level_dir / "mask.pt")), load_torch(level_dir / "start.pt"),
                           level_metrics["start_step"])
        rows.append(summary_row(exp.train(plan), branch=plan.tag))
    return rows
