"""training.engine=batched: the IMP runs of several seeds in lockstep, every seed's level (and its control
branch) trained at once as vmapped replicates (`lottery.training.replicates.train_replicates`).

    python -m lottery.run +exp=imp_lenet +branch=random_reinit training.engine=batched seeds=[0,1,2,3,4] trainer=gpu

Each seed keeps its own run folder with the files a single run with `seed=s training.engine=batched` writes
(that is what it is: a run's hash does not depend on the other seeds). At level L every seed prunes its level
L-1 and rewinds; then all tickets of level L and their control branches train together, K = seeds × (1 +
branch) replicates. Members whose schedules differ (tickets rewound to iteration k beside branches trained from
iteration 0) train as separate groups. A killed level resumes from each member's `replicate.ckpt`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import astuple, dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lottery.data.vision import CROP_PADDING
from lottery.errors import ConfigError
from lottery.imp.experiment import Experiment, LevelPlan, close_experiment, open_experiment, prepare
from lottery.imp.instability import run_instability
from lottery.imp.plan import LevelWork, level_rounds, level_work
from lottery.models import create_model, prunable_names
from lottery.pruning import Mask
from lottery.tracking import RunStore
from lottery.training.replicates import CropFlip, ReplicateData, Replicates, checkpoint_step, train_replicates
from lottery.training.spec import LevelSpec

log = logging.getLogger(__name__)
CHECKPOINT = "replicate.ckpt"


@dataclass
class SeedRun:
    """One seed's run while the seeds advance level by level together."""

    exp: Experiment
    rates: dict[str, float | None]
    output_name: str
    mask: Mask
    level_rows: list[dict[str, Any]] = field(default_factory=list)
    branch_rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Member:
    """One replicate of a group: a level or branch of one seed's run, ready to train."""

    run: SeedRun
    plan: LevelPlan
    mask: Mask
    start: dict[str, Any]
    spec: LevelSpec

    @property
    def checkpoint(self) -> Any:
        return self.plan.folder / CHECKPOINT


def training_device(accelerator: str) -> torch.device:
    """The device `trainer.accelerator` names (auto: CUDA when there is one)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator}: no CUDA device is visible")
        return torch.device("cuda")
    if accelerator in ("cpu", "auto"):
        return torch.device("cpu")
    if accelerator == "mps":
        return torch.device("mps")
    raise ConfigError(f"trainer.accelerator={accelerator!r} is not supported by training.engine=batched; "
                      "choose cpu, gpu or auto")


def run_batched(configs: Sequence[DictConfig]) -> list[dict[str, Any]]:
    """Run (or resume) the IMP runs of `configs` (the same experiment, one config per seed) in lockstep.

    Returns every run's summary rows, each with its "seed" when there are several.
    """
    first = configs[0]
    # The device before anything is prepared: an accelerator this engine cannot use fails before data loads.
    device = training_device(first.trainer.accelerator)
    if first.trainer.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, as the Trainer sets
    prepared, tensors = [], None
    for cfg in configs:  # every run's input is checked before the first folder is created
        config, steps, datamodule, model, rates, output_name = prepare(cfg, tensors)
        tensors = datamodule.tensors  # the seeds share the data; only its order differs
        prepared.append((cfg, config, steps, datamodule, model, rates, output_name))
    with ExitStack() as stack:
        runs = []
        for cfg, config, steps, datamodule, model, rates, output_name in prepared:
            # The DictConfig stops here: the run hash and W&B's record of it.
            store = stack.enter_context(RunStore(cfg.store.root, cfg, prefix="imp"))
            exp = open_experiment(config, steps, datamodule, model, store, OmegaConf.to_container(cfg, resolve=True))
            runs.append(SeedRun(exp, rates, output_name, Mask.ones(model, prunable_names(model))))
        shared = runs[0].exp.config  # the runs differ only in their seed
        for level in level_rounds(shared.imp, shared.pruning):
            works = [(run, _level_work(run, level)) for run in runs]
            members = [_member(run, plan) for run, work in works for plan in work.plans]
            if members:
                _train_members(members, device)
            for run, work in works:
                ticket_rows, branch_rows = work.rows(run.exp)
                run.level_rows += ticket_rows
                run.branch_rows += branch_rows
        if shared.branch is not None and shared.branch.name == "instability":
            # The analysis of finished levels: every copy of one k, across seeds and levels, as one group.
            for run, branch_rows in zip(runs, run_instability([r.exp for r in runs], _trainer(runs, device)),
                                        strict=True):
                run.branch_rows = branch_rows
        rows = []
        for run in runs:
            run_rows = run.level_rows + run.branch_rows
            close_experiment(run.exp, run_rows)
            rows += [{"seed": run.exp.config.seed, **row} for row in run_rows] if len(runs) > 1 else run_rows
    return rows


def _level_work(run: SeedRun, level: int) -> LevelWork:
    """One seed's work at `level` (`lottery.imp.plan.level_work`); its mask becomes the seed's current mask."""
    work = level_work(run.exp, level, run.mask, run.rates, run.output_name)
    run.mask = work.mask
    return work


def _trainer(runs: list[SeedRun], device: torch.device) -> Any:
    """Train (experiment, plan) pairs of the instability analysis as replicates, grouped like levels."""
    by_exp = {id(run.exp): run for run in runs}

    def train(pairs: list[tuple[Experiment, LevelPlan]]) -> None:
        if pairs:
            _train_members([_member(by_exp[id(exp)], plan) for exp, plan in pairs], device)

    return train


def _member(run: SeedRun, plan: LevelPlan) -> Member:
    mask, start, spec = run.exp.begin(plan)
    return Member(run, plan, mask, start, spec)


def _train_members(members: list[Member], device: torch.device) -> None:
    """Train the members in groups of one schedule (and one resume step), tickets' groups first."""
    groups: dict[tuple, list[Member]] = {}
    for member in members:
        key = (astuple(member.spec), member.plan.rewind_at, checkpoint_step(member.checkpoint))
        groups.setdefault(key, []).append(member)
    for group in sorted(groups.values(), key=lambda g: all(m.plan.tag for m in g)):
        _train_group(group, device)


def _train_group(group: list[Member], device: torch.device) -> None:
    exp0, spec, plan0 = group[0].run.exp, group[0].spec, group[0].plan
    config, datamodule = exp0.config, exp0.datamodule
    info = datamodule.info
    tickets = sum(not m.plan.tag for m in group)
    label = f"level {plan0.level}/{config.imp.levels} ×{len(group)}"
    log.info("%s: %d ticket(s) and %d branch(es) at %s, iterations %d..%d", label, tickets, len(group) - tickets,
             ", ".join(f"{100 * m.mask.total_density():.2f}%" for m in group[:3]) + (" ..." if len(group) > 3 else ""),
             spec.start_step, spec.iterations)
    rewind = None
    if plan0.rewind_at is not None:
        rewind = (plan0.rewind_at, lambda r, state: group[r].run.exp.save_rewind(state))
    data_seeds = [m.plan.data_seed if m.plan.data_seed is not None else m.run.exp.config.seed for m in group]

    def model_fn() -> torch.nn.Module:
        return create_model(config.model.name, seed=0, init=config.model.init, input_shape=info.input_shape,
                            num_classes=info.num_classes)

    replicates = Replicates(model_fn, [m.start for m in group], [m.mask for m in group], data_seeds)
    tensors = datamodule.tensors
    data = ReplicateData(tensors["train"], {"val": tensors["val"], "test": tensors["test"]},
                         datamodule.eval_batch_size)
    augment = CropFlip(CROP_PADDING if datamodule.augment else 0, datamodule.crop_fill())
    began = time.perf_counter()
    results = train_replicates(spec, replicates, data, device=device, augment=augment,
                               checkpoints=[m.checkpoint for m in group], rewind=rewind,
                               progress=label if spec.progress_bar else None)
    seconds = time.perf_counter() - began
    # Tickets first: a branch's W&B run references its level's mask and ticket artifacts.
    for member, result in sorted(zip(group, results, strict=True), key=lambda pair: bool(pair[0].plan.tag)):
        run, plan = member.run, member.plan
        logger = run.exp.tracker.level_logger(plan.level, plan.tag)
        log_history(logger, result.history, plan.start_step)
        run.exp.finish(plan, member.mask, member.spec, result.history, result.state, seconds, logger,
                       extra={"engine": "batched", "replicates": len(group)})
        member.checkpoint.unlink(missing_ok=True)


def log_history(logger: Any, history: list[dict[str, float]], start_step: int) -> None:
    """Send a level's evaluation records to its logger, as the other engines do while they train."""
    if not logger:
        return
    for row in history:
        logger.log_metrics({k.replace("_", "/", 1) if k != "iteration" else k: float(v) for k, v in row.items()},
                           step=int(row["iteration"]) - start_step)
    logger.save()
