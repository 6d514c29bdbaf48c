"""The IMP job's boundary: each config group becomes its dataclass once (`IMPRunConfig`), the one level spec is
built from those, and the experiment the planner and the engines share holds no DictConfig (but its store's)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from helpers import TINY, make_config
from omegaconf import Container, OmegaConf

from lottery.imp.auto import resolve_auto
from lottery.imp.experiment import open_experiment, prepare
from lottery.imp.instability_schema import InstabilityConfig
from lottery.imp.schema import (
    BranchConfig,
    DataConfig,
    IMPConfig,
    IMPRunConfig,
    ModelConfig,
    PruningConfig,
    TrainerConfig,
    TrainingConfig,
    check_imp,
)
from lottery.tracking import RunStore
from lottery.training.spec import LevelSpec

GROUPS = {"model": ModelConfig, "data": DataConfig, "training": TrainingConfig, "pruning": PruningConfig,
          "imp": IMPConfig, "trainer": TrainerConfig}


def _containers(value: Any, depth: int = 0, seen: set[int] | None = None) -> list[str]:
    """Where an OmegaConf container hides in `value` (dataclasses, mappings, sequences, plain objects)."""
    seen = set() if seen is None else seen
    if id(value) in seen or depth > 4 or isinstance(value, (torch.Tensor, torch.nn.Module, str, bytes)):
        return []
    seen.add(id(value))
    if isinstance(value, Container):
        return [type(value).__name__]
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple, set)):
        items = list(enumerate(value))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    elif hasattr(value, "__dict__") and type(value).__module__.startswith("lottery"):
        items = list(vars(value).items())
    else:
        return []
    return [f"{key}.{where}" for key, item in items for where in _containers(item, depth + 1, seen)]


@pytest.mark.parametrize("overrides", [
    ["+exp=imp_lenet"],
    ["+exp=imp_resnet20", "+branch=random_reinit", "branch.levels=[1,2]", "+pruning.layer_rates.conv=0.3",
     "pruning.exclude=[fc]"],
    ["+exp=imp_lenet", "+branch=instability", "branch.rewind_to=[0,100]", "branch.seeds=[3,4]"],
])
def test_every_group_is_its_dataclass_with_the_composed_values(overrides: list[str]) -> None:
    cfg = make_config(overrides)
    config = IMPRunConfig.from_config(cfg)
    for name, schema in GROUPS.items():
        group = getattr(config, name)
        assert type(group) is schema
        assert dataclasses.asdict(group) == OmegaConf.to_container(cfg[name], resolve=True)
    branch = cfg.get("branch")
    if branch is None:
        assert config.branch is None
    else:
        assert type(config.branch) is (InstabilityConfig if branch.name == "instability" else BranchConfig)
        assert dataclasses.asdict(config.branch) == OmegaConf.to_container(branch, resolve=True)
    assert (config.name, config.seed, config.progress_bar) == (cfg.name, cfg.seed, cfg.progress_bar)
    assert dataclasses.asdict(config.store) == OmegaConf.to_container(cfg.store, resolve=True)
    assert config.data.root == cfg.data.root and "${" not in config.data.root  # interpolations resolved
    assert _containers(config) == []


def test_level_spec_takes_every_field_from_the_typed_groups() -> None:
    cfg = make_config(["+exp=imp_lenet", "training.lr=0.05", "training.momentum=0.5", "training.weight_decay=0.01",
                       "training.gamma=0.3", "training.eval_every=7", "training.checkpoint_every=11",
                       "training.milestones=[30,10]", "training.iterations=40", "training.engine=fabric",
                       "training.precision=bf16-mixed", "training.optimizer=sgd", "trainer=ddp_cpu",
                       "trainer.deterministic=false", "progress_bar=false"])
    config, steps = IMPRunConfig.from_config(cfg), check_imp(make_config(["+exp=imp_lenet",
                                                                          "training.milestones=[30,10]",
                                                                          "training.iterations=40"]))[1]
    spec = config.level_spec(steps, start_step=5)
    assert (spec.start_step, spec.iterations, spec.milestones) == (5, 40, (10, 30))
    # Every other field comes, by its name, from the training or trainer group or the root (read here from the
    # DictConfig): a field of LevelSpec that none of them has would fail here.
    for field in dataclasses.fields(LevelSpec):
        if field.name in ("start_step", "iterations", "milestones"):
            continue
        source = next(node for node in (cfg.training, cfg.trainer, cfg) if field.name in node)
        assert getattr(spec, field.name) == source[field.name], field.name


def test_the_experiment_the_engines_share_holds_no_dictconfig(tmp_path, mnist_root) -> None:
    cfg = resolve_auto(make_config([*TINY, "logger=none", f"store.root={tmp_path}", "+branch=random_reinit"])).cfg
    config, steps, datamodule, model, _, _ = prepare(cfg)
    with RunStore(cfg.store.root, cfg, prefix="imp") as store:
        exp = open_experiment(config, steps, datamodule, model, store, OmegaConf.to_container(cfg, resolve=True))
        assert exp.config is config and isinstance(exp.config.branch, BranchConfig)
        # The one composed config left is the run store's: it hashes it and writes config.yaml.
        assert _containers(exp) == ["store.cfg.DictConfig"]
