"""K independent replicates of a small model trained at once, with batched parameters (`torch.func` + `vmap`).

A LeNet-300-100 step on a GPU is a few dozen tiny kernels, so its cost is launch and Python overhead, not
arithmetic. Stacking K replicates (seeds, or ticket and control branches: each with its own init and mask)
along a leading dimension runs all of them with the same number of kernel launches as one:

- weights `[K, ...]` per parameter, a mask per replicate, one `functional_call` vmapped over the K weight sets;
- data order: batch i of replicate r is `BatchStream` batch i with replicate r's seed (K index sets, one gather);
- optimizer: `torch.optim.Adam` / `SGD` on the stacked tensors. Their updates are elementwise, so each slice
  moves exactly as its own optimizer would (tested bitwise); the lr schedule is `MaskedClassifier`'s.

On CUDA the whole step (gather, forward, backward, masking, optimizer) can be captured once in a CUDA graph and
replayed (`cuda_graph=True`): one launch per step instead of ~100. The batch position, the data order and the
optimizer state live in fixed device buffers the graph reads; a new lr (a milestone) re-captures it.

Buffers (BatchNorm running statistics) are stacked too and updated per replicate by the vmapped forward.
Augmentation (`crop_padding`): replicate r's batch i is cropped and flipped with the randomness its own
`BatchStream` would draw (`augment_generator(seed_r, i)`), drawn on the host and applied on the device.

Each replicate's result equals a separate run with its seed to float tolerance (not bitwise: the batched matmuls
sum in another order than the unbatched ones).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from lottery.data.augment import apply_crop_flip, crop_flip_params
from lottery.data.stream import augment_generator, epoch_permutation
from lottery.pruning import Mask
from lottery.tracking.atomic import load_torch, save_torch
from lottery.training.optim import lr_factor, make_optimizer

CHECKPOINT_FORMAT = "lottery-replicate-v1"
# Lightning's precision spellings -> the autocast dtype (None: no autocast).
PRECISION_DTYPES: dict[str, torch.dtype | None] = {"32-true": None, "bf16-mixed": torch.bfloat16}
WARMUP_STEPS = 3  # eager steps before a CUDA graph is captured (lazy cuBLAS / optimizer-state initialisation)
COMPILED_CACHE_SIZE = 8  # compiled training losses kept per process (one per model structure, K, batch, dtype)

log = logging.getLogger(__name__)
LossFn = Callable[[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], Tensor, Tensor], Tensor]
_compiled_losses: OrderedDict[tuple, tuple[nn.Module, LossFn]] = OrderedDict()


def autocast(device: torch.device, precision: str) -> Any:
    """The forward pass's autocast for a Lightning precision name (disabled for "32-true").

    No autocast cache: a captured CUDA graph must recompute its casts from the live weights every replay."""
    low = PRECISION_DTYPES[precision]
    return torch.autocast(device.type, dtype=low or torch.float32, enabled=low is not None, cache_enabled=False)


def _batch_losses(base: nn.Module, k: int, batch_size: int, dtype: torch.dtype, device: torch.device,
                  precision: str, mask_in_forward: bool) -> LossFn:
    batched = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))  # per-replicate weights, buffers, batches

    def batch_losses(p: dict[str, Tensor], keep: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor
                     ) -> Tensor:
        """Each replicate's mean training loss on its batch, [K]. `mask_in_forward`: the weights enter as
        weight ⊙ keep (the same values: pruned weights are zero), so that the backward pass itself gives the
        masked gradient, fused into the kernel that writes it, in the parameter's layout."""
        if mask_in_forward:
            p = {n: v * keep[n] if n in keep else v for n, v in p.items()}
        with autocast(device, precision):
            logits = batched(p, b, x)
            losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        return losses.to(dtype).view(k, batch_size).mean(1)  # the cast is a no-op in 32-true

    return batch_losses


class _EagerIfUncompilable:
    """A compiled function that falls back to its eager twin (once, with a warning) when its first call fails
    to compile; a failure of the eager twin itself is raised as usual."""

    def __init__(self, compiled: LossFn, eager: LossFn) -> None:
        self.compiled, self.eager, self.tried = compiled, eager, False

    def __call__(self, *args: Tensor | dict[str, Tensor]) -> Tensor:
        if self.tried:
            return self.compiled(*args)
        self.tried = True
        try:
            return self.compiled(*args)
        except Exception as err:  # torch.compile (dynamo/inductor) could not handle this model's step
            log.warning("torch.compile failed on the training step (%s: %s); training it eagerly",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            self.compiled = self.eager
            return self.eager(*args)


def training_loss(base: nn.Module, k: int, batch_size: int, dtype: torch.dtype, device: torch.device,
                  precision: str, compiled: bool) -> tuple[nn.Module, LossFn, bool]:
    """The per-replicate training loss of K stacked `base` models, the module whose train/eval mode it
    follows, and whether its gradients come out masked (the compiled loss masks in its forward pass: a
    separate masking of a vmapped matmul's transposed gradient costs more than the whole fused update).
    Compiled losses are kept per structure, K, batch size and dtype, so the levels of a run (each a
    new `train_replicates` call) compile once, not once each (torch.compile recompiles on every new closure
    and turns eager after a few)."""
    if not compiled:
        return base, _batch_losses(base, k, batch_size, dtype, device, precision, mask_in_forward=False), False
    key = (type(base).__module__, type(base).__qualname__, repr(base),
           tuple((n, tuple(v.shape), v.dtype) for n, v in base.state_dict().items()),
           k, batch_size, dtype, str(device), precision)
    if key not in _compiled_losses:
        eager = _batch_losses(base, k, batch_size, dtype, device, precision, mask_in_forward=True)
        _compiled_losses[key] = base, _EagerIfUncompilable(torch.compile(eager, dynamic=False), eager)
        while len(_compiled_losses) > COMPILED_CACHE_SIZE:
            _compiled_losses.popitem(last=False)
    _compiled_losses.move_to_end(key)
    return (*_compiled_losses[key], True)


@dataclass
class ReplicateRun:
    """One replicate's evaluation records (the keys of `MaskedClassifier.history`) and its final weights (CPU)."""

    history: list[dict[str, float]] = field(default_factory=list)
    state: dict[str, Tensor] = field(default_factory=dict)


def checkpoint_step(path: Path) -> int | None:
    """The number of steps a replicate checkpoint holds, or None when there is none."""
    if not path.exists():
        return None
    return int(_load_checkpoint(path)["step"])


def _load_checkpoint(path: Path) -> dict[str, Any]:
    state = load_torch(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training.engine=batched checkpoint; delete it to restart the level")
    return state


def train_replicates(model_fn: Callable[[], nn.Module], inits: Sequence[Mapping[str, Tensor]],
                     masks: Sequence[Mask | None], train: tuple[Tensor, Tensor], batch_size: int,
                     seeds: Sequence[int], iterations: int, optimizer: str = "adam", lr: float = 1.2e-3,
                     momentum: float = 0.0, weight_decay: float = 0.0, milestones: Sequence[int] = (),
                     gamma: float = 0.1, start_step: int = 0, eval_every: int = 100,
                     eval_sets: Mapping[str, tuple[Tensor, Tensor]] | None = None, eval_batch_size: int = 1000,
                     device: str | torch.device = "cpu", cuda_graph: bool = False,
                     checkpoints: Sequence[Path] | None = None, checkpoint_every: int = 1000,
                     rewind: tuple[int, Callable[[int, dict[str, Tensor]], None]] | None = None,
                     crop_padding: int = 0, crop_fill: Tensor | None = None,
                     progress: str | None = None, precision: str = "32-true", fused_optimizer: bool | None = None,
                     compile_loss: bool | None = None) -> list[ReplicateRun]:
    """Train K = len(seeds) replicates from absolute iteration `start_step` to `iterations`.

    Replicate r starts from `inits[r]` ⊙ `masks[r]` (None: dense) and sees the batches of a `BatchStream` over
    `train` with seed `seeds[r]`. Every `eval_every` steps (and at the end) each replicate is evaluated on each
    of `eval_sets` (e.g. {"val": ..., "test": ...}), giving records like `MaskedClassifier.history`.

    `checkpoints[r]` is replicate r's resume file, written atomically every `checkpoint_every` steps and
    resumed from when all of them hold the same step. `rewind=(k, save)` calls `save(r, state)` for every
    replicate right after absolute iteration k. `crop_padding` > 0 augments training batches as `crop_flip` does
    (padding value `crop_fill` per channel). `progress` names a progress bar (None: no bar). `precision`
    "bf16-mixed" runs forward passes and losses under bfloat16 autocast (weights and optimizer stay fp32), as
    Lightning's precision plugin does; "32-true" is plain fp32.

    `fused_optimizer` (torch's one-kernel Adam/SGD) and `compile_loss` (`torch.compile` of the vmapped forward
    and loss, so that its backward is compiled too) make the CUDA-graph step fewer, larger kernels; None: both
    on for the CUDA-graph step, off elsewhere, so CPU results stay bitwise what the eager step gives.
    """
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision={precision!r} is not supported; choose one of {', '.join(PRECISION_DTYPES)}")
    k = len(seeds)
    if not (len(inits) == len(masks) == k) or k == 0:
        raise ValueError(f"need one init and one mask per seed: {len(inits)} inits, {len(masks)} masks, {k} seeds")
    if checkpoints is not None and len(checkpoints) != k:
        raise ValueError(f"need one checkpoint path per replicate: {len(checkpoints)} for {k}")
    device = torch.device(device)
    graphed = cuda_graph and device.type == "cuda"
    base = model_fn()
    names = [n for n, _ in base.named_parameters()]
    buffer_names = [n for n, _ in base.named_buffers()]
    state_names = list(base.state_dict())  # the order of a replicate's state dict
    for r, init in enumerate(inits):
        if missing := [n for n in state_names if n not in init]:
            raise ValueError(f"init {r} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} of the "
                             "model's state dict")
    base = base.to("meta")  # only its structure is used; the weights come from `params` and `buffers`
    # The inits' floating dtype is kept (float32 normally; float64 lets a test compare without rounding noise).
    params = {n: torch.stack([init[n].detach() for init in inits]).to(device) for n in names}
    dtype = params[names[0]].dtype
    buffers = {n: torch.stack([init[n].detach() for init in inits]).to(device) for n in buffer_names}
    stacked = {**params, **buffers}  # everything a replicate's state dict holds, [K, ...] each
    masked = sorted({n for m in masks if m is not None for n, keep in m.items() if not keep.all()})
    keeps = [torch.stack([(m[n] if m is not None and n in m else torch.ones_like(params[n][0], dtype=torch.bool))
                          .to(device, dtype) for m in masks]) for n in masked]
    weights = [params[n] for n in masked]
    plist = [params[n].requires_grad_() for n in names]
    masked_at = [names.index(n) for n in masked]
    fused = graphed if fused_optimizer is None else fused_optimizer
    opt = make_optimizer(plist, optimizer, lr, momentum, weight_decay, foreach=not fused, capturable=graphed,
                         fused=fused)

    runs = [ReplicateRun() for _ in range(k)]
    done, acc, counted = 0, torch.zeros(k, device=device, dtype=dtype), 0
    resumed = _resume(checkpoints, stacked, opt, device) if checkpoints else None
    if resumed is not None:
        done, histories, losses, counted = resumed
        for run, history in zip(runs, histories, strict=True):
            run.history = history
        acc.copy_(losses)
    with torch.no_grad():
        if weights:
            torch._foreach_mul_(weights, keeps)

    # Compiled, the forward's and the backward's elementwise work fuse into a few kernels around the matmuls.
    base, loss_of, grads_masked = training_loss(base, k, batch_size, dtype, device, precision,
                                                graphed if compile_loss is None else compile_loss)
    keep_of = dict(zip(masked, keeps, strict=True))

    def forward(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(base, (p, b), (x,))

    shared = vmap(forward, in_dims=(0, 0, None))  # per-replicate weights, one evaluation batch for all
    x_train, y_train = (t.to(device) for t in train)
    n = len(x_train)
    if n < batch_size:
        raise ValueError(f"batch size {batch_size} exceeds the {n} training examples")
    per_epoch = n // batch_size
    # Fixed buffers a captured graph reads: this epoch's order per replicate, and the batch position in it.
    order = torch.zeros(k, per_epoch, batch_size, dtype=torch.long, device=device)
    position = torch.zeros(1, dtype=torch.long, device=device)
    # Augmentation randomness of the coming step, per replicate (filled on the host before each step).
    crop_offsets = torch.zeros(2, k * batch_size, dtype=torch.long, device=device)
    crop_flips = torch.zeros(k * batch_size, dtype=torch.bool, device=device)
    fill = crop_fill.to(device, x_train.dtype) if crop_fill is not None else None
    evals = {s: (x.to(device), y.to(device)) for s, (x, y) in (eval_sets or {}).items()}
    steps = iterations - start_step
    val_every = max(min(eval_every, steps), 1)

    def train_step() -> None:
        idx = order.index_select(1, position).squeeze(1)  # [K, batch]: replicate r's BatchStream batch i
        x = x_train[idx]
        if crop_padding:
            x = apply_crop_flip(x.flatten(0, 1), crop_offsets, crop_flips, crop_padding, fill).view_as(x)
        base.train()
        losses = loss_of(params, keep_of, buffers, x, y_train[idx])
        grads = torch.autograd.grad(losses.sum(), plist)  # replicates are independent: d(sum)/dθ_r = dL_r/dθ_r
        with torch.no_grad():
            acc.add_(losses)
            if weights and not grads_masked:  # masked grads: Adam's moments, momentum and weight decay never
                torch._foreach_mul_([grads[j] for j in masked_at], keeps)  # move a pruned weight
            for p, g in zip(plist, grads, strict=True):
                # torch's fused kernels read a gradient as if laid out like its parameter (a vmapped matmul's
                # weight gradient is a transposed view; fused SGD/Adam silently misread it, torch 2.14 CPU)
                p.grad = g.contiguous() if fused else g
            opt.step()
            if weights:  # ... and re-masking removes what weight decay's coupling could leave behind
                torch._foreach_mul_(weights, keeps)
            position.add_(1)

    # Each split's [K, 3] sums (loss, correct, count), written by the evaluation (eagerly, or by replaying a
    # captured graph: the CUDA-graph step's evaluation is then one launch per split and one read-back).
    eval_out = {split: torch.zeros(k, 3, device=device, dtype=dtype) for split in evals}
    eval_graphs: dict[str, torch.cuda.CUDAGraph] = {}

    def eval_split(x: Tensor, y: Tensor, out: Tensor) -> None:
        sums = torch.zeros(k, 3, device=device, dtype=dtype)
        for lo in range(0, len(x), eval_batch_size):
            xb, yb = x[lo:lo + eval_batch_size], y[lo:lo + eval_batch_size]
            with autocast(device, precision):
                logits = shared(params, buffers, xb)  # [K, b, classes]
                loss = F.cross_entropy(logits.flatten(0, 1), yb.repeat(k), reduction="none").view(k, -1)
            loss = loss.to(dtype)
            correct = (logits.argmax(-1) == yb).sum(1)
            sums += torch.stack([loss.sum(1), correct.to(dtype), torch.full_like(loss[:, 0], len(yb))], 1)
        out.copy_(sums)

    def run_evaluation() -> None:
        if eval_graphs:
            for graph_of_split in eval_graphs.values():
                graph_of_split.replay()
            return
        if not graphed:
            for split, (x, y) in evals.items():
                eval_split(x, y, eval_out[split])
            return
        # The first evaluation of a CUDA-graph run: eagerly on the side stream (cuBLAS and allocator warm-up),
        # then each split is captured for the later ones.
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for split, (x, y) in evals.items():
                eval_split(x, y, eval_out[split])
        torch.cuda.current_stream(device).wait_stream(side)
        for split, (x, y) in evals.items():
            eval_graphs[split] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(eval_graphs[split]):
                eval_split(x, y, eval_out[split])  # recorded, not run

    def evaluate(step: int) -> None:
        nonlocal counted
        rows: list[dict[str, float]] = [{"iteration": start_step + step} for _ in range(k)]
        base.eval()  # BatchNorm normalises with its running statistics
        with torch.no_grad():
            run_evaluation()
        if evals:  # one read-back for all splits
            sums_of = dict(zip(evals, torch.stack(list(eval_out.values())).tolist(), strict=True))
            for split, sums in sums_of.items():
                for row, (loss_sum, right, count) in zip(rows, sums, strict=True):
                    row[f"{split}_loss"], row[f"{split}_acc"] = loss_sum / count, right / count
        base.train()
        train_losses = acc.tolist()
        next_lr = lr * lr_factor(step, start_step, milestones, gamma)  # what the Trainer's scheduler reports
        for row, run, total in zip(rows, runs, train_losses, strict=True):
            row["lr"] = next_lr
            if counted:
                row["train_loss"] = total / counted
            if run.history and run.history[-1]["iteration"] == row["iteration"]:
                run.history[-1] = row
            else:
                run.history.append(row)
        acc.zero_()
        counted = 0
        if rows and "val_acc" in rows[0]:
            bar.set_postfix(val_acc=f"{sum(r['val_acc'] for r in rows) / k:.3f}", refresh=False)

    writes: list[Future] = []  # at most one checkpoint write in flight, overlapping the next steps

    def save_checkpoints(step: int) -> None:
        # One device-to-host copy per stacked tensor; each replicate's file gets its own slices (cloned: saving
        # a view would store the whole [K, ...] storage).
        weights_now = {name: value.detach().cpu() for name, value in stacked.items()}
        state = {i: {key: v.detach().cpu() for key, v in per_param.items()}
                 for i, per_param in opt.state_dict()["state"].items()}
        train_losses = acc.cpu()
        files = [(path, {"format": CHECKPOINT_FORMAT, "step": step, "start_step": start_step, "seed": seeds[r],
                         "model": {name: weights_now[name][r].clone() for name in state_names},
                         "optimizer": {i: {key: (v[r].clone() if v.dim() else v.clone()) for key, v in per.items()}
                                       for i, per in state.items()},
                         "history": [dict(row) for row in runs[r].history],
                         "train_loss": torch.stack([train_losses[r], torch.tensor(float(counted))])})
                 for r, path in enumerate(checkpoints or ())]
        while writes:
            writes.pop().result()
        writes.append(writer.submit(lambda: [save_torch(obj, path) for path, obj in files]))

    graph: torch.cuda.CUDAGraph | None = None
    side = torch.cuda.Stream(device) if graphed else None
    bar = tqdm(total=steps, initial=done, desc=progress or "replicates", disable=progress is None,
               dynamic_ncols=True, leave=True)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replicate-checkpoint")
    try:
        epoch, pending, eager_steps = -1, 0, 0
        step = done
        for i in range(start_step + done, iterations):
            if i // per_epoch != epoch:
                epoch = i // per_epoch
                perms = torch.stack([epoch_permutation(n, s, epoch)[:per_epoch * batch_size] for s in seeds])
                order.copy_(perms.view(k, per_epoch, batch_size))
                position.fill_(i % per_epoch)
            if crop_padding:
                draws = [crop_flip_params(batch_size, augment_generator(s, i), crop_padding) for s in seeds]
                host = (torch.cat([o for o, _ in draws], 1), torch.cat([f for _, f in draws]))
                if device.type == "cuda":  # pinned: the copy is queued behind the running step, not waited for
                    host = tuple(t.pin_memory() for t in host)
                crop_offsets.copy_(host[0], non_blocking=True)
                crop_flips.copy_(host[1], non_blocking=True)
            rate = lr * lr_factor(step, start_step, milestones, gamma)
            if rate != opt.param_groups[0]["lr"]:
                for group in opt.param_groups:
                    group["lr"] = rate
                graph = None  # the lr is a constant inside a captured graph
            if graphed and graph is None and eager_steps >= WARMUP_STEPS:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    train_step()  # recorded, not run
            if graph is not None:
                graph.replay()
            elif side is not None:
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    train_step()
                torch.cuda.current_stream(device).wait_stream(side)
                eager_steps += 1
            else:
                train_step()
            counted += 1
            step += 1
            pending += 1
            if rewind is not None and start_step + step == rewind[0]:
                for r in range(k):
                    rewind[1](r, {name: stacked[name][r].detach().cpu().clone() for name in state_names})
            if step % val_every == 0:
                evaluate(step)
            if checkpoints and step % checkpoint_every == 0 and step < steps:
                save_checkpoints(step)
            if pending >= 50 or step % val_every == 0:
                bar.update(pending)
                pending = 0
    finally:
        while writes:
            writes.pop().result()
        writer.shutdown()
    bar.update(pending)
    if not runs[0].history or runs[0].history[-1]["iteration"] != iterations:
        evaluate(step)
    bar.close()
    for r, run in enumerate(runs):
        run.state = {n: stacked[n][r].detach().cpu().clone() for n in state_names}
    return runs


def _resume(checkpoints: Sequence[Path], stacked: dict[str, Tensor], opt: torch.optim.Optimizer,
            device: torch.device) -> tuple[int, list[list[dict]], Tensor, int] | None:
    """Load every replicate's checkpoint into the stacked state and optimizer; None when there are none."""
    found = [_load_checkpoint(p) if p.exists() else None for p in checkpoints]
    if all(state is None for state in found):
        return None
    steps = {state["step"] if state is not None else None for state in found}
    if len(steps) != 1:
        raise ValueError("the replicates' checkpoints hold different steps "
                         f"({sorted(str(s) for s in steps)}); resume them in groups of equal step")
    states = [s for s in found if s is not None]
    counts = {float(s["train_loss"][1]) for s in states}
    with torch.no_grad():
        for name, value in stacked.items():
            value.copy_(torch.stack([s["model"][name] for s in states]))
    per_param = {i: {key: (torch.stack([s["optimizer"][i][key] for s in states]) if value.dim() else value)
                     for key, value in states[0]["optimizer"][i].items()} for i in states[0]["optimizer"]}
    if per_param:
        opt.load_state_dict({"state": per_param, "param_groups": opt.state_dict()["param_groups"]})
    losses = torch.stack([s["train_loss"][0] for s in states]).to(device)
    return int(states[0]["step"]), [s["history"] for s in states], losses, int(counts.pop())
