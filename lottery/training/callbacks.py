"""Callbacks for IMP levels: periodic resume checkpoints and capture of the rewind state θk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lottery.tracking.atomic import save_torch


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written through a temporary file and a rename, so none is ever half-written."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        save_torch(checkpoint, path)


class ResumeCheckpoint(L.Callback):
    """Save the full training state to `path` every `every` optimizer steps (the resume point of a killed run).

    When an evaluation falls on the same step (every `val_every` steps), the save waits until it has run,
    so the checkpoint holds that evaluation too and a resumed run does not lose it.
    """

    def __init__(self, path: str | Path, every: int, val_every: int):
        self.path, self.every, self.val_every = Path(path), every, val_every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every == 0 and step % self.val_every != 0:
            trainer.save_checkpoint(self.path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if trainer.state.fn == "fit" and not trainer.sanity_checking and step % self.every == 0:
            trainer.save_checkpoint(self.path)


class RewindCapture(L.Callback):
    """Call `save(state_dict)` once, right after the optimizer step that reaches absolute iteration `step`."""

    def __init__(self, step: int, save: Callable[[dict[str, Any]], None]):
        self.step, self.save = step, save

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if pl_module.iteration == self.step:
            self.save({k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()})
