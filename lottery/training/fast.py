"""One IMP level trained through Lightning Fabric (`training.engine=fabric`): the Trainer's semantics, less overhead.

A LeNet step on a GPU is ~0.1 ms of kernels; the Trainer's hooks, loops and logging add several times that per
step. This loop keeps exactly what `train_level` + `MaskedClassifier` do — masked gradients and weights, Adam/SGD
with the milestone schedule at absolute iterations, evaluation on val and test every `eval_every` steps into the
same `history` records, the rewind capture at iteration k, atomic resume checkpoints — and nothing else per step:
no host synchronisation (the train loss accumulates on the device and is read at evaluation time).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from torch import nn
from tqdm.auto import tqdm

from lottery.data import VisionDataModule
from lottery.pruning import Mask
from lottery.tracking.atomic import save_torch
from lottery.training.optim import lr_factor, make_optimizer
from lottery.training.spec import LevelSpec

CHECKPOINT_FORMAT = "lottery-fabric-v1"


@dataclass
class FabricLevel:
    """What a level returns, like `MaskedClassifier`: the trained `model` (weights ⊙ mask) and its `history`."""

    model: nn.Module
    mask: Mask
    history: list[dict[str, float]] = field(default_factory=list)


@torch.no_grad()
def evaluate(model: nn.Module, loaders: list[Any], autocast: Callable[[], Any] = nullcontext
             ) -> list[torch.Tensor]:
    """Per loader, a device tensor [loss sum, correct, count], summed batch by batch as
    `MaskedClassifier.validation_step` does (so the records match to the bit). `autocast` gives the context the
    forward pass and loss run in (Fabric's, for mixed precision)."""
    was_training = model.training
    model.eval()
    sums = []
    for loader in loaders:
        total: Any = 0
        for x, y in loader:
            with autocast():
                logits = model(x)
                loss_sum = F.cross_entropy(logits, y, reduction="sum").float()
            correct = (logits.argmax(1) == y).sum()
            count = torch.tensor(len(y), device=y.device, dtype=loss_sum.dtype)
            total = total + torch.stack([loss_sum, correct.to(loss_sum.dtype), count])
        sums.append(total)
    model.train(was_training)
    return sums


def train_level_fabric(model: nn.Module, mask: Mask, datamodule: VisionDataModule, spec: LevelSpec,
                       checkpoint: Path, logger: Any = False, rewind: tuple[int, Callable] | None = None,
                       description: str = "train", data_seed: int | None = None) -> FabricLevel:
    """Train `model` (holding the level's start weights) from `spec.start_step` to `spec.iterations` under Fabric.

    Same contract as `lottery.imp.level.train_level`: `rewind=(k, save)` calls `save(state_dict)` right after
    absolute iteration k; a checkpoint at `checkpoint` (written atomically every `spec.checkpoint_every` steps,
    after that step's evaluation) is resumed from. `data_seed` orders the training data (None: the
    datamodule's seed).
    """
    if spec.devices * spec.num_nodes != 1 or spec.strategy not in ("auto", "single_device"):
        raise ValueError("training.engine=fabric trains on one device; use training.engine=trainer for DDP "
                         f"(got trainer.devices={spec.devices}, trainer.num_nodes={spec.num_nodes}, "
                         f"trainer.strategy={spec.strategy})")
    if spec.deterministic:
        # What Trainer(deterministic=True) sets: deterministic kernels (cuBLAS needs a fixed workspace).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    fabric = Fabric(accelerator=spec.accelerator, devices=1, precision=spec.precision)
    device = fabric.device
    if device.type != "cpu":
        datamodule.to(device)
    steps = spec.iterations - spec.start_step
    val_every = max(min(spec.eval_every, steps), 1)

    done, history, train_loss = 0, [], None
    state = _load_checkpoint(checkpoint)
    if state is not None:
        model.load_state_dict(state["model"])
        done, history, train_loss = state["step"], state["history"], state["train_loss"]
    model.to(device)
    params = dict(model.named_parameters())
    masked = [(params[n], m.to(device, params[n].dtype)) for n, m in mask.items() if not m.all()]
    weights, keeps = [p for p, _ in masked], [m for _, m in masked]
    with torch.no_grad():
        if weights:
            torch._foreach_mul_(weights, keeps)
    optimizer = make_optimizer(model.parameters(), spec.optimizer, spec.lr, spec.momentum, spec.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    wrapped, optimizer = fabric.setup(model, optimizer)

    def set_lr(step: int) -> None:
        # LambdaLR's value (base lr × factor) written directly: the same float, without its per-step overhead.
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * lr_factor(step, spec.start_step, spec.milestones, spec.gamma)

    set_lr(done)
    acc = torch.zeros((), device=device) if train_loss is None else train_loss[0].to(device)
    counted = 0 if train_loss is None else int(train_loss[1])
    # A module of its own, without a Trainer: the stream starts at start_step + done.
    data = datamodule.for_level(spec.start_step + done, spec.iterations, data_seed)
    stream, evals = data.train_dataloader(), data.val_dataloader()

    def record(step: int) -> None:
        nonlocal acc, counted
        row: dict[str, float] = {"iteration": spec.start_step + step}
        for split, sums in zip(("val", "test"), evaluate(wrapped, evals, fabric.autocast), strict=True):
            loss, correct, count = sums.tolist()
            row[f"{split}_loss"], row[f"{split}_acc"] = loss / count, correct / count
        row["lr"] = optimizer.param_groups[0]["lr"]
        if counted:
            row["train_loss"] = acc.item() / counted
        acc, counted = torch.zeros((), device=device), 0
        if history and history[-1]["iteration"] == row["iteration"]:
            history[-1] = row
        else:
            history.append(row)
        if logger:
            logger.log_metrics({k.replace("_", "/", 1) if k != "iteration" else k: float(v) for k, v in row.items()},
                               step=step)
        bar.set_postfix(val_acc=f"{row['val_acc']:.3f}", refresh=False)

    bar = tqdm(total=steps, initial=done, desc=description, disable=not spec.progress_bar, dynamic_ncols=True,
               leave=True)
    wrapped.train()
    step, pending = done, 0
    for x, y in stream:
        with fabric.autocast():  # the Trainer runs the whole training_step under the precision's autocast
            loss = F.cross_entropy(wrapped(x), y)
        acc += loss.detach()
        counted += 1
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss)
        with torch.no_grad():
            if weights:
                # Masked grads: Adam moments, momentum and weight decay never move a pruned weight ...
                torch._foreach_mul_([p.grad for p in weights], keeps)
            optimizer.step()
            if weights:  # ... and re-masking removes what weight decay's coupling could leave behind.
                torch._foreach_mul_(weights, keeps)
        step += 1
        set_lr(step)
        if rewind is not None and spec.start_step + step == rewind[0]:
            rewind[1]({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        pending += 1
        if step % val_every == 0:
            record(step)
        if step % spec.checkpoint_every == 0:
            _save_checkpoint(checkpoint, step, model, optimizer, history, acc, counted)
        if pending >= 20 or step % val_every == 0:
            bar.update(pending)
            pending = 0
    bar.update(pending)
    bar.close()
    if not history or history[-1]["iteration"] != spec.iterations:
        record(step)
    if logger:
        logger.save()
    return FabricLevel(model, mask, history)


def _save_checkpoint(path: Path, step: int, model: nn.Module, optimizer: Any, history: list, acc: torch.Tensor,
                     counted: int) -> None:
    save_torch({"format": CHECKPOINT_FORMAT, "step": step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "history": history,
                "train_loss": torch.stack([acc.detach().cpu(), torch.tensor(float(counted))])}, path)


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} was not written by training.engine=fabric; delete it to restart the level, "
                         "or resume it with training.engine=trainer")
    return state
