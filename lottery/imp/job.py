"""The IMP job: train level 0, then repeatedly prune, rewind and retrain (Frankle & Carbin 2019).

    python -m lottery.run +exp=imp_lenet imp.levels=3 training.iterations=3000
    python -m lottery.run +exp=imp_lenet +branch=random_reinit     # a control branch beside every level

Every finished level (or branch) is skipped on a rerun; a killed one resumes from its last checkpoint.
training.engine=trainer|fabric trains each level's plans (`lottery.imp.plan.level_work`) one after the
other here; training.engine=batched hands the runs to `lottery.imp.batched`.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lottery.imp.auto import resolve_auto
from lottery.imp.batched import run_batched
from lottery.imp.experiment import Experiment, close_experiment, open_experiment, prepare
from lottery.imp.instability import run_instability
from lottery.imp.plan import level_rounds, level_work
from lottery.imp.schema import validate_imp
from lottery.models import prunable_names
from lottery.pruning import Mask
from lottery.tracking import RunStore


def seed_configs(cfg: DictConfig) -> list[DictConfig]:
    """One config per run `cfg` asks for: `seed`, or each of `seeds` (as if run with seed=s)."""
    if not cfg.get("seeds"):
        return [cfg]
    configs = []
    for seed in cfg.seeds:
        one = cfg.copy()
        with open_dict(one):
            one.seed, one.seeds = int(seed), None
        configs.append(one)
    return configs


def resolve(cfg: DictConfig) -> DictConfig:
    """`cfg` with `trainer.accelerator` and `training.engine` concrete (lottery.imp.auto), saying on the console
    what `auto` became and why. Runs before anything hashes the config, so the run folder names what ran."""
    resolved = resolve_auto(cfg)
    for reason in resolved.reasons:
        print(f"lottery: {reason}", flush=True)
    return resolved.cfg


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run (or resume) the IMP experiment described by `cfg` (every run of `seeds`, if set), with its control
    branch if one is configured. Rows of several seeds carry a "seed" key.

    Everything that can reject the input (config, data, pruning pattern) runs before a run folder exists.
    """
    cfg = resolve(cfg)  # a no-op when lottery.run has resolved it already
    configs = seed_configs(cfg)
    if cfg.training.engine == "batched":
        return run_batched(configs)
    if len(configs) == 1:
        return run_one(configs[0])
    for one in configs:  # reject every run's input before the first one trains
        validate_imp(one)
    return [{"seed": one.seed, **row} for one in configs for row in run_one(one)]


def run_one(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run (or resume) one seed's IMP experiment, level after level, each level's control branch after it."""
    config, steps, datamodule, model, rates, output_name = prepare(cfg)
    # The DictConfig stops here: the run hash and W&B's record of it; the levels read the typed `config`.
    with RunStore(cfg.store.root, cfg, prefix="imp") as store:
        exp = open_experiment(config, steps, datamodule, model, store, OmegaConf.to_container(cfg, resolve=True))
        rows = train_levels(exp, rates, output_name)
        close_experiment(exp, rows)
    return rows


def train_levels(exp: Experiment, rates: dict[str, float | None], output_name: str) -> list[dict[str, Any]]:
    """Train every level's plans in order; the summary rows: the levels', then their branches'."""
    mask = Mask.ones(exp.model, prunable_names(exp.model))
    level_rows, branch_rows = [], []
    config = exp.config
    for level in level_rounds(config.imp, config.pruning):
        work = level_work(exp, level, mask, rates, output_name)
        for plan in work.plans:
            exp.train(plan)
        mask = work.mask
        ticket_rows, rows = work.rows(exp)
        level_rows += ticket_rows
        branch_rows += rows
    if config.branch is not None and config.branch.name == "instability":
        branch_rows = run_instability([exp], lambda pairs: [e.train(plan) for e, plan in pairs])[0]
    return level_rows + branch_rows
