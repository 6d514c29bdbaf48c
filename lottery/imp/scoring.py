"""The IMP job's pruning scores: `pruning.score` computed on a level's weights with the run's own data stream.

Magnitude returns None, so the default path stays the exact |w| code it always was. Scores that read data use
the first `pruning.score_batches` batches of the run's seeded training stream (no augmentation), random scores
and Hutchinson's probes the run's seed: the same config always gives the same mask.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lottery.data import VisionDataModule
from lottery.data.stream import BatchStream
from lottery.imp.masks import next_mask
from lottery.imp.schema import PruningConfig
from lottery.pruning import Mask
from lottery.pruning.nm import parse_nm
from lottery.pruning.scores import SCORES, ScoreInputs, compute_scores, prunes_at_init


def at_init(pruning: PruningConfig, oneshot: bool) -> bool:
    """Does this run (its pruning group and `imp.oneshot`) prune θ0 once, before any training (its only level
    is level 1)?"""
    return prunes_at_init(pruning.score, pruning.prune_at, oneshot)


def score_mask(p: PruningConfig, model: nn.Module, source: Mapping[str, torch.Tensor], previous: Mask,
               start_level: int, target_level: int, rates: Mapping[str, float | None], output_name: str,
               datamodule: VisionDataModule, batch_size: int, seed: int) -> Mask:
    """The mask of `target_level`, nested in `previous` (the mask of `start_level`), from `pruning.score` (`p`)
    computed on the weights `source` (the previous level's trained weights, or θ0 when pruning at init).
    Scores that read data take batches of `batch_size` from the run's stream of seed `seed`."""
    nm = parse_nm(p.pattern)
    score = p.score
    if score == "magnitude":
        return next_mask(source, previous, target_level, rates, p.rate, p.pattern, p.norm, output_name, nm,
                         model=model)

    def allocate(scores: Mapping[str, torch.Tensor], fraction: float) -> Mask:
        level = start_level + (target_level - start_level) * fraction
        return next_mask(source, previous, level, rates, p.rate, p.pattern, p.norm, output_name, nm, scores=scores)

    net = copy.deepcopy(model).cpu()
    net.load_state_dict(source)
    batches: Any = None
    if SCORES[score].needs_data:
        x, y = datamodule.tensors["train"]
        batches = BatchStream(x.cpu(), y.cpu(), batch_size, seed, end=p.score_batches)
    inputs = ScoreInputs(batches, p.score_batches, seed=seed, input_shape=tuple(datamodule.info.input_shape),
                         allocate=allocate, rounds=p.synflow_rounds)
    return allocate(compute_scores(score, net, previous, inputs), 1.0)
