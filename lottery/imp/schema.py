"""Config schema of the IMP job (`job: imp`): the types and defaults of its groups, and their validation.

Hydra merges the YAML files in conf/ onto these dataclasses, so a wrong type fails at composition time;
`validate_imp` then checks ranges and cross-field rules and raises `ConfigError` naming the key.
`check_imp` is the job's boundary: it validates a composed config and turns each group into its dataclass
once (`IMPRunConfig`), which is all the experiment, the planner and the engines read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from lottery.config import LoggerConfig, StoreConfig, check_choice, check_positive
from lottery.data import DATASETS
from lottery.errors import ConfigError
from lottery.imp.branches import BRANCHES
from lottery.imp.instability_schema import ANALYSES, InstabilityConfig, validate_instability
from lottery.imp.masks import PATTERNS, UNIT_PATTERNS
from lottery.imp.rewind import REWIND_MODES
from lottery.models import MODELS
from lottery.pruning.nm import parse_nm
from lottery.pruning.scores import validate_score
from lottery.pruning.structured import NORMS
from lottery.schedule import parse_step
from lottery.training.optim import OPTIMIZERS
from lottery.training.spec import LevelSpec

# The choices below are read from the registries that implement them: branch kinds (lottery.imp.branches),
# rewind modes (lottery.imp.rewind), pruning patterns (lottery.imp.masks), optimizers (lottery.training.optim).
PRUNING_STRATEGIES = ("layerwise", "global")
# How a level is trained: Lightning's Trainer; Lightning Fabric (same results, less per-step overhead); or
# batched: every seed's level and control branch at once as vmapped replicates (lottery.imp.batched).
# auto (the default) picks one of them before the config is hashed (lottery.imp.auto).
ENGINES = ("auto", "trainer", "fabric", "batched")
# Lightning's precision spellings; every engine supports them. 32-true is bitwise reproducible.
PRECISIONS = ("32-true", "bf16-mixed")
GROUPS = ("model", "data", "training", "pruning", "imp", "trainer")


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
    engine: str = "auto"  # auto | trainer | fabric | batched (see ENGINES)
    precision: str = "32-true"  # 32-true | bf16-mixed (see PRECISIONS)
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
    # Per-weight score (lottery.pruning.scores.SCORES): magnitude | taylor1 | obd | snip | grasp | synflow | random
    score: str = "magnitude"
    score_batches: int = 10  # training batches a data-reading score uses (the run's own seeded stream)
    synflow_rounds: int = 100
    # auto: with imp.oneshot=true an at-init score (snip, grasp, synflow) prunes θ0 before training, every other
    # score prunes after it; init / trained force one or the other (init needs imp.oneshot=true).
    prune_at: str = "auto"


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
    accelerator: str = "auto"  # auto: gpu when CUDA is visible, else cpu (resolved before hashing)
    devices: int = 1
    strategy: str = "auto"  # "ddp" for data parallelism over `devices` processes
    num_nodes: int = 1
    deterministic: bool = True


@dataclass(frozen=True)
class Steps:
    """Training-time points of an IMP run, in iterations."""

    steps_per_epoch: int
    iterations: int
    rewind: int
    milestones: tuple[int, ...]


def _typed(schema: type, node: Any) -> Any:
    """`node` (a config group) as an instance of its dataclass `schema`, interpolations resolved: as composed
    when Hydra typed it already, else merged onto the schema's defaults."""
    if OmegaConf.get_type(node) is not schema:
        node = OmegaConf.merge(OmegaConf.structured(schema), node)
    return OmegaConf.to_object(node)


@dataclass(frozen=True)
class IMPRunConfig:
    """One IMP run's config, each group turned into its dataclass once (`from_config`): what the experiment,
    the planner and the engines read. The run hash and W&B's record stay the composed DictConfig's."""

    name: str
    seed: int
    progress_bar: bool
    model: ModelConfig
    data: DataConfig
    training: TrainingConfig
    pruning: PruningConfig
    imp: IMPConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    store: StoreConfig
    branch: BranchConfig | InstabilityConfig | None = None  # a control branch or an analysis; None: neither

    @classmethod
    def from_config(cls, cfg: DictConfig) -> IMPRunConfig:
        """The typed groups of one run's composed config (`seed` set: one config of `seeds` each)."""
        branch = cfg.get("branch")
        if branch is not None:
            schema = OmegaConf.get_type(branch)
            if schema not in (BranchConfig, InstabilityConfig):
                schema = InstabilityConfig if branch.name in ANALYSES else BranchConfig
            branch = _typed(schema, branch)
        return cls(name=cfg.name, seed=cfg.seed, progress_bar=cfg.progress_bar, model=_typed(ModelConfig, cfg.model),
                   data=_typed(DataConfig, cfg.data), training=_typed(TrainingConfig, cfg.training),
                   pruning=_typed(PruningConfig, cfg.pruning), imp=_typed(IMPConfig, cfg.imp),
                   trainer=_typed(TrainerConfig, cfg.trainer), logger=_typed(LoggerConfig, cfg.logger),
                   store=_typed(StoreConfig, cfg.store), branch=branch)

    def level_spec(self, steps: Steps, start_step: int) -> LevelSpec:
        """The training spec of a level starting at `start_step`, the one every engine trains by (a rewind
        mode's schedule, `lottery.imp.rewind.level_schedule`, adjusts it afterwards)."""
        t, tr = self.training, self.trainer
        return LevelSpec(start_step=start_step, iterations=steps.iterations, optimizer=t.optimizer, lr=t.lr,
                         momentum=t.momentum, weight_decay=t.weight_decay, milestones=steps.milestones,
                         gamma=t.gamma, eval_every=t.eval_every, checkpoint_every=t.checkpoint_every,
                         accelerator=tr.accelerator, devices=tr.devices, strategy=tr.strategy,
                         num_nodes=tr.num_nodes, deterministic=tr.deterministic, progress_bar=self.progress_bar,
                         engine=t.engine, precision=t.precision, batch_size=t.batch_size,
                         cuda_graph=t.cuda_graph)


def register_imp_configs(cs: ConfigStore) -> None:
    """Register the schema of the IMP groups, which their conf/ files inherit through their defaults lists."""
    for group, node in [
        ("model", ModelConfig),
        ("data", DataConfig),
        ("training", TrainingConfig),
        ("pruning", PruningConfig),
        ("imp", IMPConfig),
        ("trainer", TrainerConfig),
        ("branch", BranchConfig),
    ]:
        cs.store(group=group, name=f"{group}_schema", node=node)
    cs.store(group="branch", name="instability_schema", node=InstabilityConfig)


def _rate(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}={value} is out of range; a pruning rate must be in [0, 1)")


def resolve_steps(config: IMPRunConfig) -> Steps:
    """Turn the step-valued config fields ("500", "2ep") into iterations, using the dataset's epoch length."""
    data, training, imp = config.data, config.training, config.imp
    info = DATASETS[data.name]
    num_train = info.num_train - data.val_size
    if data.train_subset:
        num_train = min(num_train, data.train_subset)
    spe = num_train // training.batch_size
    if spe < 1:
        raise ConfigError(f"training.batch_size={training.batch_size} exceeds the {num_train} training examples")
    iterations = parse_step(training.iterations, spe)
    if iterations < 1:
        raise ConfigError(f"training.iterations={training.iterations!r} must be at least one iteration")
    rewind = REWIND_MODES[imp.rewind].point(imp.rewind_to, spe)
    if rewind >= iterations:
        raise ConfigError(f"imp.rewind_to={imp.rewind_to!r} is iteration {rewind}, not before the end of "
                          f"training at iteration {iterations}; choose a rewind point below training.iterations")
    milestones = tuple(sorted(parse_step(m, spe) for m in training.milestones))
    return Steps(spe, iterations, rewind, milestones)


def validate_imp(cfg: DictConfig) -> Steps:
    """Check ranges and cross-field rules of an IMP run that the types alone cannot express; return its steps."""
    return check_imp(cfg)[1]


def check_imp(cfg: DictConfig) -> tuple[IMPRunConfig, Steps]:
    """Validate an IMP run's composed config (ConfigError naming the key) and return it typed, with its steps:
    the job's boundary, after which nothing reads the DictConfig but the run hash and W&B's record of it."""
    for group in GROUPS:
        if cfg.get(group) is None:
            raise ConfigError(f"{group} is not set; an IMP run needs the {group} config group")
    if cfg.model.name not in MODELS:
        raise ConfigError(f"model.name={cfg.model.name!r} is unknown; choose one of {', '.join(sorted(MODELS))}")
    check_choice("data.name", cfg.data.name, tuple(sorted(DATASETS)))
    check_choice("training.optimizer", cfg.training.optimizer, tuple(OPTIMIZERS))
    check_choice("training.engine", cfg.training.get("engine", "trainer"), ENGINES)
    check_choice("training.precision", cfg.training.get("precision", "32-true"), PRECISIONS)
    check_choice("pruning.strategy", cfg.pruning.strategy, PRUNING_STRATEGIES)
    check_choice("imp.rewind", cfg.imp.rewind, tuple(REWIND_MODES))

    if cfg.training.lr <= 0:
        raise ConfigError(f"training.lr={cfg.training.lr} must be > 0")
    if cfg.training.weight_decay < 0 or not 0 <= cfg.training.momentum < 1:
        raise ConfigError("training.weight_decay must be >= 0 and training.momentum in [0, 1)")
    for key in ("batch_size", "eval_every", "checkpoint_every"):
        check_positive(f"training.{key}", cfg.training[key])
    check_positive("trainer.devices", cfg.trainer.devices)
    check_positive("trainer.num_nodes", cfg.trainer.num_nodes)
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
            check_positive(f"data.{key}", cfg.data[key])
    if cfg.imp.levels < 0:
        raise ConfigError(f"imp.levels={cfg.imp.levels} must be >= 0")

    if parse_nm(cfg.pruning.pattern) is None:
        check_choice("pruning.pattern", cfg.pruning.pattern, (*PATTERNS, "N:M (e.g. 2:4)"))
    check_choice("pruning.norm", cfg.pruning.norm, tuple(NORMS))
    if cfg.pruning.pattern in UNIT_PATTERNS and cfg.pruning.strategy != "layerwise":
        raise ConfigError(f"pruning.pattern={cfg.pruning.pattern} removes whole units per layer; "
                          "use pruning.strategy=layerwise (pruning=layerwise)")
    if cfg.get("branch") is not None:
        check_choice("branch.name", cfg.branch.name, (*BRANCHES, *ANALYSES))
        if cfg.branch.seed is not None and cfg.branch.seed == cfg.seed:
            raise ConfigError(f"branch.seed={cfg.branch.seed} equals seed; a control branch needs other randomness "
                              "than the ticket (leave branch.seed unset for seed + 1000)")
        pruned_only = cfg.branch.name not in ANALYSES  # an analysis may also look at the dense level 0
        for level in (cfg.branch.levels or []) if pruned_only else []:
            if not 1 <= level <= cfg.imp.levels:
                raise ConfigError(f"branch.levels entry {level} is not a pruned level (1..{cfg.imp.levels})")
    p = cfg.pruning
    validate_score(p.get("score", "magnitude"), p.get("score_batches", 10), p.get("synflow_rounds", 100),
                   p.get("prune_at", "auto"), cfg.imp.oneshot, cfg.imp.rewind, p.pattern, p.norm)
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
    config = IMPRunConfig.from_config(cfg)
    steps = resolve_steps(config)
    if config.branch is not None and config.branch.name == "instability":
        validate_instability(config.branch, config.imp.levels, config.imp.oneshot, config.imp.rewind, steps)
    return config, steps
