"""The IMP job: train level 0, then repeatedly prune, rewind and retrain (Frankle & Carbin 2019).

    python -m lottery.run +exp=imp_lenet imp.levels=3 training.iterations=3000
    python -m lottery.run +exp=imp_lenet +branch=random_reinit     # a control branch beside every level

Every finished level (or branch) is skipped on a rerun; a killed one resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lottery.config import Steps, parse_nm, validate_imp
from lottery.data import DATASETS, VisionDataModule
from lottery.errors import ConfigError, StoreError
from lottery.imp.level import LevelSpec, early_stop, seed_everything, train_level
from lottery.imp.masks import next_mask
from lottery.imp.report import format_summary, summary_row
from lottery.imp.rewind import level_schedule, level_start
from lottery.models import create_model, output_layer_name, prunable_names
from lottery.pruning import Mask, resolve_rates
from lottery.pruning.analysis import layer_sparsity, mask_overlap, surviving_init_histogram
from lottery.tracking import RunStore, load_json, load_torch
from lottery.tracking.wandb_tracker import NullTracker, make_tracker

log = logging.getLogger(__name__)


def level_metrics(level: int, mask: Mask, history: list[dict[str, float]], start_step: int, iterations: int,
                  seconds: float) -> dict[str, Any]:
    """The level's record: sparsity per layer and in total, the curves, early stopping and test accuracy."""
    best = early_stop(history)
    last = history[-1] if history else {}
    return {
        "level": level,
        "start_step": start_step,
        "iterations": iterations,
        "percent_remaining": 100.0 * mask.total_density(),
        "layer_percent_remaining": {k: 100.0 * v for k, v in mask.density().items()},
        "layer_kept": mask.kept(),
        "layer_size": mask.sizes(),
        "history": history,
        "early_stop_iteration": best["iteration"] if best else None,
        "early_stop_val_loss": best["val_loss"] if best else None,
        "early_stop_val_acc": best["val_acc"] if best else None,
        "early_stop_test_acc": best.get("test_acc") if best else None,
        "final_val_loss": last.get("val_loss"),
        "final_val_acc": last.get("val_acc"),
        "final_test_acc": last.get("test_acc"),
        "train_seconds": seconds,
    }


def mask_analysis(mask: Mask, init: dict[str, Any], compare_to: Mask | None) -> dict[str, Any]:
    """Per-layer sparsity, overlap with `compare_to`, and histograms of θ0 of the surviving and pruned weights."""
    return {
        "layer_sparsity": layer_sparsity(mask),
        "overlap": mask_overlap(compare_to, mask) if compare_to is not None else None,
        "init_histogram": surviving_init_histogram(init, mask),
    }


@dataclass
class Experiment:
    """What every level and branch of one run share."""

    cfg: DictConfig
    steps: Steps
    store: RunStore
    datamodule: VisionDataModule
    tracker: Any
    model: Any
    init_state: dict[str, Any]
    rewind_state: dict[str, Any] | None = None

    def final_state(self, folder: Path) -> dict[str, Any]:
        """A finished level's trained weights: from memory when this process trained it (under DDP the other
        ranks must not wait for rank 0's file), else from the run store."""
        return self._finals.get(folder) or load_torch(folder / "final.pt")

    def metrics(self, folder: Path) -> dict[str, Any] | None:
        """A level's metrics if it has finished (in this process or earlier), else None."""
        if folder in self._metrics:
            return self._metrics[folder]
        return load_json(folder / "metrics.json") if (folder / "metrics.json").exists() else None

    def __post_init__(self) -> None:
        self._finals: dict[Path, dict[str, Any]] = {}
        self._metrics: dict[Path, dict[str, Any]] = {}

    def spec(self, start_step: int) -> LevelSpec:
        t, cfg = self.cfg.training, self.cfg
        return LevelSpec(start_step=start_step, iterations=self.steps.iterations, optimizer=t.optimizer, lr=t.lr,
                         momentum=t.momentum, weight_decay=t.weight_decay, milestones=self.steps.milestones,
                         gamma=t.gamma, eval_every=t.eval_every, checkpoint_every=t.checkpoint_every,
                         accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
                         strategy=cfg.trainer.strategy, num_nodes=cfg.trainer.num_nodes,
                         deterministic=cfg.trainer.deterministic, progress_bar=cfg.progress_bar,
                         engine=t.engine)

    def train(self, folder: Path, level: int, mask: Mask, start: dict[str, Any], start_step: int, tag: str = "",
              rewind: tuple[int, Callable] | None = None, finetune: bool = False,
              compare_to: Mask | None = None) -> dict[str, Any]:
        """Train one level or branch into `folder` (mask.pt, start.pt, final.pt, metrics.json), unless done.

        `compare_to` is the mask whose overlap with this one is recorded (the previous level's, or the ticket's).
        """
        if (done := self.metrics(folder)) is not None:
            return done
        store = self.store
        mask = Mask(store.load_or_save(folder / "mask.pt", mask.state_dict))
        self.model.load_state_dict(store.load_or_save(folder / "start.pt", lambda: start))
        spec = self.spec(start_step)
        if finetune:
            spec = level_schedule("finetune", spec)
        label = f"level {level}/{self.cfg.imp.levels}" + (f" {tag}" if tag else "")
        log.info("%s: %.2f%% of weights remaining, iterations %d..%d", label, 100 * mask.total_density(),
                 start_step, spec.iterations)
        logger = self.tracker.level_logger(level, tag)
        began = time.perf_counter()
        module = train_level(self.model, mask, self.datamodule, spec, folder / "last.ckpt", logger=logger,
                             rewind=rewind, description=label)
        metrics = level_metrics(level, mask, module.history, start_step, spec.iterations,
                                time.perf_counter() - began)
        metrics["analysis"] = mask_analysis(mask, self.init_state, compare_to)
        final = {k: v.detach().cpu().clone() for k, v in module.model.state_dict().items()}
        self._finals[folder], self._metrics[folder] = final, metrics
        store.save_torch(final, folder / "final.pt")
        store.save_json(metrics, folder / "metrics.json")
        if store.writer:
            (folder / "last.ckpt").unlink(missing_ok=True)
        self.tracker.end_level(level, logger, metrics, {"mask": folder / "mask.pt", "ticket": folder / "start.pt"},
                               tag)
        return metrics


def _pruning_rates(cfg: DictConfig, model: Any) -> tuple[dict[str, float | None], str]:
    p = cfg.pruning
    output_name = output_layer_name(model)
    names = prunable_names(model)
    return resolve_rates(names, p.strategy, p.rate, output_name, p.output_rate, dict(p.layer_rates),
                         list(p.exclude)), output_name


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run (or resume) the IMP experiment described by `cfg`, and its control branch if one is configured.

    Everything that can reject the input (config, data, pruning pattern) runs before the run folder exists.
    """
    steps = validate_imp(cfg)
    seed_everything(cfg.seed)
    d, info = cfg.data, DATASETS[cfg.data.name]
    datamodule = VisionDataModule(d.name, d.root, d.download, d.val_size, d.split_seed, d.train_subset,
                                  d.eval_subset, cfg.training.batch_size, seed=cfg.seed, augment=d.augment)
    datamodule.setup()
    model = create_model(cfg.model.name, seed=cfg.seed, init=cfg.model.init, input_shape=info.input_shape,
                         num_classes=info.num_classes)
    rates, output_name = _pruning_rates(cfg, model)
    _check_pattern(model.state_dict(), Mask.ones(model, prunable_names(model)), rates, cfg.pruning, output_name)

    with RunStore(cfg.store.root, cfg, prefix="imp") as store:
        log.info("Run folder: %s", store.path)
        store.verify(cfg.store.on_corrupt)
        tracker = NullTracker()
        if store.writer and cfg.logger.name != "none":
            tracker = make_tracker(cfg.logger.name, store.path, group=f"imp_{store.hash}",
                                   config=OmegaConf.to_container(cfg, resolve=True), mode=cfg.logger.mode,
                                   project=cfg.logger.project, entity=cfg.logger.entity, tags=list(cfg.logger.tags),
                                   init_timeout=cfg.logger.init_timeout)
        init_state = store.load_or_save(store.file("init.pt"),
                                        lambda: {k: v.clone() for k, v in model.state_dict().items()})
        exp = Experiment(cfg, steps, store, datamodule, tracker, model, init_state)
        rows = _run_levels(exp, rates, output_name)
        if cfg.get("branch") is not None:
            from lottery.imp.branches import run_branch

            rows += run_branch(exp)
        store.save_json(rows, store.file("summary.json"))
        tracker.end_experiment(rows)
    if store.writer:
        print(format_summary(rows, title=f"IMP {cfg.name} ({cfg.model.name} on {cfg.data.name}) — {store.path}"))
    return rows


def _check_pattern(weights: dict[str, Any], mask: Mask, rates: dict, p: DictConfig, output_name: str) -> None:
    """Compute a first pruning step on θ0 so a pattern that cannot fit a layer fails before any training."""
    try:
        next_mask(weights, mask, 1, rates, p.rate, p.pattern, p.norm, output_name, parse_nm(p.pattern))
    except ValueError as err:
        raise ConfigError(f"pruning.pattern={p.pattern}: {err}; leave such layers out with "
                          "pruning.exclude=[name]") from None


def _save_rewind(exp: Experiment, state: dict[str, Any]) -> None:
    exp.rewind_state = state
    exp.store.save_torch(state, exp.store.file("rewind.pt"))


def _run_levels(exp: Experiment, rates: dict[str, float | None], output_name: str) -> list[dict[str, Any]]:
    cfg, store, steps, p = exp.cfg, exp.store, exp.steps, exp.cfg.pruning
    init_state = exp.init_state
    mask = Mask.ones(exp.model, prunable_names(exp.model))
    rounds = [0, 1] if cfg.imp.oneshot else list(range(cfg.imp.levels + 1))
    rows = []
    for level in rounds:
        folder = store.level(level)
        if store.level_done(level):
            mask = Mask(load_torch(folder / "mask.pt"))
            metrics = load_json(folder / "metrics.json")
            log.info("Level %d already done (%.2f%% remaining); skipping", level, metrics["percent_remaining"])
            rows.append(summary_row(metrics))
            continue
        rewind, previous = None, mask
        if level == 0:
            start, start_step = init_state, 0
            if steps.rewind > 0:
                rewind = (steps.rewind, lambda state: _save_rewind(exp, state))
        else:
            trained = exp.final_state(store.level(level - 1))
            target_level = cfg.imp.levels if cfg.imp.oneshot else level
            mask = next_mask(trained, mask, target_level, rates, p.rate, p.pattern, p.norm, output_name,
                             parse_nm(p.pattern))
            rewind_state = None
            if cfg.imp.rewind in ("iteration", "epoch"):
                if exp.rewind_state is None:
                    if not store.file("rewind.pt").exists():
                        raise StoreError(f"{store.file('rewind.pt')} is missing; delete {store.level(0)} to "
                                         "redo level 0")
                    exp.rewind_state = load_torch(store.file("rewind.pt"))
                rewind_state = exp.rewind_state
            start, start_step = level_start(cfg.imp.rewind, mask, init_state, rewind_state, trained, steps.rewind)
        metrics = exp.train(folder, level, mask, start, start_step, rewind=rewind,
                            finetune=level > 0 and cfg.imp.rewind == "finetune",
                            compare_to=previous if level > 0 else None)
        rows.append(summary_row(metrics))
    return rows
