"""The number a hyperparameter sweep optimises, read back from a finished run in the store.

Default: validation accuracy at the early-stop iteration (never test accuracy: sweeps select on validation
data) of the main IMP level whose % of weights remaining is closest to a target. The target and the metric
come from the environment, so that they are not part of the run's config or hash; the sweep configs set them
(Optuna: `hydra.job.env_set` in conf/hydra/sweeper/imp_optuna.yaml; W&B: the sweep's `command`).

    LOTTERY_OBJECTIVE_REMAINING   target % of weights remaining (default: the sparsest level of the run)
    LOTTERY_OBJECTIVE_METRIC      a key of level_NN/metrics.json (default: early_stop_val_acc)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lottery.tracking.atomic import load_json
from lottery.tracking.store import config_hash

ENV_REMAINING = "LOTTERY_OBJECTIVE_REMAINING"
ENV_METRIC = "LOTTERY_OBJECTIVE_METRIC"
DEFAULT_METRIC = "early_stop_val_acc"


def objective_settings() -> tuple[float | None, str]:
    """(target % remaining or None for the sparsest level, metric) from the environment."""
    target = os.environ.get(ENV_REMAINING, "").strip()
    return (float(target) if target else None), os.environ.get(ENV_METRIC, "").strip() or DEFAULT_METRIC


def pick_level(levels: list[dict[str, Any]], percent_remaining: float | None) -> dict[str, Any]:
    """The level closest to `percent_remaining` (ties: the sparser one); the sparsest when it is None."""
    if percent_remaining is None:
        return min(levels, key=lambda m: m["percent_remaining"])
    return min(levels, key=lambda m: (abs(m["percent_remaining"] - percent_remaining), m["percent_remaining"]))


def objective_from_store(run_dir: Path, percent_remaining: float | None = None,
                         metric: str = DEFAULT_METRIC) -> float | None:
    """`metric` of the main level of the run in `run_dir` closest to `percent_remaining`; None if no level."""
    levels = [load_json(p) for p in sorted(Path(run_dir).glob("level_*/metrics.json"))]
    if not levels:
        return None
    value = pick_level(levels, percent_remaining).get(metric)
    return None if value is None else float(value)


def sweep_objective(cfg: Any, result: Any = None) -> float | None:
    """What `lottery.run.main` returns to a Hydra sweeper (Optuna maximises it); None for non-IMP jobs.

    `result` is the job's return value, unused: the run store, not the job's memory, is the source of truth.
    """
    if cfg.get("job") != "imp":
        return None
    target, metric = objective_settings()
    if not cfg.get("seeds"):
        return objective_from_store(Path(cfg.store.root) / f"imp_{config_hash(cfg)}", target, metric)
    # seeds=[...]: the mean over the seeds' runs, each addressed as if run with seed=s.
    values = []
    for seed in cfg.seeds:
        one = OmegaConf.to_container(cfg, resolve=True)
        one["seed"] = int(seed)
        value = objective_from_store(Path(cfg.store.root) / f"imp_{config_hash(one)}", target, metric)
        if value is not None:
            values.append(value)
    return sum(values) / len(values) if values else None
