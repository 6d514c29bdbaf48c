"""The config of `+branch=instability` and its checks (which need only the config and the run's steps).

    branch.rewind_to   k: "500", "500it", "2ep", or a list of them (one analysis per k)
    branch.seeds       the two copies' data-order seeds; null: [seed + 1000, seed + 2000]
    branch.points      interpolation points on the line between the two trained copies, endpoints included
    branch.levels      the IMP levels analysed (0 = the dense network); null: every level of the run
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import ListConfig

from lottery.errors import ConfigError
from lottery.schedule import parse_step

# Branch kinds that analyse finished levels instead of training a control branch beside each level; they run
# after all levels (lottery.imp.instability). Validation accepts these besides lottery.imp.branches.BRANCHES.
ANALYSES = ("instability",)


@dataclass
class InstabilityConfig:
    """The branch group's fields (name, seed, levels) plus the analysis' own."""

    name: str = "instability"
    seed: int | None = None  # unused: the copies' data orders are `seeds`
    levels: list[int] | None = None  # the levels analysed (0 = dense); null: every level of the run
    rewind_to: Any = "0"  # one step or a list of steps
    seeds: list[int] | None = None
    points: int = 30


def instability_levels(branch: InstabilityConfig, imp_levels: int, oneshot: bool) -> list[int]:
    """The levels analysed: branch.levels, else every main level of the run (0..levels; 0 and 1 one-shot)."""
    if branch.levels:
        return [int(lv) for lv in branch.levels]
    return [0, 1] if oneshot else list(range(imp_levels + 1))


def copy_seeds(branch: InstabilityConfig, seed: int) -> tuple[int, int]:
    """The data-order seeds of the two copies (`seed`: the run's)."""
    if branch.seeds is None:
        return seed + 1000, seed + 2000
    a, b = (int(s) for s in branch.seeds)
    return a, b


def instability_tag(k: int, seeds: tuple[int, int]) -> str:
    """The folder suffix (and W&B tag) of one analysis: instability_k<k>_s<a>-<b>."""
    return f"instability_k{k}_s{seeds[0]}-{seeds[1]}"


def instability_folders(branch: InstabilityConfig, imp_levels: int, oneshot: bool, seed: int,
                        steps_per_epoch: int) -> list[str]:
    """The branch folders of every (level, k) the branch asks for, relative to the run folder."""
    tags = [instability_tag(k, copy_seeds(branch, seed)) for k in rewind_points(branch, steps_per_epoch)]
    return [f"level_{level:02d}/branch_{tag}" for level in instability_levels(branch, imp_levels, oneshot)
            for tag in tags]


def rewind_points(branch: InstabilityConfig, steps_per_epoch: int) -> list[int]:
    """branch.rewind_to as iterations (a list of one or more k)."""
    raw = branch.rewind_to
    texts = list(raw) if isinstance(raw, (list, tuple, ListConfig)) else [raw]
    if not texts:
        raise ConfigError("branch.rewind_to=[] is empty; give an iteration like 500, '2ep', or a list of them")
    points = []
    for text in texts:
        try:
            points.append(parse_step(str(text), steps_per_epoch))
        except ValueError as err:
            raise ConfigError(f"branch.rewind_to={text!r}: {err}") from None
    return list(dict.fromkeys(points))


def validate_instability(branch: InstabilityConfig, imp_levels: int, oneshot: bool, rewind: str, steps: Any) -> None:
    """Reject a bad instability branch before any run folder exists: k past the end of training (or before
    a level starts), an unknown level, fewer than 2 points, seeds that are not two distinct integers.
    `imp_levels`, `oneshot`, `rewind`: the run's imp group; `steps`: its lottery.imp.schema.Steps (that module
    imports this one to register and validate it)."""
    b = branch
    if b.seed is not None:
        raise ConfigError(f"branch.seed={b.seed} is not used by branch=instability; set the two copies' data "
                          "orders with branch.seeds=[a,b] (null: [seed + 1000, seed + 2000])")
    if b.points < 2:
        raise ConfigError(f"branch.points={b.points} must be at least 2 (the two endpoints of the path)")
    if b.seeds is not None and (len(b.seeds) != 2 or b.seeds[0] == b.seeds[1]):
        raise ConfigError(f"branch.seeds={list(b.seeds)} must be two different data-order seeds")
    levels = [0, 1] if oneshot else list(range(imp_levels + 1))
    for level in b.levels or []:
        if level not in levels:
            raise ConfigError(f"branch.levels entry {level} is not a level of this run (choose from "
                              f"{levels[0]}..{levels[-1]}; 0 is the dense network)")
    pruned_start = steps.rewind if rewind in ("iteration", "epoch") else 0
    for k in rewind_points(b, steps.steps_per_epoch):
        if k >= steps.iterations:
            raise ConfigError(f"branch.rewind_to={k} is not before the end of training at iteration "
                              f"{steps.iterations}; choose k in 0..{steps.iterations - 1}")
        if k < pruned_start and any(lv > 0 for lv in instability_levels(b, imp_levels, oneshot)):
            raise ConfigError(f"branch.rewind_to={k} is before iteration {pruned_start}, where the pruned levels "
                              f"start (imp.rewind={rewind}); choose k >= {pruned_start} or branch.levels=[0]")
