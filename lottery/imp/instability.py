"""+branch=instability: the instability analysis of Frankle, Dziugaite, Roy & Carbin (ICML 2020) beside
finished IMP levels.

    python -m lottery.run +exp=imp_lenet +branch=instability branch.rewind_to=500 branch.levels=[0,7,15]
    python -m lottery.run +exp=imp_lenet +branch=instability 'branch.rewind_to=[0,100,250,500,1000,2000]'

For level L and rewind point k, in level_LL/branch_instability_k<k>_s<a>-<b>/:
    prefix/        the level's ticket (its mask.pt, start.pt) trained with the run's data order up to iteration
                   k: θk, the state both copies start from (absent when k is the level's first iteration)
    copy_s<a>/     θk ⊙ mask trained from k to the end with data order a   (mask.pt, start.pt, final.pt, ...)
    copy_s<b>/     the same with data order b
    instability.json  test error and loss at branch.points points on the line between the two final networks
                   (mask applied at every point, BatchNorm statistics recomputed at every point), the barrier
                   max error − mean of the endpoints' errors, and the endpoints' errors; written last: done
Each part is skipped when done, and a killed training resumes, like every level. The optimizer state starts
fresh at k, as at every rewind of this project. The copies train through the run's engine (the batched engine
trains all copies of one k, over every seed and level, at once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lottery.analysis import linear_path
from lottery.data.stream import EvalBatches
from lottery.errors import StoreError
from lottery.imp.experiment import Experiment, LevelPlan
from lottery.imp.instability_schema import copy_seeds, instability_levels, instability_tag, rewind_points
from lottery.imp.report import summary_row
from lottery.models import create_model
from lottery.pruning import Mask
from lottery.tracking import load_json, load_torch

log = logging.getLogger(__name__)
RESULT = "instability.json"
# Trains (experiment, plan) pairs that are not done yet; each engine supplies its own.
Train = Callable[[list[tuple[Experiment, LevelPlan]]], Any]


@dataclass
class Analysis:
    """One (run, level, k) of the instability branch."""

    exp: Experiment
    level: int
    k: int
    seeds: tuple[int, int]
    mask: Mask
    start: dict[str, Any]
    start_step: int

    @property
    def tag(self) -> str:
        return instability_tag(self.k, self.seeds)

    @property
    def folder(self) -> Path:
        return self.exp.store.level(self.level) / f"branch_{self.tag}"

    @property
    def finetune(self) -> bool:
        return self.exp.config.imp.rewind == "finetune" and self.level > 0

    def prefix(self) -> LevelPlan | None:
        """θk's training: the level's ticket with the run's data order up to k (None: θk is the ticket)."""
        if self.k == self.start_step:
            return None
        return LevelPlan(self.level, self.folder / "prefix", self.mask, self.start, self.start_step,
                         tag=f"{self.tag}_prefix", finetune=self.finetune, data_seed=self.exp.config.seed, end=self.k)

    def theta_k(self) -> dict[str, Any]:
        plan = self.prefix()
        return self.start if plan is None else self.exp.final_state(plan.folder)

    def copies(self, theta_k: dict[str, Any] | None) -> list[LevelPlan]:
        return [LevelPlan(self.level, self.folder / f"copy_s{s}", self.mask, theta_k, self.k,
                          tag=f"{self.tag}_copy_s{s}", finetune=self.finetune, compare_to=self.mask, data_seed=s)
                for s in self.seeds]


def analyses(exp: Experiment) -> list[Analysis]:
    """Every (level, k) the run's instability branch asks for, from the levels' stored tickets."""
    config = exp.config
    branch, imp = config.branch, config.imp
    out = []
    for level in instability_levels(branch, imp.levels, imp.oneshot):
        level_dir = exp.store.level(level)
        metrics = exp.metrics(level_dir)
        if metrics is None:
            raise StoreError(f"level {level} of {exp.store.path} has not finished; its instability branch needs it")
        mask, start = Mask(load_torch(level_dir / "mask.pt")), load_torch(level_dir / "start.pt")
        for k in rewind_points(branch, exp.steps.steps_per_epoch):
            out.append(Analysis(exp, level, k, copy_seeds(branch, config.seed), mask, start,
                                int(metrics["start_step"])))
    return out


def _pending(pairs: Sequence[tuple[Experiment, LevelPlan]]) -> list[tuple[Experiment, LevelPlan]]:
    return [(e, p) for e, p in pairs if e.metrics(p.folder) is None]


def run_instability(exps: Sequence[Experiment], train: Train) -> list[list[dict[str, Any]]]:
    """Run (or resume) the instability branch of every experiment; return each one's summary rows.

    Three phases over all experiments at once, so an engine can batch each: every θk, then every pair of
    copies, then every path."""
    todo = [a for exp in exps for a in analyses(exp) if not (a.folder / RESULT).exists()]
    train(_pending([(a.exp, p) for a in todo if (p := a.prefix()) is not None]))
    train(_pending([(a.exp, p) for a in todo for p in a.copies(a.theta_k())]))
    for a in todo:
        _evaluate_path(a)
    rows = []
    for exp in exps:
        for a in analyses(exp):
            for s in a.seeds:  # the copies' own rows: their metrics.json is a level's
                rows.append((exp, summary_row(exp.metrics(a.folder / f"copy_s{s}"), branch=f"{a.tag}/copy_s{s}")))
        # Every instability result of the run, also those of other commands (a multirun over k).
        stored = [load_json(f) for f in sorted(exp.store.path.glob(f"level_*/branch_instability_*/{RESULT}"))]
        stored.sort(key=lambda r: (r["level"], r["rewind_to"], r["seeds"]))
        exp.store.save_json(stored, exp.store.file(RESULT))
        if exp.store.writer:
            print(format_instability(stored, f"Instability {exp.config.name} seed {exp.config.seed} — {exp.store.path}"))
    return [[row for e, row in rows if e is exp] for exp in exps]


def _evaluate_path(a: Analysis) -> None:
    """The error along the line between the two trained copies, and its barrier, into instability.json."""
    exp, config = a.exp, a.exp.config
    finals = [exp.final_state(p.folder) for p in a.copies(None)]
    accelerator = config.trainer.accelerator
    device = torch.device("cuda" if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu")
    info = exp.datamodule.info
    model = create_model(config.model.name, seed=config.seed, init=config.model.init, input_shape=info.input_shape,
                         num_classes=info.num_classes).to(device)
    tensors = {k: (x.to(device), y.to(device)) for k, (x, y) in exp.datamodule.tensors.items()}
    size = exp.datamodule.eval_batch_size
    path = linear_path(model, finals[0], finals[1], config.branch.points, list(EvalBatches(*tensors["test"], size)),
                       mask={n: m.to(device) for n, m in a.mask.items()},
                       bn_batches=list(EvalBatches(*tensors["train"], size)))
    result = {
        "level": a.level, "rewind_to": a.k, "seeds": list(a.seeds), "branch": a.tag,
        "percent_remaining": 100.0 * a.mask.total_density(), "start_step": a.start_step,
        "iterations": exp.steps.iterations, "points": config.branch.points, "split": "test",
        "barrier": path.barrier, "max_error": max(path.errors), "endpoint_errors": [path.errors[0], path.errors[-1]],
        "alphas": path.alphas, "errors": path.errors, "losses": path.losses,
        "batchnorm_recomputed": path.batchnorm_recomputed,
    }
    logger = exp.tracker.level_logger(a.level, a.tag)
    if logger:
        run = logger.experiment
        run.define_metric("path/alpha")
        run.define_metric("path/*", step_metric="path/alpha")
        for alpha, error, loss in zip(path.alphas, path.errors, path.losses, strict=True):
            run.log({"path/alpha": alpha, "path/test_error": error, "path/test_loss": loss})
    exp.tracker.end_level(a.level, logger, {k: v for k, v in result.items() if not isinstance(v, list)}, {}, a.tag)
    exp.store.save_json(result, a.folder / RESULT)
    log.info("level %d k=%d: barrier %.4f (endpoints %.4f, %.4f; max %.4f)", a.level, a.k, path.barrier,
             path.errors[0], path.errors[-1], max(path.errors))


def format_instability(results: list[dict[str, Any]], title: str = "") -> str:
    """A table: level, % remaining, k, the endpoints' test errors, the largest error on the path, the barrier."""
    header = f"{'level':>5}  {'% remaining':>11}  {'k':>6}  {'error A':>8}  {'error B':>8}  {'max error':>9}  {'barrier':>8}"
    lines = ([title] if title else []) + [header, "-" * len(header)]
    for r in results:
        a, b = r["endpoint_errors"]
        lines.append(f"{r['level']:>5}  {r['percent_remaining']:>11.2f}  {r['rewind_to']:>6}  {a:>8.4f}  {b:>8.4f}  "
                     f"{r['max_error']:>9.4f}  {r['barrier']:>8.4f}")
    return "\n".join(lines)
