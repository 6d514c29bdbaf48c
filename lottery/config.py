"""Structured-config schema: the types and defaults of every config group, and semantic validation.

Hydra merges the YAML files in conf/ onto these dataclasses, so a wrong type fails at composition
time; `validate` then checks ranges and cross-field rules and raises `ConfigError` naming the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from lottery.errors import ConfigError
from lottery.schedule import parse_step

JOBS = ("imp", "oneshot")
PRUNING_STRATEGIES = ("layerwise", "global")
REWIND_MODES = ("init", "iteration", "epoch", "lr", "finetune")
STRUCTURED_PATTERNS = ("neurons", "filters", "channels", "channel_groups")
NORMS = ("l1", "l2")
BRANCHES = ("random_reinit", "random_prune", "retrain")
OPTIMIZERS = ("adam", "sgd")
# How a level is trained: Lightning's Trainer; Lightning Fabric (same results, less per-step overhead); or
# batched: every seed's level and control branch at once as vmapped replicates (lottery.imp.batched).
ENGINES = ("trainer", "fabric", "batched")
LOGGERS = ("wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")


def default_data_root() -> str:
    """LOTTERY_DATA if set, else a per-user cache folder (XDG_CACHE_HOME or ~/.cache)."""
    if os.environ.get("LOTTERY_DATA"):
        return os.environ["LOTTERY_DATA"]
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(cache) / "lottery" / "data")


def default_store_root() -> str:
    """LOTTERY_RUNS if set, else ./runs in the current directory."""
    return os.environ.get("LOTTERY_RUNS") or str(Path.cwd() / "runs")


if not OmegaConf.has_resolver("lottery_data_root"):
    OmegaConf.register_new_resolver("lottery_data_root", default_data_root)
    OmegaConf.register_new_resolver("lottery_store_root", default_store_root)


@dataclass
class ModelConfig:
    name: str = "lenet_300_100"
    init: str = "glorot_normal"


@dataclass
class DataConfig:
    name: str = "mnist"
    root: str = "${lottery_data_root:}"
    download: bool = True
    val_size: int = 5000
    split_seed: int = 0
    train_subset: int | None = None  # use only the first N training examples (after the split)
    eval_subset: int | None = None  # use only the first N validation and test examples
    augment: bool = False  # random crop (padding 4) + horizontal flip of training batches


@dataclass
class TrainingConfig:
    optimizer: str = "adam"
    lr: float = 1.2e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 60
    iterations: str = "50000"  # a step: "50000", "50000it" or "55ep"
    milestones: list[str] = field(default_factory=list)  # steps at which the lr is multiplied by gamma
    gamma: float = 0.1
    eval_every: int = 100
    checkpoint_every: int = 1000
    engine: str = "trainer"  # trainer | fabric | batched (see ENGINES)
    cuda_graph: bool = True  # engine=batched on a GPU: capture the training step in a CUDA graph


@dataclass
class PruningConfig:
    strategy: str = "layerwise"
    rate: float = 0.2
    output_rate: float | None = 0.1
    layer_rates: dict[str, float] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    pattern: str = "unstructured"  # unstructured | neurons | filters | channels | channel_groups | N:M ("2:4")
    norm: str = "l1"  # unit score of structured patterns: l1 | l2


@dataclass
class IMPConfig:
    levels: int = 19
    rewind: str = "init"
    rewind_to: str = "0"
    oneshot: bool = False  # prune straight to the sparsity of `levels` rounds after one training


@dataclass
class BranchConfig:
    name: str = "random_reinit"
    seed: int | None = None  # null: the run's seed + 1000, so a branch never reuses the ticket's randomness
    levels: list[int] | None = None  # which IMP levels get the branch; null = every pruned level


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"  # "ddp" for data parallelism over `devices` processes
    num_nodes: int = 1
    deterministic: bool = True


@dataclass
class LoggerConfig:
    name: str = "wandb"
    mode: str = "offline"
    project: str = "lottery"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 30.0  # seconds to wait for W&B to start a run before falling back to offline


@dataclass
class StoreConfig:
    root: str = "${lottery_store_root:}"
    on_corrupt: str = "error"  # error | redo: delete the level (or file) a corrupt file belongs to and redo it


@dataclass
class Config:
    """The root. Job-specific groups are typed by the schema their group files inherit (e.g. `model_schema`),
    so one root serves every job: an IMP run fills model/data/training/pruning/imp, others fill their own."""

    job: str = "imp"
    name: str = "custom"
    seed: int = 0
    # IMP: the runs of these seeds (each its own run folder, as if run with seed=s); training.engine=batched
    # trains them together. null: just `seed`.
    seeds: list[int] | None = None
    progress_bar: bool = True
    model: Any = None
    data: Any = None
    training: Any = None
    pruning: Any = None
    imp: Any = None
    trainer: Any = None
    logger: LoggerConfig = MISSING
    store: StoreConfig = field(default_factory=StoreConfig)
    branch: Any = None


def register_configs() -> None:
    """Register the schema so conf/ files can inherit it through their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, node in [
        ("model", ModelConfig),
        ("data", DataConfig),
        ("training", TrainingConfig),
        ("pruning", PruningConfig),
        ("imp", IMPConfig),
        ("trainer", TrainerConfig),
        ("logger", LoggerConfig),
        ("branch", BranchConfig),
    ]:
        cs.store(group=group, name=f"{group}_schema", node=node)
    from lottery.llm.schema import register_oneshot_configs  # imports this module: keep it local

    register_oneshot_configs()


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")


def _rate(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}={value} is out of range; a pruning rate must be in [0, 1)")


def parse_nm(pattern: str) -> tuple[int, int] | None:
    """(n, m) for an "N:M" pattern string, None for any other pattern."""
    if ":" not in pattern:
        return None
    try:
        n, m = (int(part) for part in pattern.split(":"))
    except ValueError:
        raise ConfigError(f"pruning.pattern={pattern!r}: write N:M patterns as two integers, e.g. 2:4") from None
    if not 1 <= n <= m:
        raise ConfigError(f"pruning.pattern={pattern!r}: N:M needs 1 <= N <= M")
    return n, m


def _positive(key: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{key}={value} must be a positive integer")


@dataclass(frozen=True)
class Steps:
    """Training-time points of an IMP run, in iterations."""

    steps_per_epoch: int
    iterations: int
    rewind: int
    milestones: tuple[int, ...]


def resolve_steps(cfg: DictConfig) -> Steps:
    """Turn the step-valued config fields ("500", "2ep") into iterations, using the dataset's epoch length."""
    from lottery.data import DATASETS

    info = DATASETS[cfg.data.name]
    num_train = info.num_train - cfg.data.val_size
    if cfg.data.train_subset:
        num_train = min(num_train, cfg.data.train_subset)
    spe = num_train // cfg.training.batch_size
    if spe < 1:
        raise ConfigError(f"training.batch_size={cfg.training.batch_size} exceeds the {num_train} training examples")
    iterations = parse_step(cfg.training.iterations, spe)
    if iterations < 1:
        raise ConfigError(f"training.iterations={cfg.training.iterations!r} must be at least one iteration")
    if cfg.imp.rewind in ("init", "lr", "finetune"):
        rewind = 0
    elif cfg.imp.rewind == "epoch":
        rewind = int(cfg.imp.rewind_to) * spe
    else:
        rewind = parse_step(cfg.imp.rewind_to, spe)
    if rewind >= iterations:
        raise ConfigError(f"imp.rewind_to={cfg.imp.rewind_to!r} is iteration {rewind}, not before the end of "
                          f"training at iteration {iterations}; choose a rewind point below training.iterations")
    milestones = tuple(sorted(parse_step(m, spe) for m in cfg.training.milestones))
    return Steps(spe, iterations, rewind, milestones)


def validate(cfg: DictConfig) -> Any:
    """Check the config of any job; raise ConfigError naming the key. Returns what the job's check returns."""
    _choice("job", cfg.job, JOBS)
    _choice("logger.name", cfg.logger.name, LOGGERS)
    _choice("logger.mode", cfg.logger.mode, WANDB_MODES)
    _choice("store.on_corrupt", cfg.store.on_corrupt, ("error", "redo"))
    _check_writable("store.root", cfg.store.root)
    if cfg.job == "oneshot":
        from lottery.llm.schema import validate_oneshot

        return validate_oneshot(cfg)
    return validate_imp(cfg)


def _check_writable(key: str, folder: str) -> None:
    """The folder, or the nearest existing folder above it, must be a writable directory."""
    path = Path(folder).absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir() or not os.access(path, os.W_OK):
        raise ConfigError(f"{key}={folder} cannot be created: {path} is not a writable folder")


def validate_imp(cfg: DictConfig) -> Steps:
    """Check ranges and cross-field rules of an IMP run that the types alone cannot express; return its steps."""
    from lottery.data import DATASETS
    from lottery.models import MODELS

    for group in ("model", "data", "training", "pruning", "imp", "trainer"):
        if cfg.get(group) is None:
            raise ConfigError(f"{group} is not set; an IMP run needs the {group} config group")
    if cfg.model.name not in MODELS:
        raise ConfigError(f"model.name={cfg.model.name!r} is unknown; choose one of {', '.join(sorted(MODELS))}")
    _choice("data.name", cfg.data.name, tuple(sorted(DATASETS)))
    _choice("training.optimizer", cfg.training.optimizer, OPTIMIZERS)
    _choice("training.engine", cfg.training.get("engine", "trainer"), ENGINES)
    _choice("pruning.strategy", cfg.pruning.strategy, PRUNING_STRATEGIES)
    _choice("imp.rewind", cfg.imp.rewind, REWIND_MODES)

    if cfg.training.lr <= 0:
        raise ConfigError(f"training.lr={cfg.training.lr} must be > 0")
    if cfg.training.weight_decay < 0 or not 0 <= cfg.training.momentum < 1:
        raise ConfigError("training.weight_decay must be >= 0 and training.momentum in [0, 1)")
    for key in ("batch_size", "eval_every", "checkpoint_every"):
        _positive(f"training.{key}", cfg.training[key])
    _positive("trainer.devices", cfg.trainer.devices)
    _positive("trainer.num_nodes", cfg.trainer.num_nodes)
    processes = cfg.trainer.devices * cfg.trainer.num_nodes
    if cfg.training.batch_size % processes:
        raise ConfigError(f"training.batch_size={cfg.training.batch_size} must be divisible by the {processes} "
                          "training processes (trainer.devices × trainer.num_nodes)")
    engine = cfg.training.get("engine", "trainer")
    if engine in ("fabric", "batched") and (processes > 1 or cfg.trainer.strategy not in ("auto", "single_device")):
        raise ConfigError(f"training.engine={engine} trains on one device, not {processes} processes "
                          f"(trainer.strategy={cfg.trainer.strategy}); use training.engine=trainer for DDP")
    seeds = cfg.get("seeds")
    if seeds is not None:
        if len(seeds) == 0 or len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds={list(seeds)} must be a non-empty list of distinct seeds")
        if cfg.get("branch") is not None and cfg.branch.seed is not None and cfg.branch.seed in seeds:
            raise ConfigError(f"branch.seed={cfg.branch.seed} is one of seeds; a control branch needs other "
                              "randomness than the tickets (leave branch.seed unset for seed + 1000)")
    if cfg.data.val_size < 0:
        raise ConfigError(f"data.val_size={cfg.data.val_size} must be >= 0")
    for key in ("train_subset", "eval_subset"):
        if cfg.data[key] is not None:
            _positive(f"data.{key}", cfg.data[key])
    if cfg.imp.levels < 0:
        raise ConfigError(f"imp.levels={cfg.imp.levels} must be >= 0")

    if parse_nm(cfg.pruning.pattern) is None:
        _choice("pruning.pattern", cfg.pruning.pattern, ("unstructured", *STRUCTURED_PATTERNS, "N:M (e.g. 2:4)"))
    _choice("pruning.norm", cfg.pruning.norm, NORMS)
    if cfg.pruning.pattern in STRUCTURED_PATTERNS and cfg.pruning.strategy != "layerwise":
        raise ConfigError(f"pruning.pattern={cfg.pruning.pattern} removes whole units per layer; "
                          "use pruning.strategy=layerwise (pruning=layerwise)")
    if cfg.get("branch") is not None:
        _choice("branch.name", cfg.branch.name, BRANCHES)
        if cfg.branch.seed is not None and cfg.branch.seed == cfg.seed:
            raise ConfigError(f"branch.seed={cfg.branch.seed} equals seed; a control branch needs other randomness "
                              "than the ticket (leave branch.seed unset for seed + 1000)")
        for level in cfg.branch.levels or []:
            if not 1 <= level <= cfg.imp.levels:
                raise ConfigError(f"branch.levels entry {level} is not a pruned level (1..{cfg.imp.levels})")
    _rate("pruning.rate", cfg.pruning.rate)
    if cfg.pruning.output_rate is not None:
        _rate("pruning.output_rate", cfg.pruning.output_rate)
    for name, rate in cfg.pruning.layer_rates.items():
        _rate(f"pruning.layer_rates.{name}", rate)

    # Steps are checked here with a nominal epoch length; the job re-checks with the real one.
    for key, text in [("training.iterations", cfg.training.iterations), ("imp.rewind_to", cfg.imp.rewind_to)]:
        try:
            parse_step(str(text), steps_per_epoch=1)
        except ValueError as err:
            raise ConfigError(f"{key}={text!r}: {err}") from None
    for text in cfg.training.milestones:
        try:
            parse_step(str(text), steps_per_epoch=1)
        except ValueError as err:
            raise ConfigError(f"training.milestones entry {text!r}: {err}") from None
    if cfg.imp.rewind == "epoch" and not str(cfg.imp.rewind_to).isdigit():
        raise ConfigError(f"imp.rewind_to={cfg.imp.rewind_to!r}: with imp.rewind=epoch give a whole number of epochs")
    if cfg.data.val_size >= DATASETS[cfg.data.name].num_train:
        raise ConfigError(f"data.val_size={cfg.data.val_size} leaves no training examples")
    return resolve_steps(cfg)
