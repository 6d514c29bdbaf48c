"""Control branches of an IMP level, stored beside it in level_NN/branch_<name>_s<seed>/.

    random_reinit  the level's mask, a fresh init drawn from branch.seed, trained from iteration 0
    random_prune   a random mask with the level's per-layer sparsity, on the weights the level's mask was
                   applied to (θ0, θk or the previous level's trained weights), trained like the level
    retrain        the level's ticket (mask and start weights) trained again with data order branch.seed

`BRANCHES` is the one list of branch kinds: validation (`branch.name`) reads its keys. A new kind is one
function here under `@branch_kind("name")` (plus its conf/branch/<name>.yaml): it gets the level's `Ticket`
and the branch seed and returns where its training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from lottery.pruning import Mask
from lottery.pruning.random import random_mask_like

State = dict[str, Any]


@dataclass(frozen=True)
class Ticket:
    """A level's ticket, which a branch is derived from."""

    level: int
    mask: Mask
    start: State  # the ticket's start weights (its mask applied)
    start_step: int
    unmasked: Callable[[], State]  # the weights the level's mask was applied to
    fresh_model: Callable[[int], nn.Module]  # a newly initialised model, drawn from a seed


@dataclass(frozen=True)
class BranchStart:
    """Where a branch's training starts."""

    mask: Mask
    start: State
    start_step: int
    data_seed: int | None = None  # the data order's seed; None: the run's seed, as the ticket has
    restarts: bool = False  # trained from iteration 0 with the full schedule, whatever the rewind mode


BranchKind = Callable[[Ticket, int], BranchStart]
BRANCHES: dict[str, BranchKind] = {}


def branch_kind(name: str) -> Callable[[BranchKind], BranchKind]:
    """Register a branch kind under `name` (the value of branch.name)."""
    def register(kind: BranchKind) -> BranchKind:
        BRANCHES[name] = kind
        return kind

    return register


@branch_kind("random_reinit")
def random_reinit(ticket: Ticket, seed: int) -> BranchStart:
    fresh = ticket.fresh_model(seed)
    return BranchStart(ticket.mask, ticket.mask.apply_to_state(fresh.state_dict()), 0, restarts=True)


@branch_kind("random_prune")
def random_prune(ticket: Ticket, seed: int) -> BranchStart:
    mask = random_mask_like(ticket.mask, seed=seed)
    return BranchStart(mask, mask.apply_to_state(ticket.unmasked()), ticket.start_step)


@branch_kind("retrain")
def retrain(ticket: Ticket, seed: int) -> BranchStart:
    return BranchStart(ticket.mask, ticket.start, ticket.start_step, data_seed=seed)


def branch_seed(seed: int | None, run_seed: int) -> int:
    """branch.seed, or (null) the run's seed + 1000, so a branch never reuses the ticket's randomness."""
    return seed if seed is not None else run_seed + 1000


def branch_tag(name: str, seed: int) -> str:
    """The branch's folder suffix and W&B tag: <name>_s<seed>."""
    return f"{name}_s{seed}"


def branch_levels(levels: list[int] | None, imp_levels: int, oneshot: bool) -> list[int]:
    """The pruned levels that get the control branch: branch.levels, or (null) every pruned level."""
    pruned = [1] if oneshot else list(range(1, imp_levels + 1))
    return list(levels) if levels else pruned
