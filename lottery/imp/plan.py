"""The work of an IMP level, for every engine: its ticket and control branch, without what is finished.

`level_work` is the one planner: the Trainer and Fabric engines (`lottery.imp.job`) train its plans one after
the other, the batched engine (`lottery.imp.batched`) trains the plans of every seed together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lottery.data import DATASETS
from lottery.errors import StoreError
from lottery.imp.branches import BRANCHES, Ticket, branch_levels, branch_seed, branch_tag
from lottery.imp.experiment import Experiment, LevelPlan
from lottery.imp.instability_schema import ANALYSES
from lottery.imp.report import summary_row
from lottery.imp.rewind import REWIND_MODES, level_start, unmasked_start
from lottery.imp.schema import IMPConfig, PruningConfig
from lottery.imp.scoring import at_init, score_mask
from lottery.models import create_model
from lottery.pruning import Mask
from lottery.tracking import load_json, load_torch

log = logging.getLogger(__name__)


def level_rounds(imp: IMPConfig, pruning: PruningConfig) -> list[int]:
    """The main levels of a run: 0..levels, or 0 and 1 for one-shot pruning, or only 1 when one-shot pruning
    happens at initialisation (θ0 is pruned to the target before any training, so there is no level 0)."""
    if imp.oneshot:
        return [1] if at_init(pruning, imp.oneshot) else [0, 1]
    return list(range(imp.levels + 1))


def finished_mask(exp: Experiment, level: int) -> Mask | None:
    """A finished level's mask (from its folder), or None when the level has not finished."""
    if not exp.store.level_done(level):
        return None
    return Mask(load_torch(exp.store.level(level) / "mask.pt"))


def rewind_state(exp: Experiment) -> dict[str, Any] | None:
    """θk, the rewind point (from memory, or read once from rewind.pt), when the rewind mode uses it."""
    if REWIND_MODES[exp.config.imp.rewind].source != "rewind":
        return None
    if exp.rewind_state is None:
        if not exp.store.file("rewind.pt").exists():
            raise StoreError(f"{exp.store.file('rewind.pt')} is missing; delete {exp.store.level(0)} to redo level 0")
        exp.rewind_state = load_torch(exp.store.file("rewind.pt"))
    return exp.rewind_state


def plan_level(exp: Experiment, level: int, previous: Mask, rates: dict[str, float | None],
               output_name: str) -> LevelPlan:
    """Level `level`'s plan, given the previous level's mask: prune its trained weights, then rewind."""
    config, store, steps = exp.config, exp.store, exp.steps
    imp = config.imp
    if level == 0:
        return LevelPlan(0, store.level(0), previous, exp.init_state, 0,
                         rewind_at=steps.rewind if steps.rewind > 0 else None)
    # At init the mask comes from θ0 (validation allows only imp.rewind=init then); else from level − 1's weights.
    trained = exp.init_state if at_init(config.pruning, imp.oneshot) else exp.final_state(store.level(level - 1))
    target_level = imp.levels if imp.oneshot else level
    mask = score_mask(config.pruning, exp.model, trained, previous, 0 if imp.oneshot else level - 1, target_level,
                      rates, output_name, exp.datamodule, batch_size=config.training.batch_size, seed=config.seed)
    start, start_step = level_start(imp.rewind, mask, exp.init_state, rewind_state(exp), trained, steps.rewind)
    return LevelPlan(level, store.level(level), mask, start, start_step, finetune=REWIND_MODES[imp.rewind].finetune,
                     compare_to=previous)


def ticket(exp: Experiment, level: int, mask: Mask, start: dict[str, Any], start_step: int) -> Ticket:
    """Level `level`'s ticket, as its control branch sees it."""
    config = exp.config
    rewind = config.imp.rewind

    def unmasked() -> dict[str, Any]:
        previous = exp.final_state(exp.store.level(level - 1)) if REWIND_MODES[rewind].source == "previous" else None
        return dict(unmasked_start(rewind, exp.init_state, rewind_state(exp), previous))

    def fresh_model(seed: int) -> Any:
        info = DATASETS[config.data.name]
        return create_model(config.model.name, seed=seed, init=config.model.init, input_shape=info.input_shape,
                            num_classes=info.num_classes)

    return Ticket(level, mask, start, start_step, unmasked, fresh_model)


def branch_plan(exp: Experiment, of: Ticket) -> LevelPlan:
    """The control branch (`exp.config.branch`) of the ticket `of`."""
    config, branch = exp.config, exp.config.branch
    seed = branch_seed(branch.seed, config.seed)
    tag = branch_tag(branch.name, seed)
    begin = BRANCHES[branch.name](of, seed)
    return LevelPlan(of.level, exp.store.level(of.level) / f"branch_{tag}", begin.mask, begin.start, begin.start_step,
                     tag=tag, finetune=REWIND_MODES[config.imp.rewind].finetune and not begin.restarts,
                     compare_to=of.mask, data_seed=begin.data_seed if begin.data_seed is not None else config.seed)


@dataclass
class LevelWork:
    """One level of one run: its mask, what still trains, and the folders whose metrics make its summary rows."""

    level: int
    mask: Mask  # the level's mask: the next level prunes under it
    plans: list[LevelPlan] = field(default_factory=list)  # still to train: the ticket first, then its branch
    ticket_folder: Path | None = None
    branch: tuple[Path, str] | None = None  # (folder, tag) of the level's control branch, if it has one

    def rows(self, exp: Experiment) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the ticket's summary rows, the branch's) once the plans are trained."""
        ticket_rows = [summary_row(exp.metrics(self.ticket_folder))] if self.ticket_folder else []
        branch_rows = [summary_row(exp.metrics(self.branch[0]), branch=self.branch[1])] if self.branch else []
        return ticket_rows, branch_rows


def level_work(exp: Experiment, level: int, previous: Mask, rates: dict[str, float | None],
               output_name: str) -> LevelWork:
    """Level `level`'s work, given the previous level's mask: plan the ticket unless it is finished, and the
    control branch (if configured for this level) unless it is finished."""
    config, store = exp.config, exp.store
    branch, imp = config.branch, config.imp
    work = LevelWork(level, previous, ticket_folder=store.level(level))
    if (done := finished_mask(exp, level)) is not None:
        metrics = load_json(store.level(level) / "metrics.json")
        log.info("seed %d level %d already done (%.2f%% remaining); skipping", config.seed, level,
                 metrics["percent_remaining"])
        work.mask = done
    else:
        plan = plan_level(exp, level, previous, rates, output_name)
        work.mask = plan.mask
        work.plans.append(plan)
    if branch is None or branch.name in ANALYSES or level not in branch_levels(branch.levels, imp.levels, imp.oneshot):
        return work
    if done is not None:  # the ticket's start weights are needed only here, and only read when they are
        of = ticket(exp, level, done, load_torch(store.level(level) / "start.pt"), metrics["start_step"])
    else:
        of = ticket(exp, level, plan.mask, plan.start, plan.start_step)
    plan = branch_plan(exp, of)
    work.branch = (plan.folder, plan.tag)
    if exp.metrics(plan.folder) is None:
        work.plans.append(plan)
    return work
