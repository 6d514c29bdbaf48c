"""Where a level starts: its weights, its first iteration and its learning-rate schedule, by rewind mode.

    init       θ0 ⊙ mask, iterations 0..T, the full schedule
    iteration  θk ⊙ mask, iterations k..T, the schedule from k (level 0 saved θk)
    epoch      the same, with k given in epochs
    lr         the previous level's trained weights ⊙ mask, iterations 0..T, the schedule restarted
               (learning-rate rewinding, Renda et al. 2020)
    finetune   the previous level's trained weights ⊙ mask, T iterations at the schedule's final lr
The optimizer state always starts fresh.

`REWIND_MODES` is the one list of modes: validation (`imp.rewind`) reads its keys, and a new mode is one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch

from lottery.imp.level import LevelSpec
from lottery.pruning import Mask
from lottery.schedule import parse_step

State = Mapping[str, torch.Tensor]


def _at_start(rewind_to: str, steps_per_epoch: int) -> int:
    return 0


def _at_iteration(rewind_to: str, steps_per_epoch: int) -> int:
    return parse_step(rewind_to, steps_per_epoch)


def _at_epoch(rewind_to: str, steps_per_epoch: int) -> int:
    return int(rewind_to) * steps_per_epoch


@dataclass(frozen=True)
class RewindMode:
    """How a pruned level starts: which weights the mask is put on, and from which iteration."""

    source: str  # "init": θ0; "rewind": θk, saved by level 0; "previous": the previous level's trained weights
    point: Callable[[str, int], int]  # (imp.rewind_to, steps per epoch) -> k, the iteration level 0 saves θk at
    finetune: bool = False  # train at the schedule's final lr, without milestones


REWIND_MODES: dict[str, RewindMode] = {
    "init": RewindMode("init", _at_start),
    "iteration": RewindMode("rewind", _at_iteration),
    "epoch": RewindMode("rewind", _at_epoch),
    "lr": RewindMode("previous", _at_start),
    "finetune": RewindMode("previous", _at_start, finetune=True),
}


def unmasked_start(mode: str, init: State, rewind: State | None, previous_final: State | None) -> State:
    """The weights a pruned level's mask is put on (a control branch puts another mask on them)."""
    if mode not in REWIND_MODES:
        raise ValueError(f"imp.rewind={mode!r} is unknown")
    source = REWIND_MODES[mode].source
    if source == "init":
        return init
    if source == "rewind":
        if rewind is None:
            raise ValueError("rewinding to an iteration needs the state saved at that iteration")
        return rewind
    if previous_final is None:
        raise ValueError(f"imp.rewind={mode} needs the previous level's trained weights")
    return previous_final


def level_start(mode: str, mask: Mask, init: State, rewind: State | None, previous_final: State | None,
                rewind_step: int) -> tuple[dict[str, torch.Tensor], int]:
    """(start weights, first iteration) of a pruned level."""
    start = mask.apply_to_state(unmasked_start(mode, init, rewind, previous_final))
    return start, rewind_step if REWIND_MODES[mode].source == "rewind" else 0


def level_schedule(mode: str, spec: LevelSpec) -> LevelSpec:
    """The level's training spec: fine-tuning runs at the final lr of the schedule, without milestones."""
    if not REWIND_MODES[mode].finetune:
        return spec
    final_lr = spec.lr * spec.gamma ** len([m for m in spec.milestones if m <= spec.iterations])
    return replace(spec, lr=final_lr, milestones=())
