"""Per-weight pruning scores (higher = keep): the registry `SCORES` that `pruning.score` names.

    magnitude  |w|                                       (the default: IMP as Frankle & Carbin 2019)
    taylor1    |ḡ ⊙ w|, ḡ the mean gradient over `num_batches` batches (first-order Taylor term of ΔL)
    obd        ½·H_ii·w², H_ii by Hutchinson's estimator (LeCun et al. 1990, Optimal Brain Damage)
    snip       |ḡ ⊙ w| at initialisation (Lee et al. 2019): the same formula as taylor1, applied to θ0
    grasp      w ⊙ (Hḡ) at initialisation (Wang et al. 2020); GraSP removes the weights with the largest
               S = −w ⊙ Hḡ, so the score kept here is −S
    synflow    |w ⊙ ∂R/∂w| of the linearised network, R = 1ᵀ f_|θ|(1), iterated over `rounds` prunings at
               an exponential schedule; data-free (Tanaka et al. 2020)
    random     uniform noise from the run's seed (salted: independent of the init)

Every score is a pure function of a model (its weights already masked), the mask, and `ScoreInputs`; it
returns one tensor per masked parameter, on the CPU. The allocation (global or layerwise, unstructured,
structured units by the sum of their weights' scores, or N:M) lives in magnitude.py and structured.py and
only ranks these numbers. Scores that read data take the first `num_batches` batches of the job's own
seeded `BatchStream`, so they are reproducible.

OBD's diagonal Hessian is Hutchinson's estimator, diag(H) ≈ mean_k z_k ⊙ (H z_k) with one Rademacher probe
z_k per batch and Hz by double backprop: it estimates the true Hessian's diagonal without bias, costs one
Hessian-vector product per batch, and needs no per-example gradients (the empirical Fisher would, and it
approximates H only near a minimum of a likelihood loss). Like OBD, it drops the gradient term −g·w of
ΔL ≈ −g·w + ½·H_ii·w²; taylor1 is that first-order term alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lottery.errors import ConfigError
from lottery.pruning.mask import Mask

__all__ = ["SCORES", "PRUNE_AT", "Score", "ScoreInputs", "classification_loss", "compute_scores",
           "hutchinson_diagonal", "obd_saliency", "prunes_at_init", "validate_score"]

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[nn.Module, Batch], Tensor]
# The mask that keeps the highest `scores` at `fraction` of the way (in levels) to the target sparsity.
Allocate = Callable[[Mapping[str, Tensor], float], Mask]
PRUNE_AT = ("auto", "init", "trained")
# GraSP's reference implementation (Wang et al. 2020, alecwangcq/GraSP) divides the logits by T = 200 while
# scoring, which flattens the softmax at init; without it the scores at init select badly on LeNet.
GRASP_TEMPERATURE = 200.0
# Salts that keep each score's random stream apart from the model's init drawn from the same run seed (a
# uniform draw from the init's own seed is correlated with the init: "random" masks then prefer one sign).
RANDOM_SALT, PROBE_SALT = 7_777_771, 8_888_881


def _generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + salt)


class _Tempered(nn.Module):
    """`net` with its outputs divided by a temperature (the parameters are `net`'s own)."""

    def __init__(self, net: nn.Module, temperature: float):
        super().__init__()
        self.net, self.temperature = net, temperature

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) / self.temperature


def classification_loss(model: nn.Module, batch: Batch) -> Tensor:
    """The training loss of the vision models: mean cross-entropy of the batch."""
    x, y = batch
    return F.cross_entropy(model(x), y)


@dataclass
class ScoreInputs:
    """What a score may read besides the model and mask. Data-free scores never touch `batches`."""

    batches: Iterable[Batch] | None = None  # the job's training stream; at most `num_batches` are read
    num_batches: int = 10
    seed: int = 0  # random scores and Hutchinson's probes
    input_shape: tuple[int, ...] | None = None  # one example's shape (SynFlow's all-ones input)
    loss_fn: LossFn = classification_loss
    allocate: Allocate | None = None  # SynFlow prunes between its rounds
    rounds: int = 100  # SynFlow's pruning rounds


@dataclass(frozen=True)
class Score:
    """A registered score: its function, whether it reads batches, and whether it is meant for θ0."""

    fn: Callable[[nn.Module, Mask, ScoreInputs], dict[str, Tensor]]
    needs_data: bool
    at_init: bool


def _masked_copy(model: nn.Module, mask: Mask) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """A copy of `model` with the pruned weights zeroed, in training mode (BatchNorm on batch statistics, as in
    training; the caller's model and its running statistics are never touched)."""
    net = copy.deepcopy(model).train()
    mask.apply_(net)
    params = dict(net.named_parameters())
    for name in mask:
        if name not in params:
            raise ValueError(f"the mask names {name!r}, which is not a parameter of the model")
    return net, params


def _batches(inputs: ScoreInputs, device: torch.device) -> list[Batch]:
    if inputs.batches is None:
        raise ValueError("this pruning score reads training batches, but none were given")
    if inputs.num_batches < 1:
        raise ValueError(f"pruning.score_batches={inputs.num_batches} must be >= 1")
    batches = [(x.to(device), y.to(device)) for x, y in islice(inputs.batches, inputs.num_batches)]
    if len(batches) < inputs.num_batches:
        raise ValueError(f"pruning.score_batches={inputs.num_batches}: only {len(batches)} batches were available")
    return batches


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def _mean_gradient(net: nn.Module, params: list[nn.Parameter], batches: list[Batch], loss_fn: LossFn) -> list[Tensor]:
    """ḡ: the mean over batches of each batch's loss gradient."""
    total = [torch.zeros_like(p) for p in params]
    for batch in batches:
        grads = torch.autograd.grad(loss_fn(net, batch), params)
        for t, g in zip(total, grads, strict=True):
            t.add_(g)
    return [t / len(batches) for t in total]


def _out(names: Iterable[str], tensors: Iterable[Tensor]) -> dict[str, Tensor]:
    return {name: t.detach().cpu() for name, t in zip(names, tensors, strict=True)}


def magnitude_score(model: nn.Module, mask: Mask, inputs: ScoreInputs) -> dict[str, Tensor]:
    """|w|."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().abs().cpu() for name in mask}


def random_score(model: nn.Module, mask: Mask, inputs: ScoreInputs) -> dict[str, Tensor]:
    """Uniform [0, 1) noise from a private generator (the run seed, salted), drawn layer by layer in mask order."""
    g = _generator(inputs.seed, RANDOM_SALT)
    return {name: torch.rand(m.shape, generator=g) for name, m in mask.items()}


def taylor1_score(model: nn.Module, mask: Mask, inputs: ScoreInputs) -> dict[str, Tensor]:
    """|ḡ ⊙ w|: the magnitude of the first-order change of the loss when w is set to zero."""
    net, params = _masked_copy(model, mask)
    names = list(mask)
    weights = [params[n] for n in names]
    grads = _mean_gradient(net, weights, _batches(inputs, _device(net)), inputs.loss_fn)
    return _out(names, ((g * w).abs() for g, w in zip(grads, weights, strict=True)))


def hutchinson_diagonal(net: nn.Module, params: list[nn.Parameter], batches: list[Batch], loss_fn: LossFn,
                        seed: int) -> list[Tensor]:
    """diag(H) of the loss w.r.t. `params`, as the mean over batches of z ⊙ (H_b z), one Rademacher z per batch."""
    g = _generator(seed, PROBE_SALT)
    total = [torch.zeros_like(p) for p in params]
    for batch in batches:
        grads = torch.autograd.grad(loss_fn(net, batch), params, create_graph=True)
        z = [(torch.randint(0, 2, p.shape, generator=g) * 2 - 1).to(p) for p in params]
        hz = torch.autograd.grad(grads, params, grad_outputs=z)
        for t, zi, hzi in zip(total, z, hz, strict=True):
            t.add_(zi * hzi)
    return [t / len(batches) for t in total]


def obd_saliency(weight: Tensor, hessian_diagonal: Tensor) -> Tensor:
    """OBD's estimate of the loss increase from zeroing each weight: ½·H_ii·w² (the gradient term dropped)."""
    return 0.5 * hessian_diagonal * weight.pow(2)


def obd_score(model: nn.Module, mask: Mask, inputs: ScoreInputs) -> dict[str, Tensor]:
    """½·H_ii·w² with H_ii from Hutchinson's estimator over the batches (low ΔL = pruned first)."""
    net, params = _masked_copy(model, mask)
    names = list(mask)
    weights = [params[n] for n in names]
    diag = hutchinson_diagonal(net, weights, _batches(inputs, _device(net)), inputs.loss_fn, inputs.seed)
    return _out(names, (obd_saliency(w.detach(), h) for w, h in zip(weights, diag, strict=True)))


def grasp_score(model: nn.Module, mask: Mask, inputs: ScoreInputs) -> dict[str, Tensor]:
    """w ⊙ (Hḡ) by double backprop: GraSP removes the largest S = −w ⊙ Hḡ, i.e. keeps the largest −S.

    The loss is taken on logits / GRASP_TEMPERATURE, as in the reference implementation."""
    net, params = _masked_copy(model, mask)
    names = list(mask)
    weights = [params[n] for n in names]
    batches = _batches(inputs, _device(net))
    tempered = _Tempered(net, GRASP_TEMPERATURE)
    gbar = [g.detach() for g in _mean_gradient(tempered, weights, batches, inputs.loss_fn)]
    hg = [torch.zeros_like(w) for w in weights]
    for batch in batches:
        grads = torch.autograd.grad(inputs.loss_fn(tempered, batch), weights, create_graph=True)
        z = sum((g * gb).sum() for g, gb in zip(grads, gbar, strict=True))
        for t, h in zip(hg, torch.autograd.grad(z, weights), strict=True):
            t.add_(h / len(batches))
    return _out(names, (w.detach() * h for w, h in zip(weights, hg, strict=True)))


def synflow_score(model: nn.Module, mask: Mask, inputs: ScoreInputs) -> dict[str, Tensor]:
    """SynFlow: `rounds` times, score |w ⊙ ∂R/∂w| of the linearised network and prune to the next point of an
    exponential schedule (fraction k/rounds of the way to the target). Reads no data.

    The network runs in float64 (R is a product over layers), in eval mode, on |θ| (biases too), with a
    single all-ones input. Returned: the last round's scores, −inf where an earlier round pruned, so
    allocating them to the target reproduces the last round's mask. Without `inputs.allocate` it is the
    single-round score.
    """
    if inputs.input_shape is None:
        raise ValueError("synflow needs the input shape of one example")
    net = copy.deepcopy(model).double().eval()
    params = dict(net.named_parameters())
    names = list(mask)
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    linear = {n: params[n].detach().clone() for n in names}
    ones = torch.ones((1, *inputs.input_shape), dtype=torch.float64, device=_device(net))
    current, rounds = mask, max(inputs.rounds, 1) if inputs.allocate is not None else 1
    scores: dict[str, Tensor] = {}
    for k in range(1, rounds + 1):
        with torch.no_grad():
            for n in names:
                params[n].copy_(linear[n] * current[n].to(linear[n]))
        grads = torch.autograd.grad(net(ones).sum(), [params[n] for n in names])
        scores = {n: torch.where(current[n], (g * params[n]).detach().abs().cpu(),
                                 torch.tensor(float("-inf"), dtype=torch.float64))
                  for n, g in zip(names, grads, strict=True)}
        if inputs.allocate is not None:
            current = inputs.allocate(scores, k / rounds)
    return scores


SCORES: dict[str, Score] = {
    "magnitude": Score(magnitude_score, needs_data=False, at_init=False),
    "taylor1": Score(taylor1_score, needs_data=True, at_init=False),
    "obd": Score(obd_score, needs_data=True, at_init=False),
    "snip": Score(taylor1_score, needs_data=True, at_init=True),
    "grasp": Score(grasp_score, needs_data=True, at_init=True),
    "synflow": Score(synflow_score, needs_data=False, at_init=True),
    "random": Score(random_score, needs_data=False, at_init=False),
}


def compute_scores(name: str, model: nn.Module, mask: Mask, inputs: ScoreInputs) -> dict[str, Tensor]:
    """The per-weight scores `SCORES[name]` gives `model` (weights as they are; pruned ones are zeroed in a copy)."""
    if name not in SCORES:
        raise ValueError(f"pruning.score={name!r} is unknown; choose one of {', '.join(SCORES)}")
    return SCORES[name].fn(model, mask, inputs)


def prunes_at_init(score: str, prune_at: str, oneshot: bool) -> bool:
    """Whether the run prunes θ0 before any training: prune_at=init, or auto with a one-shot at-init score."""
    if prune_at == "init":
        return True
    return prune_at == "auto" and oneshot and SCORES[score].at_init


def validate_score(score: str, score_batches: int, rounds: int, prune_at: str, oneshot: bool, rewind: str,
                   pattern: str, norm: str) -> None:
    """Reject pruning-score settings that cannot run, naming the key and the allowed values (ConfigError)."""
    if score not in SCORES:
        raise ConfigError(f"pruning.score={score!r} is not allowed; choose one of {', '.join(SCORES)}")
    if prune_at not in PRUNE_AT:
        raise ConfigError(f"pruning.prune_at={prune_at!r} is not allowed; choose one of {', '.join(PRUNE_AT)}")
    if SCORES[score].needs_data and score_batches < 1:
        raise ConfigError(f"pruning.score_batches={score_batches} must be >= 1: pruning.score={score} reads that "
                          "many training batches")
    if score == "synflow" and rounds < 1:
        raise ConfigError(f"pruning.synflow_rounds={rounds} must be >= 1")
    if prune_at == "init" and not oneshot:
        raise ConfigError("pruning.prune_at=init prunes θ0 once to the target sparsity; it needs imp.oneshot=true")
    if prunes_at_init(score, prune_at, oneshot) and rewind != "init":
        raise ConfigError(f"imp.rewind={rewind} has no meaning when pruning at initialisation (pruning.score={score}"
                          f", imp.oneshot=true): the mask is computed on θ0 before any training, which then starts"
                          " from θ0 ⊙ mask; use imp.rewind=init, or pruning.prune_at=trained to prune after training")
    if score != "magnitude" and pattern in ("neurons", "filters", "channels") and norm != "l1":
        raise ConfigError(f"pruning.norm={norm} applies to magnitude only: with pruning.score={score} a unit's score "
                          "is the sum of its weights' scores; use pruning.norm=l1")
