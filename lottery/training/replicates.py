"""K independent replicates of a small model trained at once, with batched parameters (`torch.func` + `vmap`).

A LeNet-300-100 step on a GPU is a few dozen tiny kernels, so its cost is launch and Python overhead, not
arithmetic. Stacking K replicates (seeds, or ticket and control branches: each with its own init and mask)
along a leading dimension runs all of them with the same number of kernel launches as one:

- weights `[K, ...]` per parameter, a mask per replicate, one `functional_call` vmapped over the K weight sets;
- data order: batch i of replicate r is `BatchStream` batch i with replicate r's seed (K index sets, one gather);
- optimizer: `torch.optim.Adam` / `SGD` on the stacked tensors. Their updates are elementwise, so each slice
  moves exactly as its own optimizer would (tested bitwise); the lr schedule is `MaskedClassifier`'s.

On CUDA the whole step (gather, forward, backward, masking, optimizer) can be captured once in a CUDA graph and
replayed (`LevelSpec.cuda_graph`): one launch per step instead of ~100. The batch position, the data order and the
optimizer state live in fixed device buffers the graph reads; a new lr (a milestone) re-captures it.

Buffers (BatchNorm running statistics) are stacked too and updated per replicate by the vmapped forward.
Augmentation (`CropFlip`): replicate r's batch i is cropped and flipped with the randomness its own
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
from lottery.training.spec import LevelSpec

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


Rewind = tuple[int, Callable[[int, dict[str, Tensor]], None]]  # (absolute iteration k, save(r, state))


@dataclass(frozen=True)
class Replicates:
    """The K replicates of a group: the model's structure (`model_fn`, its weights unused) and, per replicate,
    its start weights, its mask (None: dense) and the seed of its data order (a `BatchStream` seed)."""

    model_fn: Callable[[], nn.Module]
    inits: Sequence[Mapping[str, Tensor]]
    masks: Sequence[Mask | None]
    seeds: Sequence[int]


@dataclass(frozen=True)
class ReplicateData:
    """What every replicate of a group trains and evaluates on (only the order of `train` differs): the
    training tensors, the evaluation splits (e.g. {"val": ..., "test": ...}) and the evaluation batch size."""

    train: tuple[Tensor, Tensor]
    eval_sets: Mapping[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    eval_batch_size: int = 1000


@dataclass(frozen=True)
class CropFlip:
    """Training augmentation as `lottery.data.augment.crop_flip` does it: random crops of the image padded by
    `padding` pixels (padding value `fill` per channel) and horizontal flips; padding 0: no augmentation."""

    padding: int = 0
    fill: Tensor | None = None


@dataclass(frozen=True)
class StepOptions:
    """How the training step runs, not what it computes: `fused_optimizer` (torch's one-kernel Adam/SGD) and
    `compile_loss` (`torch.compile` of the vmapped forward and loss, so that its backward is compiled too) make
    the CUDA-graph step fewer, larger kernels; None: on for the CUDA-graph step, off elsewhere, so CPU results
    stay bitwise what the eager step gives."""

    fused_optimizer: bool | None = None
    compile_loss: bool | None = None


NO_AUGMENT = CropFlip()
DEFAULT_OPTIONS = StepOptions()


def train_replicates(spec: LevelSpec, replicates: Replicates, data: ReplicateData, *,
                     device: str | torch.device = "cpu", augment: CropFlip = NO_AUGMENT,
                     options: StepOptions = DEFAULT_OPTIONS, checkpoints: Sequence[Path] | None = None,
                     rewind: Rewind | None = None, progress: str | None = None) -> list[ReplicateRun]:
    """Train K = len(replicates.seeds) replicates by the level spec, from absolute iteration `spec.start_step`
    to `spec.iterations`, in batches of `spec.batch_size` (the spec every engine trains a level by).

    Replicate r starts from `inits[r]` ⊙ `masks[r]` and sees the batches of a `BatchStream` over `data.train`
    with seed `seeds[r]`. Every `spec.eval_every` steps (and at the end) each replicate is evaluated on each of
    `data.eval_sets`, giving records like `MaskedClassifier.history`. `spec.precision` "bf16-mixed" runs forward
    passes and losses under bfloat16 autocast (weights and optimizer stay fp32), as Lightning's precision plugin
    does; "32-true" is plain fp32. `spec.cuda_graph` on a CUDA `device`: the step is replayed as a CUDA graph.

    `checkpoints[r]` is replicate r's resume file, written atomically every `spec.checkpoint_every` steps and
    resumed from when all of them hold the same step. `rewind=(k, save)` calls `save(r, state)` for every
    replicate right after absolute iteration k. `progress` names a progress bar (None: no bar).
    """
    _check_inputs(spec, replicates, checkpoints)
    device = torch.device(device)
    graphed = spec.cuda_graph and device.type == "cuda"
    stack = _Stack(replicates, device)
    k = len(replicates.seeds)
    fused = graphed if options.fused_optimizer is None else options.fused_optimizer
    opt = make_optimizer(stack.plist, spec.optimizer, spec.lr, spec.momentum, spec.weight_decay, foreach=not fused,
                         capturable=graphed, fused=fused)
    runs = [ReplicateRun() for _ in range(k)]
    losses = _LossSum(torch.zeros(k, device=device, dtype=stack.dtype))
    done = 0
    resumed = _resume(checkpoints, stack.stacked, opt, device) if checkpoints else None
    if resumed is not None:
        done, histories, totals, losses.steps = resumed
        for run, history in zip(runs, histories, strict=True):
            run.history = history
        losses.total.copy_(totals)
    stack.apply_masks()
    # Compiled, the forward's and the backward's elementwise work fuse into a few kernels around the matmuls.
    base, loss_of, grads_masked = training_loss(stack.base, k, spec.batch_size, stack.dtype, device, spec.precision,
                                                graphed if options.compile_loss is None else options.compile_loss)
    batches = _Batches(data.train, replicates.seeds, spec.batch_size, augment, device)
    side = torch.cuda.Stream(device) if graphed else None  # eager CUDA-graph warm-up runs on a side stream
    step = _Step(base, stack, batches, loss_of, grads_masked, opt, fused, losses.total, graphed, side)
    evaluator = _Evaluator(base, stack, data, spec.precision, device, graphed, side)
    loop = _Loop(spec, replicates.seeds, runs, stack, opt, losses, batches, step, evaluator,
                 _Checkpoints(checkpoints), rewind, progress)
    return loop.run(done)


def _check_inputs(spec: LevelSpec, replicates: Replicates, checkpoints: Sequence[Path] | None) -> None:
    if spec.precision not in PRECISION_DTYPES:
        raise ValueError(f"precision={spec.precision!r} is not supported; choose one of {', '.join(PRECISION_DTYPES)}")
    k = len(replicates.seeds)
    if not (len(replicates.inits) == len(replicates.masks) == k) or k == 0:
        raise ValueError(f"need one init and one mask per seed: {len(replicates.inits)} inits, "
                         f"{len(replicates.masks)} masks, {k} seeds")
    if checkpoints is not None and len(checkpoints) != k:
        raise ValueError(f"need one checkpoint path per replicate: {len(checkpoints)} for {k}")


class _Stack:
    """The K replicates' weights and buffers stacked along a leading dimension ([K, ...] each, on the device),
    their masks as stacked keep-tensors, and the structure-only model (`base`, on the meta device)."""

    def __init__(self, replicates: Replicates, device: torch.device) -> None:
        inits, masks = replicates.inits, replicates.masks
        base = replicates.model_fn()
        names = [n for n, _ in base.named_parameters()]
        buffer_names = [n for n, _ in base.named_buffers()]
        self.state_names = list(base.state_dict())  # the order of a replicate's state dict
        for r, init in enumerate(inits):
            if missing := [n for n in self.state_names if n not in init]:
                raise ValueError(f"init {r} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                                 "of the model's state dict")
        self.base = base.to("meta")  # only its structure is used; the weights come from `params` and `buffers`
        # The inits' floating dtype is kept (float32 normally; float64 lets a test compare without rounding noise).
        self.params = params = {n: torch.stack([init[n].detach() for init in inits]).to(device) for n in names}
        self.dtype = params[names[0]].dtype
        self.buffers = {n: torch.stack([init[n].detach() for init in inits]).to(device) for n in buffer_names}
        self.stacked = {**params, **self.buffers}  # everything a replicate's state dict holds, [K, ...] each
        masked = sorted({n for m in masks if m is not None for n, keep in m.items() if not keep.all()})
        self.keeps = [torch.stack([(m[n] if m is not None and n in m
                                    else torch.ones_like(params[n][0], dtype=torch.bool)).to(device, self.dtype)
                                   for m in masks]) for n in masked]
        self.weights = [params[n] for n in masked]
        self.plist = [params[n].requires_grad_() for n in names]
        self.masked_at = [names.index(n) for n in masked]
        self.keep_of = dict(zip(masked, self.keeps, strict=True))

    def apply_masks(self) -> None:
        """Zero every replicate's pruned weights."""
        with torch.no_grad():
            if self.weights:
                torch._foreach_mul_(self.weights, self.keeps)

    def state(self, r: int) -> dict[str, Tensor]:
        """Replicate r's state dict, on the CPU (cloned: a view would keep the whole [K, ...] storage)."""
        return {name: self.stacked[name][r].detach().cpu().clone() for name in self.state_names}


@dataclass
class _LossSum:
    """Each replicate's summed training loss since the last evaluation ([K], on the device: the captured step
    adds to it) and the number of steps summed."""

    total: Tensor
    steps: int = 0


class _Batches:
    """The data order as fixed device buffers a captured step reads: this epoch's batches per replicate, the
    batch position in it and the coming step's augmentation draws; the host refills them before each step."""

    def __init__(self, train: tuple[Tensor, Tensor], seeds: Sequence[int], batch_size: int, augment: CropFlip,
                 device: torch.device) -> None:
        self.x_train, self.y_train = (t.to(device) for t in train)
        self.n = n = len(self.x_train)
        if n < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {n} training examples")
        self.seeds, self.batch_size, self.device, self.padding = seeds, batch_size, device, augment.padding
        k = len(seeds)
        self.per_epoch = n // batch_size
        self.epoch = -1
        self.order = torch.zeros(k, self.per_epoch, batch_size, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        # Augmentation randomness of the coming step, per replicate (filled on the host before each step).
        self.crop_offsets = torch.zeros(2, k * batch_size, dtype=torch.long, device=device)
        self.crop_flips = torch.zeros(k * batch_size, dtype=torch.bool, device=device)
        self.fill = augment.fill.to(device, self.x_train.dtype) if augment.fill is not None else None

    def prepare(self, i: int) -> None:
        """Before absolute iteration i: a new epoch's order, and step i's augmentation draws."""
        k, per_epoch, batch_size = len(self.seeds), self.per_epoch, self.batch_size
        if i // per_epoch != self.epoch:
            self.epoch = i // per_epoch
            perms = torch.stack([epoch_permutation(self.n, s, self.epoch)[:per_epoch * batch_size]
                                 for s in self.seeds])
            self.order.copy_(perms.view(k, per_epoch, batch_size))
            self.position.fill_(i % per_epoch)
        if self.padding:
            draws = [crop_flip_params(batch_size, augment_generator(s, i), self.padding) for s in self.seeds]
            host = (torch.cat([o for o, _ in draws], 1), torch.cat([f for _, f in draws]))
            if self.device.type == "cuda":  # pinned: the copy is queued behind the running step, not waited for
                host = tuple(t.pin_memory() for t in host)
            self.crop_offsets.copy_(host[0], non_blocking=True)
            self.crop_flips.copy_(host[1], non_blocking=True)

    def batch(self) -> tuple[Tensor, Tensor]:
        """The current step's ([K, batch, ...] inputs, [K, batch] labels), read from the buffers (capturable)."""
        idx = self.order.index_select(1, self.position).squeeze(1)  # [K, batch]: replicate r's BatchStream batch i
        x = self.x_train[idx]
        if self.padding:
            x = apply_crop_flip(x.flatten(0, 1), self.crop_offsets, self.crop_flips, self.padding,
                                self.fill).view_as(x)
        return x, self.y_train[idx]

    def advance(self) -> None:
        self.position.add_(1)


class _Step:
    """One training step of all replicates (gather, forward, backward, masking, optimizer), run eagerly or,
    `graphed`, as a CUDA graph captured after WARMUP_STEPS eager steps on the side stream."""

    def __init__(self, base: nn.Module, stack: _Stack, batches: _Batches, loss_of: LossFn, grads_masked: bool,
                 opt: torch.optim.Optimizer, fused: bool, acc: Tensor, graphed: bool,
                 side: torch.cuda.Stream | None) -> None:
        self.base, self.stack, self.batches, self.loss_of, self.grads_masked = base, stack, batches, loss_of, grads_masked
        self.opt, self.fused, self.acc, self.graphed, self.side = opt, fused, acc, graphed, side
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0

    def train_step(self) -> None:
        stack, weights, keeps, plist = self.stack, self.stack.weights, self.stack.keeps, self.stack.plist
        x, y = self.batches.batch()
        self.base.train()
        losses = self.loss_of(stack.params, stack.keep_of, stack.buffers, x, y)
        grads = torch.autograd.grad(losses.sum(), plist)  # replicates are independent: d(sum)/dθ_r = dL_r/dθ_r
        with torch.no_grad():
            self.acc.add_(losses)
            if weights and not self.grads_masked:  # masked grads: Adam's moments, momentum and weight decay
                torch._foreach_mul_([grads[j] for j in stack.masked_at], keeps)  # never move a pruned weight
            for p, g in zip(plist, grads, strict=True):
                # torch's fused kernels read a gradient as if laid out like its parameter (a vmapped matmul's
                # weight gradient is a transposed view; fused SGD/Adam silently misread it, torch 2.14 CPU)
                p.grad = g.contiguous() if self.fused else g
            self.opt.step()
            if weights:  # ... and re-masking removes what weight decay's coupling could leave behind
                torch._foreach_mul_(weights, keeps)
            self.batches.advance()

    def set_lr(self, rate: float) -> None:
        """The lr of the coming steps; a new one drops the captured graph (the lr is a constant inside it)."""
        if rate != self.opt.param_groups[0]["lr"]:
            for group in self.opt.param_groups:
                group["lr"] = rate
            self.graph = None

    def __call__(self) -> None:
        side, device = self.side, self.batches.device
        if self.graphed and self.graph is None and self.eager_steps >= WARMUP_STEPS:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.train_step()  # recorded, not run
        if self.graph is not None:
            self.graph.replay()
        elif side is not None:
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                self.train_step()
            torch.cuda.current_stream(device).wait_stream(side)
            self.eager_steps += 1
        else:
            self.train_step()


class _Evaluator:
    """Every replicate's loss and accuracy on each evaluation split, in eval mode. Each split's [K, 3] sums
    (loss, correct, count) are written eagerly, or by replaying a captured graph: the CUDA-graph step's
    evaluation is then one launch per split and one read-back."""

    def __init__(self, base: nn.Module, stack: _Stack, data: ReplicateData, precision: str, device: torch.device,
                 graphed: bool, side: torch.cuda.Stream | None) -> None:
        def forward(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(base, (p, b), (x,))

        self.shared = vmap(forward, in_dims=(0, 0, None))  # per-replicate weights, one evaluation batch for all
        self.base, self.stack, self.precision, self.device, self.graphed, self.side = (
            base, stack, precision, device, graphed, side)
        self.k, self.dtype, self.batch_size = len(stack.plist[0]), stack.dtype, data.eval_batch_size
        self.evals = {s: (x.to(device), y.to(device)) for s, (x, y) in data.eval_sets.items()}
        self.out = {split: torch.zeros(self.k, 3, device=device, dtype=self.dtype) for split in self.evals}
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}

    def _split(self, x: Tensor, y: Tensor, out: Tensor) -> None:
        k, device, dtype, size = self.k, self.device, self.dtype, self.batch_size
        sums = torch.zeros(k, 3, device=device, dtype=dtype)
        for lo in range(0, len(x), size):
            xb, yb = x[lo:lo + size], y[lo:lo + size]
            with autocast(device, self.precision):
                logits = self.shared(self.stack.params, self.stack.buffers, xb)  # [K, b, classes]
                loss = F.cross_entropy(logits.flatten(0, 1), yb.repeat(k), reduction="none").view(k, -1)
            loss = loss.to(dtype)
            correct = (logits.argmax(-1) == yb).sum(1)
            sums += torch.stack([loss.sum(1), correct.to(dtype), torch.full_like(loss[:, 0], len(yb))], 1)
        out.copy_(sums)

    def _run(self) -> None:
        evals, side, device = self.evals, self.side, self.device
        if self.graphs:
            for graph_of_split in self.graphs.values():
                graph_of_split.replay()
            return
        if not self.graphed:
            for split, (x, y) in evals.items():
                self._split(x, y, self.out[split])
            return
        # The first evaluation of a CUDA-graph run: eagerly on the side stream (cuBLAS and allocator warm-up),
        # then each split is captured for the later ones.
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for split, (x, y) in evals.items():
                self._split(x, y, self.out[split])
        torch.cuda.current_stream(device).wait_stream(side)
        for split, (x, y) in evals.items():
            self.graphs[split] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graphs[split]):
                self._split(x, y, self.out[split])  # recorded, not run

    def __call__(self, rows: list[dict[str, float]]) -> None:
        """Add each split's `{split}_loss` and `{split}_acc` to replicate r's row `rows[r]`."""
        self.base.eval()  # BatchNorm normalises with its running statistics
        with torch.no_grad():
            self._run()
        if self.evals:  # one read-back for all splits
            sums_of = dict(zip(self.evals, torch.stack(list(self.out.values())).tolist(), strict=True))
            for split, sums in sums_of.items():
                for row, (loss_sum, right, count) in zip(rows, sums, strict=True):
                    row[f"{split}_loss"], row[f"{split}_acc"] = loss_sum / count, right / count
        self.base.train()


class _Checkpoints:
    """The replicates' resume files, written on a background thread: at most one write in flight, overlapping
    the next steps."""

    def __init__(self, paths: Sequence[Path] | None) -> None:
        self.paths = list(paths or ())
        self.writes: list[Future] = []
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replicate-checkpoint")

    def save(self, files: list[tuple[Path, dict[str, Any]]]) -> None:
        self.wait()
        self.writes.append(self.writer.submit(lambda: [save_torch(obj, path) for path, obj in files]))

    def wait(self) -> None:
        while self.writes:
            self.writes.pop().result()

    def close(self) -> None:
        self.wait()
        self.writer.shutdown()


def _checkpoint_files(paths: Sequence[Path], step: int, start_step: int, seeds: Sequence[int], stack: _Stack,
                      opt: torch.optim.Optimizer, losses: _LossSum, runs: list[ReplicateRun]
                      ) -> list[tuple[Path, dict[str, Any]]]:
    """Each replicate's checkpoint after `step` steps. One device-to-host copy per stacked tensor; each
    replicate's file gets its own slices (cloned: saving a view would store the whole [K, ...] storage)."""
    weights_now = {name: value.detach().cpu() for name, value in stack.stacked.items()}
    state = {i: {key: v.detach().cpu() for key, v in per_param.items()}
             for i, per_param in opt.state_dict()["state"].items()}
    train_losses = losses.total.cpu()
    return [(path, {"format": CHECKPOINT_FORMAT, "step": step, "start_step": start_step, "seed": seeds[r],
                    "model": {name: weights_now[name][r].clone() for name in stack.state_names},
                    "optimizer": {i: {key: (v[r].clone() if v.dim() else v.clone()) for key, v in per.items()}
                                  for i, per in state.items()},
                    "history": [dict(row) for row in runs[r].history],
                    "train_loss": torch.stack([train_losses[r], torch.tensor(float(losses.steps))])})
            for r, path in enumerate(paths)]


@dataclass
class _Loop:
    """The level's loop over its iterations: the host's preparation of each step, the step, and around it the
    lr schedule, the rewind point, evaluations, checkpoints and the progress bar."""

    spec: LevelSpec
    seeds: Sequence[int]
    runs: list[ReplicateRun]
    stack: _Stack
    opt: torch.optim.Optimizer
    losses: _LossSum
    batches: _Batches
    step_fn: _Step
    evaluator: _Evaluator
    checkpoints: _Checkpoints
    rewind: Rewind | None
    progress: str | None
    bar: Any = field(init=False, default=None)  # the progress bar, while `run` runs

    def lr(self, step: int) -> float:
        spec = self.spec
        return spec.lr * lr_factor(step, spec.start_step, spec.milestones, spec.gamma)

    def evaluate(self, step: int) -> None:
        """Record every replicate's evaluation row after `step` steps (replacing one of the same iteration)."""
        k, losses = len(self.seeds), self.losses
        rows: list[dict[str, float]] = [{"iteration": self.spec.start_step + step} for _ in range(k)]
        self.evaluator(rows)
        train_losses = losses.total.tolist()
        next_lr = self.lr(step)  # what the Trainer's scheduler reports
        for row, run, total in zip(rows, self.runs, train_losses, strict=True):
            row["lr"] = next_lr
            if losses.steps:
                row["train_loss"] = total / losses.steps
            if run.history and run.history[-1]["iteration"] == row["iteration"]:
                run.history[-1] = row
            else:
                run.history.append(row)
        losses.total.zero_()
        losses.steps = 0
        if rows and "val_acc" in rows[0]:
            self.bar.set_postfix(val_acc=f"{sum(r['val_acc'] for r in rows) / k:.3f}", refresh=False)

    def save_rewind(self) -> None:
        for r in range(len(self.seeds)):
            self.rewind[1](r, self.stack.state(r))

    def run(self, done: int) -> list[ReplicateRun]:
        """Train from `done` steps into the level (a resumed checkpoint's) to its end; the replicates' runs."""
        spec, step_fn = self.spec, self.step_fn
        steps = spec.iterations - spec.start_step
        val_every = max(min(spec.eval_every, steps), 1)
        self.bar = tqdm(total=steps, initial=done, desc=self.progress or "replicates",
                        disable=self.progress is None, dynamic_ncols=True, leave=True)
        try:
            pending = 0
            step = done
            for i in range(spec.start_step + done, spec.iterations):
                self.batches.prepare(i)
                step_fn.set_lr(self.lr(step))
                step_fn()
                self.losses.steps += 1
                step += 1
                pending += 1
                if self.rewind is not None and spec.start_step + step == self.rewind[0]:
                    self.save_rewind()
                if step % val_every == 0:
                    self.evaluate(step)
                if self.checkpoints.paths and step % spec.checkpoint_every == 0 and step < steps:
                    self.checkpoints.save(_checkpoint_files(self.checkpoints.paths, step, spec.start_step,
                                                            self.seeds, self.stack, self.opt, self.losses,
                                                            self.runs))
                if pending >= 50 or step % val_every == 0:
                    self.bar.update(pending)
                    pending = 0
        finally:
            self.checkpoints.close()
        self.bar.update(pending)
        if not self.runs[0].history or self.runs[0].history[-1]["iteration"] != spec.iterations:
            self.evaluate(step)
        self.bar.close()
        for r, run in enumerate(self.runs):
            run.state = self.stack.state(r)
        return self.runs


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
