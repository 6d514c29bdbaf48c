"""The IMP job: train level 0, then repeatedly prune, rewind and retrain (Frankle & Carbin 2019).

    python -m lottery.run +exp=imp_lenet imp.levels=3 training.iterations=3000

Every finished level is skipped on a rerun; a killed level resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lottery.config import Steps, validate
from lottery.data import DATASETS, VisionDataModule
from lottery.errors import StoreError
from lottery.imp.level import LevelSpec, early_stop, seed_everything, train_level
from lottery.imp.report import format_summary, summary_row
from lottery.models import create_model, output_layer_name, prunable_names
from lottery.pruning import Mask, magnitude_prune, resolve_rates
from lottery.tracking import RunStore, load_json, load_torch, save_json, save_torch
from lottery.tracking.wandb_tracker import make_tracker

log = logging.getLogger(__name__)


def _level_spec(cfg: DictConfig, steps: Steps, start_step: int) -> LevelSpec:
    t = cfg.training
    return LevelSpec(start_step=start_step, iterations=steps.iterations, optimizer=t.optimizer, lr=t.lr,
                     momentum=t.momentum, weight_decay=t.weight_decay, milestones=steps.milestones, gamma=t.gamma,
                     eval_every=t.eval_every, checkpoint_every=t.checkpoint_every, accelerator=cfg.trainer.accelerator,
                     devices=cfg.trainer.devices, deterministic=cfg.trainer.deterministic,
                     progress_bar=cfg.progress_bar)


def _load_or_save(path, make) -> Any:
    if path.exists():
        return load_torch(path)
    obj = make()
    save_torch(obj, path)
    return obj


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


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run (or resume) the IMP experiment described by `cfg`; return one summary row per level."""
    steps = validate(cfg)
    seed_everything(cfg.seed)
    info = DATASETS[cfg.data.name]
    d = cfg.data
    datamodule = VisionDataModule(d.name, d.root, d.download, d.val_size, d.split_seed, d.train_subset,
                                  d.eval_subset, cfg.training.batch_size, seed=cfg.seed, augment=d.augment)
    datamodule.setup()  # before the run folder exists, so missing data leaves nothing behind

    with RunStore(cfg.store.root, cfg, prefix="imp") as store:
        log.info("Run folder: %s", store.path)
        tracker = make_tracker(cfg.logger.name, store.path, group=f"imp_{store.hash}",
                               config=OmegaConf.to_container(cfg, resolve=True),
                               **({} if cfg.logger.name == "none" else
                                  dict(mode=cfg.logger.mode, project=cfg.logger.project, entity=cfg.logger.entity,
                                       tags=list(cfg.logger.tags))))
        model = create_model(cfg.model.name, seed=cfg.seed, init=cfg.model.init, input_shape=info.input_shape,
                             num_classes=info.num_classes)
        init_state = _load_or_save(store.file("init.pt"), lambda: {k: v.clone() for k, v in model.state_dict().items()})
        names = prunable_names(model)
        p = cfg.pruning
        rates = resolve_rates(names, p.strategy, p.rate, output_layer_name(model), p.output_rate,
                              dict(p.layer_rates), list(p.exclude))
        mask = Mask.ones(model, names)
        rows = []
        for level in range(cfg.imp.levels + 1):
            ldir = store.level(level)
            if store.level_done(level):
                mask = Mask(load_torch(ldir / "mask.pt"))
                metrics = load_json(ldir / "metrics.json")
                log.info("Level %d already done (%.2f%% remaining); skipping", level, metrics["percent_remaining"])
                rows.append(summary_row(metrics))
                continue
            if level > 0:
                trained = load_torch(store.level(level - 1) / "final.pt")
                mask = magnitude_prune(trained, mask, level, rates, p.rate)
            mask = Mask(_load_or_save(ldir / "mask.pt", mask.state_dict))
            start_step = 0 if level == 0 else steps.rewind
            if level == 0:
                start = init_state
            elif steps.rewind == 0:
                start = mask.apply_to_state(init_state)
            else:
                if not store.file("rewind.pt").exists():
                    raise StoreError(f"{store.file('rewind.pt')} is missing; delete {store.level(0)} to redo level 0")
                start = mask.apply_to_state(load_torch(store.file("rewind.pt")))
            start = _load_or_save(ldir / "start.pt", lambda s=start: s)
            model.load_state_dict(start)

            log.info("Level %d/%d: %.2f%% of weights remaining, training iterations %d..%d", level, cfg.imp.levels,
                     100 * mask.total_density(), start_step, steps.iterations)
            rewind = None
            if level == 0 and steps.rewind > 0:
                rewind = (steps.rewind, lambda state: save_torch(state, store.file("rewind.pt")))
            logger = tracker.level_logger(level)
            began = time.perf_counter()
            module = train_level(model, mask, datamodule, _level_spec(cfg, steps, start_step), ldir / "last.ckpt",
                                 logger=logger, rewind=rewind, description=f"level {level}/{cfg.imp.levels}")
            metrics = level_metrics(level, mask, module.history, start_step, steps.iterations,
                                    time.perf_counter() - began)
            save_torch({k: v.detach().cpu() for k, v in module.model.state_dict().items()}, ldir / "final.pt")
            save_json(metrics, ldir / "metrics.json")
            (ldir / "last.ckpt").unlink(missing_ok=True)
            tracker.end_level(level, logger, metrics, {"mask": ldir / "mask.pt", "ticket": ldir / "start.pt"})
            rows.append(summary_row(metrics))
        save_json(rows, store.file("summary.json"))
        tracker.end_experiment(rows)
    print(format_summary(rows, title=f"IMP {cfg.name} ({cfg.model.name} on {cfg.data.name}) — {store.path}"))
    return rows
