"""K independent replicates of a small model trained at once, with batched parameters (`torch.func` + `vmap`).

A LeNet-300-100 step on a GPU is a few dozen tiny kernels, so its cost is launch and Python overhead, not
arithmetic. Stacking K replicates (seeds, or ticket and control branches: each with its own init and mask)
along a leading dimension runs all of them with the same number of kernel launches as one:

- weights `[K, ...]` per parameter, a mask per replicate, one `functional_call` vmapped over the K weight sets;
- data order: batch i of replicate r is `BatchStream` batch i with replicate r's seed (K index sets, one gather);
- optimizer: a batched Adam (or SGD with momentum) with exactly `torch.optim.Adam`'s update math per element,
  state `[K, ...]`; the lr schedule is `MaskedClassifier`'s (milestones at absolute iterations).

Each replicate's result equals a separate run with its seed to float tolerance (not bitwise: the batched matmuls
sum in another order than the unbatched ones). Models with buffers (BatchNorm) are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from lottery.data.stream import epoch_permutation
from lottery.pruning import Mask


@dataclass
class ReplicateRun:
    """One replicate's evaluation records (the keys of `MaskedClassifier.history`) and its final weights (CPU)."""

    history: list[dict[str, float]] = field(default_factory=list)
    state: dict[str, Tensor] = field(default_factory=dict)


def _lr_factor(step: int, start_step: int, milestones: Sequence[int], gamma: float) -> float:
    return gamma ** sum(start_step + step >= m for m in milestones)


class BatchedAdam:
    """`torch.optim.Adam` (L2 weight decay, no amsgrad) on stacked `[K, ...]` tensors: the same elementwise ops
    in the same order as its single-tensor path, so each slice updates exactly as its own Adam would."""

    def __init__(self, params: list[Tensor], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.params, (self.beta1, self.beta2), self.eps, self.weight_decay = params, betas, eps, weight_decay
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        self.step_count = 0

    @torch.no_grad()
    def step(self, grads: list[Tensor], lr: float) -> None:
        self.step_count += 1
        if self.weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
        torch._foreach_lerp_(self.exp_avgs, grads, 1 - self.beta1)
        torch._foreach_mul_(self.exp_avg_sqs, self.beta2)
        torch._foreach_addcmul_(self.exp_avg_sqs, grads, grads, value=1 - self.beta2)
        bias_correction1 = 1 - self.beta1 ** self.step_count
        bias_correction2 = 1 - self.beta2 ** self.step_count
        denom = torch._foreach_sqrt(self.exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2 ** 0.5)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, self.exp_avgs, denom, value=-(lr / bias_correction1))


class BatchedSGD:
    """`torch.optim.SGD` (momentum, L2 weight decay, no dampening or Nesterov) on stacked tensors."""

    def __init__(self, params: list[Tensor], momentum: float = 0.0, weight_decay: float = 0.0):
        self.params, self.momentum, self.weight_decay = params, momentum, weight_decay
        self.buffers: list[Tensor] | None = None

    @torch.no_grad()
    def step(self, grads: list[Tensor], lr: float) -> None:
        if self.weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
        if self.momentum:
            if self.buffers is None:  # torch's first step: the buffer is a copy of the gradient
                self.buffers = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(self.buffers, self.momentum)
                torch._foreach_add_(self.buffers, grads)
            grads = self.buffers
        torch._foreach_add_(self.params, grads, alpha=-lr)


def train_replicates(model_fn: Callable[[], nn.Module], inits: Sequence[Mapping[str, Tensor]],
                     masks: Sequence[Mask | None], train: tuple[Tensor, Tensor], batch_size: int,
                     seeds: Sequence[int], iterations: int, optimizer: str = "adam", lr: float = 1.2e-3,
                     momentum: float = 0.0, weight_decay: float = 0.0, milestones: Sequence[int] = (),
                     gamma: float = 0.1, start_step: int = 0, eval_every: int = 100,
                     eval_sets: Mapping[str, tuple[Tensor, Tensor]] | None = None, eval_batch_size: int = 1000,
                     device: str | torch.device = "cpu") -> list[ReplicateRun]:
    """Train K = len(seeds) replicates from absolute iteration `start_step` to `iterations`.

    Replicate r starts from `inits[r]` ⊙ `masks[r]` (None: dense) and sees the batches of a `BatchStream` over
    `train` with seed `seeds[r]`. Every `eval_every` steps (and at the end) each replicate is evaluated on each
    of `eval_sets` (e.g. {"val": ..., "test": ...}), giving records like `MaskedClassifier.history`.
    """
    k = len(seeds)
    if not (len(inits) == len(masks) == k) or k == 0:
        raise ValueError(f"need one init and one mask per seed: {len(inits)} inits, {len(masks)} masks, {k} seeds")
    device = torch.device(device)
    base = model_fn()
    if list(base.buffers()):
        raise ValueError("train_replicates supports models without buffers (LeNet, Conv-N), not BatchNorm models")
    names = [n for n, _ in base.named_parameters()]
    base = base.to("meta")  # only its structure is used; the weights come from `params`
    params = {n: torch.stack([init[n].detach().float() for init in inits]).to(device) for n in names}
    masked = sorted({n for m in masks if m is not None for n, keep in m.items() if not keep.all()})
    keeps = [torch.stack([(m[n] if m is not None and n in m else torch.ones_like(params[n][0], dtype=torch.bool))
                          .to(device, torch.float32) for m in masks]) for n in masked]
    weights = [params[n] for n in masked]
    masked_at = [names.index(n) for n in masked]
    with torch.no_grad():
        if weights:
            torch._foreach_mul_(weights, keeps)
    plist = [params[n].requires_grad_() for n in names]
    if optimizer == "adam":
        opt: BatchedAdam | BatchedSGD = BatchedAdam(plist, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = BatchedSGD(plist, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"training.optimizer={optimizer!r} is unknown; choose adam or sgd")

    def forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(base, p, (x,))

    batched = vmap(forward)  # per-replicate weights and per-replicate batches
    shared = vmap(forward, in_dims=(0, None))  # per-replicate weights, one evaluation batch for all
    x_train, y_train = (t.to(device) for t in train)
    n = len(x_train)
    if n < batch_size:
        raise ValueError(f"batch size {batch_size} exceeds the {n} training examples")
    per_epoch = n // batch_size
    evals = {s: (x.to(device), y.to(device)) for s, (x, y) in (eval_sets or {}).items()}
    runs = [ReplicateRun() for _ in range(k)]
    steps = iterations - start_step
    val_every = max(min(eval_every, steps), 1)
    acc, counted = torch.zeros(k, device=device), 0

    def evaluate(step: int, lr_now: float) -> None:
        nonlocal acc, counted
        rows: list[dict[str, float]] = [{"iteration": start_step + step} for _ in range(k)]
        with torch.no_grad():
            for split, (x, y) in evals.items():
                sums = torch.zeros(k, 3, device=device)
                for lo in range(0, len(x), eval_batch_size):
                    xb, yb = x[lo:lo + eval_batch_size], y[lo:lo + eval_batch_size]
                    logits = shared(params, xb)  # [K, b, classes]
                    loss = F.cross_entropy(logits.flatten(0, 1), yb.repeat(k), reduction="none").view(k, -1)
                    correct = (logits.argmax(-1) == yb).sum(1)
                    sums += torch.stack([loss.sum(1), correct.float(), torch.full_like(loss[:, 0], len(yb))], 1)
                for row, (loss_sum, right, count) in zip(rows, sums.tolist(), strict=True):
                    row[f"{split}_loss"], row[f"{split}_acc"] = loss_sum / count, right / count
        train_losses = acc.tolist()
        for row, run, total in zip(rows, runs, train_losses, strict=True):
            row["lr"] = lr_now
            if counted:
                row["train_loss"] = total / counted
            run.history.append(row)
        acc, counted = torch.zeros(k, device=device), 0

    epoch, order = -1, None
    step = 0
    for i in range(start_step, iterations):
        if i // per_epoch != epoch:
            epoch = i // per_epoch
            order = torch.stack([epoch_permutation(n, s, epoch) for s in seeds]).to(device)
        lo = (i % per_epoch) * batch_size
        idx = order[:, lo:lo + batch_size]  # [K, batch]: replicate r's BatchStream batch i
        logits = batched(params, x_train[idx])
        losses = F.cross_entropy(logits.flatten(0, 1), y_train[idx].flatten(), reduction="none")
        losses = losses.view(k, batch_size).mean(1)
        grads = list(torch.autograd.grad(losses.sum(), plist))  # replicates are independent: d(sum)/dθ_r = dL_r/dθ_r
        acc += losses.detach()
        counted += 1
        lr_now = lr * _lr_factor(step, start_step, milestones, gamma)
        with torch.no_grad():
            if weights:
                torch._foreach_mul_([grads[j] for j in masked_at], keeps)
            opt.step(grads, lr_now)
            if weights:
                torch._foreach_mul_(weights, keeps)
        step += 1
        if step % val_every == 0:
            evaluate(step, lr * _lr_factor(step, start_step, milestones, gamma))
    if not runs[0].history or runs[0].history[-1]["iteration"] != iterations:
        evaluate(step, lr * _lr_factor(step, start_step, milestones, gamma))
    for r, run in enumerate(runs):
        run.state = {n: params[n][r].detach().cpu().clone() for n in names}
    return runs
