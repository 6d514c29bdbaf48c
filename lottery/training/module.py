"""The LightningModule that trains a classifier under a fixed mask.

Pruned weights stay exactly zero: their gradients are zeroed before every optimizer step (so SGD momentum,
Adam moments and weight decay never move them) and the mask is re-applied after it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lottery.pruning import Mask
from lottery.training.optim import lr_factor, make_optimizer


class MaskedClassifier(L.LightningModule):
    """Cross-entropy training of `model` under `mask`, with validation/test tracking at every evaluation.

    Iterations are absolute: a level that starts from a rewind point k counts from k, and the lr schedule
    (`milestones`, in absolute iterations) is evaluated at `start_step + global_step`.
    """

    def __init__(self, model: nn.Module, mask: Mask, optimizer: str = "adam", lr: float = 1.2e-3,
                 momentum: float = 0.0, weight_decay: float = 0.0, milestones: list[int] | None = None,
                 gamma: float = 0.1, start_step: int = 0):
        super().__init__()
        self.model, self.mask = model, mask
        self.optimizer_name, self.lr, self.momentum, self.weight_decay = optimizer, lr, momentum, weight_decay
        self.milestones, self.gamma, self.start_step = sorted(milestones or []), gamma, start_step
        self.history: list[dict[str, float]] = []
        self._masked: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._sums: dict[int, torch.Tensor] = {}
        self._train_loss = torch.zeros(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def iteration(self) -> int:
        return self.start_step + self.global_step

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            self._check_same_mask_everywhere()
        params = dict(self.model.named_parameters())
        self._masked = [(params[n], m.to(self.device, params[n].dtype)) for n, m in self.mask.items() if not m.all()]
        self._apply_mask()
        self._train_loss = torch.zeros(2, device=self.device)

    def _check_same_mask_everywhere(self) -> None:
        """Every rank computes the mask itself; make sure they agree before training under it."""
        digest = torch.tensor([float(sum(int(m.sum()) * (i + 1) for i, m in enumerate(self.mask.values()))),
                               float(sum(int(m.flatten().nonzero()[:, 0].sum()) for m in self.mask.values()))],
                              dtype=torch.float64, device=self.device)
        gathered = self.all_gather(digest)
        if not bool((gathered == digest).all()):
            raise RuntimeError(f"the ranks hold different masks (digests {gathered.tolist()})")

    @torch.no_grad()
    def _apply_mask(self) -> None:
        for param, m in self._masked:
            param.mul_(m)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = make_optimizer(self.model.parameters(), self.optimizer_name, self.lr, self.momentum, self.weight_decay)
        start, milestones, gamma = self.start_step, self.milestones, self.gamma

        def factor(step: int) -> float:
            return lr_factor(step, start, milestones, gamma)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        # Accumulated on the device and read only at evaluation time: no host sync per step.
        self._train_loss += torch.stack([loss.detach(), torch.ones((), device=loss.device)])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        for param, m in self._masked:
            if param.grad is not None:
                param.grad.mul_(m)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        optimizer.step(closure=optimizer_closure)
        self._apply_mask()

    def on_validation_epoch_start(self) -> None:
        self._sums = {}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        logits = self.model(x)
        loss_sum = F.cross_entropy(logits, y, reduction="sum").float()  # bf16 would round the counts (> 256)
        correct = (logits.argmax(1) == y).sum()
        row = torch.stack([loss_sum, correct.to(loss_sum.dtype), torch.tensor(len(y), device=y.device, dtype=loss_sum.dtype)])
        self._sums[dataloader_idx] = self._sums.get(dataloader_idx, 0) + row

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        record: dict[str, float] = {"iteration": self.iteration}
        for idx, split in enumerate(("val", "test")):
            if idx in self._sums:
                loss, correct, count = self._sums[idx].tolist()
                record[f"{split}_loss"], record[f"{split}_acc"] = loss / count, correct / count
        if self.trainer.optimizers:
            record["lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        loss_sum, steps = self._train_loss.tolist()
        if steps:
            record["train_loss"] = loss_sum / steps
        self._train_loss.zero_()
        if self.history and self.history[-1]["iteration"] == record["iteration"]:
            self.history[-1] = record
        else:
            self.history.append(record)
        if self.trainer.loggers:
            metrics = {k.replace("_", "/", 1) if k != "iteration" else k: float(v) for k, v in record.items()}
            self.log_dict(metrics, prog_bar=False, logger=True, add_dataloader_idx=False, rank_zero_only=True)
        if "val_acc" in record:
            self.log("val_acc", record["val_acc"], prog_bar=True, logger=False, rank_zero_only=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lottery_history"] = self.history
        checkpoint["lottery_train_loss"] = self._train_loss.cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = checkpoint.get("lottery_history", [])
        self._pending_train_loss = checkpoint.get("lottery_train_loss")

    def on_train_start(self) -> None:
        pending = getattr(self, "_pending_train_loss", None)
        if pending is not None:
            self._train_loss = pending.to(self.device)
            self._pending_train_loss = None
