"""What the levels and branches of one IMP run share (`Experiment`), what one of them trains (`LevelPlan`),
and the run's opening and closing: checked input, the run folder, θ0, the tracker, the summary.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lottery.data import DATASETS, DataSpec, LoaderSpec, VisionDataModule
from lottery.errors import ConfigError
from lottery.imp.level import LevelSpec, early_stop, seed_everything, train_level
from lottery.imp.masks import next_mask
from lottery.imp.report import format_summary
from lottery.imp.rewind import level_schedule
from lottery.imp.schema import IMPRunConfig, PruningConfig, Steps, check_imp
from lottery.models import create_model, output_layer_name, prunable_names
from lottery.pruning import Mask, resolve_rates
from lottery.pruning.analysis import layer_sparsity, mask_overlap, surviving_init_histogram
from lottery.pruning.nm import parse_nm
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
class LevelPlan:
    """What one level (or control branch) trains: where it is stored, its mask, start weights and schedule."""

    level: int
    folder: Path
    mask: Mask
    start: dict[str, Any]
    start_step: int
    tag: str = ""  # a control branch's name, e.g. "random_reinit_s1000"; "" for the level itself
    rewind_at: int | None = None  # save θ at this iteration as the run's rewind point (level 0 only)
    finetune: bool = False
    compare_to: Mask | None = None  # the mask whose overlap with this one is recorded
    data_seed: int | None = None  # the data order's seed; None: the run's seed
    end: int | None = None  # train only up to this iteration (an instability branch's θk); None: to the end


@dataclass
class Experiment:
    """What every level and branch of one run share: its typed config (no DictConfig), steps, store, data,
    tracker, model and θ0."""

    config: IMPRunConfig
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

    def begin(self, plan: LevelPlan) -> tuple[Mask, dict[str, Any], LevelSpec]:
        """Record the plan's mask and start weights in its folder (or read them back when a killed level
        resumes), and give the (mask, start weights, training spec) to train: the spec every engine takes."""
        store = self.store
        mask = Mask(store.load_or_save(plan.folder / "mask.pt", plan.mask.state_dict))
        start = store.load_or_save(plan.folder / "start.pt", lambda: plan.start)
        spec = self.config.level_spec(self.steps, plan.start_step)
        if plan.end is not None:
            spec = replace(spec, iterations=plan.end)
        if plan.finetune:
            spec = level_schedule(self.config.imp.rewind, spec)
        return mask, start, spec

    def save_rewind(self, state: dict[str, Any]) -> None:
        """Keep θk, the rewind point, in memory and in the run folder (rewind.pt)."""
        self.rewind_state = state
        self.store.save_torch(state, self.store.file("rewind.pt"))

    def label(self, plan: LevelPlan) -> str:
        return f"level {plan.level}/{self.config.imp.levels}" + (f" {plan.tag}" if plan.tag else "")

    def finish(self, plan: LevelPlan, mask: Mask, spec: LevelSpec, history: list[dict[str, float]],
               final: dict[str, Any], seconds: float, logger: Any, extra: dict[str, Any] | None = None
               ) -> dict[str, Any]:
        """Write a trained level's final weights and metrics (metrics.json last: it marks the level done)."""
        store = self.store
        metrics = level_metrics(plan.level, mask, history, plan.start_step, spec.iterations, seconds)
        metrics["analysis"] = mask_analysis(mask, self.init_state, plan.compare_to)
        metrics.update(extra or {})
        self._finals[plan.folder], self._metrics[plan.folder] = final, metrics
        store.save_torch(final, plan.folder / "final.pt")
        store.save_json(metrics, plan.folder / "metrics.json")
        self.tracker.end_level(plan.level, logger, metrics,
                               {"mask": plan.folder / "mask.pt", "ticket": plan.folder / "start.pt"}, plan.tag)
        return metrics

    def train(self, plan: LevelPlan) -> dict[str, Any]:
        """Train one level or branch into `plan.folder` (mask.pt, start.pt, final.pt, metrics.json), unless done."""
        if (done := self.metrics(plan.folder)) is not None:
            return done
        mask, start, spec = self.begin(plan)
        self.model.load_state_dict(start)
        label = self.label(plan)
        log.info("%s: %.2f%% of weights remaining, iterations %d..%d", label, 100 * mask.total_density(),
                 plan.start_step, spec.iterations)
        logger = self.tracker.level_logger(plan.level, plan.tag)
        rewind = None
        if plan.rewind_at is not None:
            rewind = (plan.rewind_at, self.save_rewind)
        began = time.perf_counter()
        module = train_level(self.model, mask, self.datamodule, spec, plan.folder / "last.ckpt", logger=logger,
                             rewind=rewind, description=label,
                             data_seed=plan.data_seed if plan.data_seed is not None else self.config.seed)
        final = {k: v.detach().cpu().clone() for k, v in module.model.state_dict().items()}
        metrics = self.finish(plan, mask, spec, module.history, final, time.perf_counter() - began, logger)
        if self.store.writer:
            (plan.folder / "last.ckpt").unlink(missing_ok=True)
        return metrics


def pruning_rates(p: PruningConfig, model: Any) -> tuple[dict[str, float | None], str]:
    """Every prunable layer's rate (None: in the global pool) under the pruning group `p`, and the output
    layer's name."""
    output_name = output_layer_name(model)
    names = prunable_names(model)
    return resolve_rates(names, p.strategy, p.rate, output_name, p.output_rate, dict(p.layer_rates),
                         list(p.exclude)), output_name


def prepare(cfg: DictConfig, tensors: dict[str, Any] | None = None
            ) -> tuple[IMPRunConfig, Steps, VisionDataModule, Any, dict[str, float | None], str]:
    """Validate a run and build what it needs before its folder exists: its typed config (the job's one
    conversion of the config groups), steps, data, model, pruning rates.

    `tensors`: another run's loaded data with the same data config (runs that differ only in seed share it)."""
    config, steps = check_imp(cfg)
    seed_everything(config.seed)
    info = DATASETS[config.data.name]
    loader = LoaderSpec(batch_size=config.training.batch_size, seed=config.seed)
    datamodule = VisionDataModule(DataSpec.from_config(config.data), loader)
    if tensors is not None:
        datamodule.tensors = tensors
    datamodule.setup()
    model = create_model(config.model.name, seed=config.seed, init=config.model.init, input_shape=info.input_shape,
                         num_classes=info.num_classes)
    rates, output_name = pruning_rates(config.pruning, model)
    check_pattern(model.state_dict(), Mask.ones(model, prunable_names(model)), rates, config.pruning, output_name,
                  model, level=max(1, config.imp.levels))
    return config, steps, datamodule, model, rates, output_name


def open_experiment(config: IMPRunConfig, steps: Steps, datamodule: VisionDataModule, model: Any,
                    store: RunStore, record: dict[str, Any]) -> Experiment:
    """The shared state of a run whose store is open: verified files, tracker, θ0 (saved once).

    `record`: the resolved config as W&B keeps it (`OmegaConf.to_container(cfg, resolve=True)`)."""
    log.info("Run folder: %s", store.path)
    store.verify(config.store.on_corrupt)
    tracker = NullTracker()
    logger = config.logger
    if store.writer and logger.name != "none":
        tracker = make_tracker(logger.name, store.path, group=f"imp_{store.hash}", config=record, mode=logger.mode,
                               project=logger.project, entity=logger.entity, tags=list(logger.tags),
                               init_timeout=logger.init_timeout)
    init_state = store.load_or_save(store.file("init.pt"),
                                    lambda: {k: v.clone() for k, v in model.state_dict().items()})
    return Experiment(config, steps, store, datamodule, tracker, model, init_state)


def close_experiment(exp: Experiment, rows: list[dict[str, Any]]) -> None:
    """Write the run's summary (store and tracker) and print its table."""
    exp.store.save_json(rows, exp.store.file("summary.json"))
    exp.tracker.end_experiment(rows)
    if exp.store.writer:
        c = exp.config
        print(format_summary(rows, title=f"IMP {c.name} seed {c.seed} ({c.model.name} on {c.data.name}) "
                             f"— {exp.store.path}"))


def check_pattern(weights: dict[str, Any], mask: Mask, rates: dict, p: PruningConfig, output_name: str,
                  model: Any = None, level: int = 1) -> None:
    """Compute the deepest level's mask on θ0 so a pattern that cannot fit a layer fails before any training.

    Every level's target is set from the level alone (kept_count(size, rate, level) falls with the level), so
    the deepest level, `imp.levels` (also one-shot's target), is the one that could empty a channel group."""
    try:
        next_mask(weights, mask, level, rates, p.rate, p.pattern, p.norm, output_name, parse_nm(p.pattern),
                  model=model)
    except ConfigError:
        raise  # already one line naming the key (e.g. a rate that empties a channel group at some level)
    except ValueError as err:
        raise ConfigError(f"pruning.pattern={p.pattern}: {err}; leave such layers out with "
                          "pruning.exclude=[name]") from None
