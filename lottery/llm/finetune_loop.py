"""The masked training loop of sparse fine-tuning, through Lightning Fabric, with atomic checkpoints and resume.

Every step: masked gradients (so AdamW's moments never move a pruned weight), the optimizer step, then the
weights re-masked (so weight decay cannot leave anything behind): pruned weights are exactly zero after each step.
Batches come from `batch(step)`, a pure function of the step, so a resumed run sees the same data as an
uninterrupted one and, on the CPU, ends bitwise where it would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from torch import Tensor, nn
from tqdm.auto import tqdm

from lottery.tracking import save_torch

CHECKPOINT_FORMAT = "finetune-v1"


@dataclass
class LoopSpec:
    steps: int
    lr: float
    schedule: str  # cosine | constant
    warmup: int
    weight_decay: float
    grad_clip: float  # 0 = off
    precision: str  # 32-true | bf16-mixed
    device: str  # cpu | cuda | cuda:N
    checkpoint_every: int
    progress_bar: bool = True


@dataclass
class LoopResult:
    losses: list[float]  # the training loss of every step
    train_seconds: float  # summed over resumed attempts
    peak_gpu_bytes: int | None


def lr_factor(step: int, steps: int, warmup: int, schedule: str) -> float:
    """The multiplier of the base learning rate at step `step` (0-based): linear warmup over `warmup` steps, then
    constant or a cosine from 1 to 0 at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _fabric(spec: LoopSpec) -> Fabric:
    if spec.device.startswith("cuda"):
        index = int(spec.device.split(":")[1]) if ":" in spec.device else 0
        return Fabric(accelerator="cuda", devices=[index], precision=spec.precision)
    return Fabric(accelerator="cpu", devices=1, precision=spec.precision)


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a fine-tuning checkpoint ({CHECKPOINT_FORMAT}); delete it to restart")
    return state


def distill_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(teacher || student) per token, averaged over the tokens (temperature 1), in float32."""
    log_p = torch.log_softmax(teacher_logits.float(), dim=-1)
    log_q = torch.log_softmax(student_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def train_masked(model: nn.Module, masks: dict[str, Tensor], batch: Callable[[int], Tensor], spec: LoopSpec,
                 checkpoint: Path, log: Callable[[int, dict[str, float]], None] | None = None,
                 teacher: nn.Module | None = None) -> LoopResult:
    """Train the parameters of `model` that require grad for `spec.steps` steps, masks held.

    The loss is the causal-LM loss, or with a `teacher` (the dense model) the KL divergence from the teacher's
    next-token distribution. `masks` (parameter name -> bool, True = keep) is applied to those of its parameters
    that are trained; a checkpoint at `checkpoint` (trainable parameters, optimizer, step, losses) is resumed
    from and rewritten atomically every `spec.checkpoint_every` steps. `log(step, metrics)` receives each step's
    loss and lr.
    """
    fabric = _fabric(spec)
    device = fabric.device
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    state = _load_checkpoint(checkpoint)
    done, losses, seconds = 0, [], 0.0
    if state is not None:
        with torch.no_grad():
            for name, value in state["trainable"].items():
                trainable[name].copy_(value)
        done, losses, seconds = state["step"], list(state["losses"]), state["train_seconds"]
    model.to(device)
    masked = [(trainable[n], m.to(device, trainable[n].dtype)) for n, m in masks.items()
              if n in trainable and not m.all()]
    weights, keeps = [p for p, _ in masked], [m for _, m in masked]
    with torch.no_grad():
        if weights:
            torch._foreach_mul_(weights, keeps)
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=spec.lr, weight_decay=spec.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    wrapped, optimizer = fabric.setup(model, optimizer)
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def save(step: int, elapsed: float) -> None:
        save_torch({"format": CHECKPOINT_FORMAT, "step": step, "losses": losses, "train_seconds": elapsed,
                    "trainable": {n: p.detach().cpu() for n, p in trainable.items()},
                    "optimizer": optimizer.state_dict()}, checkpoint)

    bar = tqdm(total=spec.steps, initial=done, desc="finetune", unit="step", disable=not spec.progress_bar,
               dynamic_ncols=True)
    wrapped.train()
    began = time.perf_counter()
    for step in range(done, spec.steps):
        lr = spec.lr * lr_factor(step, spec.steps, spec.warmup, spec.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids = batch(step).to(device)
        if teacher is None:
            loss = wrapped(input_ids=ids, labels=ids, use_cache=False).loss
        else:
            with torch.no_grad(), fabric.autocast():
                target = teacher(input_ids=ids, use_cache=False).logits
            loss = distill_loss(wrapped(input_ids=ids, use_cache=False).logits, target)
            del target
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss)
        with torch.no_grad():
            if weights:
                torch._foreach_mul_([p.grad for p in weights], keeps)
        if spec.grad_clip:
            fabric.clip_gradients(wrapped, optimizer, max_norm=spec.grad_clip, error_if_nonfinite=False)
        optimizer.step()
        with torch.no_grad():
            if weights:
                torch._foreach_mul_(weights, keeps)
        losses.append(loss.item())
        if log is not None:
            log(step + 1, {"train/loss": losses[-1], "train/lr": lr})
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        if (step + 1) % spec.checkpoint_every == 0 and step + 1 < spec.steps:
            save(step + 1, seconds + time.perf_counter() - began)
    bar.close()
    seconds += time.perf_counter() - began
    if done < spec.steps:
        save(spec.steps, seconds)  # the finished state: a rerun killed later skips straight to the end
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    model.to("cpu")
    if teacher is not None:
        teacher.to("cpu")
    return LoopResult(losses, seconds, peak)
