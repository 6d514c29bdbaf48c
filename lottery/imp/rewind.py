"""Where a level starts: its weights, its first iteration and its learning-rate schedule, by rewind mode.

    init       θ0 ⊙ mask, iterations 0..T, the full schedule
    iteration  θk ⊙ mask, iterations k..T, the schedule from k (level 0 saved θk)
    epoch      the same, with k given in epochs
    lr         the previous level's trained weights ⊙ mask, iterations 0..T, the schedule restarted
               (learning-rate rewinding, Renda et al. 2020)
    finetune   the previous level's trained weights ⊙ mask, T iterations at the schedule's final lr
The optimizer state always starts fresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch

from lottery.imp.level import LevelSpec
from lottery.pruning import Mask

State = Mapping[str, torch.Tensor]


def level_start(mode: str, mask: Mask, init: State, rewind: State | None, previous_final: State | None,
                rewind_step: int) -> tuple[dict[str, torch.Tensor], int]:
    """(start weights, first iteration) of a pruned level."""
    if mode == "init":
        return mask.apply_to_state(init), 0
    if mode in ("iteration", "epoch"):
        if rewind is None:
            raise ValueError("rewinding to an iteration needs the state saved at that iteration")
        return mask.apply_to_state(rewind), rewind_step
    if mode in ("lr", "finetune"):
        if previous_final is None:
            raise ValueError(f"imp.rewind={mode} needs the previous level's trained weights")
        return mask.apply_to_state(previous_final), 0
    raise ValueError(f"imp.rewind={mode!r} is unknown")


def level_schedule(mode: str, spec: LevelSpec) -> LevelSpec:
    """The level's training spec: fine-tuning runs at the final lr of the schedule, without milestones."""
    if mode != "finetune":
        return spec
    final_lr = spec.lr * spec.gamma ** len([m for m in spec.milestones if m <= spec.iterations])
    return replace(spec, lr=final_lr, milestones=())
