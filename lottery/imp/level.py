"""Train one IMP level, resuming from the level's checkpoint if one exists.

`LevelSpec.engine` picks how: `trainer` (Lightning's Trainer, the default; DDP and SLURM pre-emption) or
`fabric` (`lottery.training.fast`: the same semantics through Lightning Fabric, with far less per-step overhead).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from lottery.data import VisionDataModule
from lottery.pruning import Mask
from lottery.training import (
    AtomicCheckpointIO,
    LevelProgressBar,
    MaskedClassifier,
    ResumeCheckpoint,
    RewindCapture,
)
from lottery.training.fast import FabricLevel, train_level_fabric
from lottery.training.spec import LevelSpec

log = logging.getLogger(__name__)
# Lightning's per-Trainer banners (accelerator info, tips) repeat at every level; keep warnings only.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def train_level(model: nn.Module, mask: Mask, datamodule: VisionDataModule, spec: LevelSpec, checkpoint: Path,
                logger: Any = False, rewind: tuple[int, Any] | None = None, description: str = "train",
                data_seed: int | None = None) -> MaskedClassifier | FabricLevel:
    """Train `model` (already holding the level's start weights) from `spec.start_step` to `spec.iterations`.

    `rewind=(k, save)` calls `save(state_dict)` right after iteration k. Evaluation runs every
    `spec.eval_every` iterations and once more at the end if the last one fell short of it. Either engine
    returns an object with `.model` and `.history`. `data_seed` orders the training data (None: the
    datamodule's seed).
    """
    if spec.engine == "fabric":
        return train_level_fabric(model, mask, datamodule, spec, checkpoint, logger=logger, rewind=rewind,
                                  description=description, data_seed=data_seed)
    if spec.engine != "trainer":
        raise ValueError(f"training.engine={spec.engine!r} is unknown; choose trainer or fabric")
    module = MaskedClassifier(model, mask, spec.optimizer, spec.lr, spec.momentum, spec.weight_decay,
                              list(spec.milestones), spec.gamma, spec.start_step)
    steps = spec.iterations - spec.start_step
    callbacks: list[L.Callback] = []
    if rewind is not None:
        callbacks.append(RewindCapture(*rewind))
    callbacks.append(ResumeCheckpoint(checkpoint, spec.checkpoint_every, min(spec.eval_every, steps)))
    if spec.progress_bar:
        callbacks.append(LevelProgressBar(description))
    trainer = L.Trainer(
        accelerator=spec.accelerator, devices=spec.devices, strategy=spec.strategy, num_nodes=spec.num_nodes,
        max_steps=steps, max_epochs=-1,
        val_check_interval=min(spec.eval_every, steps), check_val_every_n_epoch=None, num_sanity_val_steps=0,
        logger=logger, callbacks=callbacks, enable_checkpointing=False, plugins=[AtomicCheckpointIO()],
        deterministic=spec.deterministic, precision=spec.precision, enable_progress_bar=spec.progress_bar, enable_model_summary=False,
        log_every_n_steps=spec.eval_every, default_root_dir=str(checkpoint.parent),
    )
    if trainer.strategy.root_device.type != "cpu":
        datamodule.to(trainer.strategy.root_device)  # small datasets live on the accelerator
    data = datamodule.for_level(spec.start_step, spec.iterations, data_seed)
    resume = resume_checkpoint(checkpoint)
    if resume:
        log.info("Resuming from %s", resume)
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    if not module.history or module.history[-1]["iteration"] != spec.iterations:
        trainer.validate(module, datamodule=data, verbose=False)
    for hpc in checkpoint.parent.glob("hpc_ckpt_*.ckpt"):
        if trainer.is_global_zero:
            hpc.unlink(missing_ok=True)
    return module


def resume_checkpoint(checkpoint: Path) -> Path | None:
    """The newest resume point of a level: our periodic `checkpoint`, or the `hpc_ckpt_N.ckpt` that Lightning's
    SLURM environment writes when the job is pre-empted (SIGUSR1) before it requeues it."""
    candidates = [checkpoint] if checkpoint.exists() else []
    candidates += list(checkpoint.parent.glob("hpc_ckpt_*.ckpt"))
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None


def early_stop(history: list[dict[str, float]]) -> dict[str, float] | None:
    """The evaluation with the lowest validation loss (the first one, on ties)."""
    with_val = [h for h in history if "val_loss" in h]
    return min(with_val, key=lambda h: h["val_loss"]) if with_val else None


def seed_everything(seed: int) -> None:
    """Seed every RNG Lightning and torch use; the data order and init have their own generators too."""
    L.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
