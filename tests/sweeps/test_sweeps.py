"""Sweep configs: W&B sweep files parse and their commands compose; Hydra sweeper/launcher configs compose;
a tiny Hydra multirun (2 x 2) runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import CONF_DIR, REPO, make_config
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lottery.imp.experiment import level_metrics
from lottery.pruning import Mask
from lottery.run import validate

SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
TUNED = {"pruning.rate", "imp.rewind_to", "training.lr", "seed"}  # what the issue asks the sweeps to cover


def _samples(spec: dict) -> list:
    """Values a W&B sweep parameter can take: its value(s), or the ends of its distribution."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    return [spec["min"], spec["max"]]


def _overrides(command: list[str], params: dict) -> list[str]:
    """The Hydra overrides `wandb agent` passes to lottery.run: the literal ones, then ${args_no_hyphens}."""
    module = command.index("lottery.run")
    assert command[module - 2: module] == ["${interpreter}", "-m"]
    args = command[module + 1:]
    assert args[-1] == "${args_no_hyphens}" and "+exp=imp_lenet" in args[:-1]
    return [*args[:-1], *(f"{k}={v}" for k, v in params.items())]


def test_sweeps_cover_the_imp_hyperparameters() -> None:
    covered = set()
    for path in SWEEPS:
        covered |= set(yaml.safe_load(path.read_text())["parameters"])
    assert TUNED <= covered


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_wandb_sweep_parses_and_every_sample_composes(path: Path) -> None:
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"] == {"name": "objective", "goal": "maximize"}  # what the summary run logs
    command = sweep["command"]
    assert command[0] == "${env}"
    for assignment in command[1:command.index("${interpreter}")]:  # env VAR=value: the objective's settings
        key, _, value = assignment.partition("=")
        assert key in ("LOTTERY_OBJECTIVE_REMAINING", "LOTTERY_OBJECTIVE_METRIC") and value
    params = sweep["parameters"]
    # Each value of each parameter in turn, the others at their first sample.
    base = {k: _samples(v)[0] for k, v in params.items()}
    for key, spec in params.items():
        for value in _samples(spec):
            overrides = _overrides(sweep["command"], {**base, key: value})
            cfg = make_config(overrides)
            validate(cfg)
            assert OmegaConf.select(cfg, key) == pytest.approx(type(OmegaConf.select(cfg, key))(value))


def _compose_hydra(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=["+exp=imp_lenet", *overrides], return_hydra_config=True)


def test_optuna_sweeper_config_composes_and_searches_real_keys() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = _compose_hydra("hydra/sweeper=imp_optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key
    assert float(cfg.hydra.job.env_set.LOTTERY_OBJECTIVE_REMAINING) > 0
    # The objective's metric is a key of the per-level record (level_NN/metrics.json).
    mask = Mask({"w": torch.ones(2, dtype=torch.bool)})
    assert cfg.hydra.job.env_set.LOTTERY_OBJECTIVE_METRIC in level_metrics(0, mask, [], 0, 1, 0.0)
    assert cfg.model.name == "lenet_300_100"  # the sweeper file changes nothing outside hydra


def test_slurm_launcher_config_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    launcher = _compose_hydra("hydra/launcher=slurm").hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.submitit_folder.endswith("/.submitit/%j")


TINY_RUN = ["imp.levels=0", "data.train_subset=600", "data.eval_subset=200", "training.iterations=10",
            "training.eval_every=10", "progress_bar=false", "logger=none"]


def _lottery_run(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lottery.run", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_hydra_multirun_2x2(tmp_path: Path, mnist_root: Path) -> None:
    proc = _lottery_run(tmp_path, "-m", "+exp=imp_lenet", "seed=0,1", "imp.rewind=init,lr", *TINY_RUN)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted((tmp_path / "runs").glob("imp_*"))
    assert len(runs) == 4
    seen = set()
    for run in runs:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        seen.add((cfg["seed"], cfg["imp"]["rewind"]))
        metrics = json.loads((run / "level_00" / "metrics.json").read_text())
        assert [h["iteration"] for h in metrics["history"]] == [10]
    assert seen == {(0, "init"), (0, "lr"), (1, "init"), (1, "lr")}
    assert len(list((tmp_path / "runs" / "hydra" / "multirun").glob("*/*/[0-3]"))) == 4  # Hydra's job folders


@pytest.mark.slow
def test_optuna_sweep_maximises_the_store_objective(tmp_path: Path, mnist_root: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = _lottery_run(tmp_path, "-m", "+exp=imp_lenet", "imp.rewind=iteration", "hydra/sweeper=imp_optuna",
                        "hydra.sweeper.n_trials=3", "imp.rewind_to=choice(5,10)",
                        'hydra.job.env_set.LOTTERY_OBJECTIVE_REMAINING="80"',
                        *[o for o in TINY_RUN if o != "imp.levels=0"], "imp.levels=1", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result,) = (tmp_path / "runs" / "hydra" / "multirun").glob("*/*/optimization_results.yaml")
    best = yaml.safe_load(result.read_text())["best_value"]
    values = []
    for run in (tmp_path / "runs").glob("imp_*"):
        levels = [json.loads(p.read_text()) for p in sorted(run.glob("level_*/metrics.json"))]
        closest = min(levels, key=lambda m: abs(m["percent_remaining"] - 80))
        values.append(closest["early_stop_val_acc"])
    assert best == pytest.approx(max(values))
