"""The shared root of every job's config: run name, seed(s), store, logger, progress bar, and which job runs.

Each job keeps its own config groups and their validation beside it (`lottery.imp.schema`,
`lottery.llm.schema`, `lottery.llm.finetune_schema`) and its group defaults in `conf/job/<job>.yaml`;
`lottery.run` holds the table of jobs. This module knows no job, so every layer can import it. It also holds
the small checks that the jobs' validations share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lottery.errors import ConfigError

LOGGERS = ("wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")
ON_CORRUPT = ("error", "redo")


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
class RootConfig:
    """The keys every job shares (conf/config.yaml). A job's groups (conf/job/<job>.yaml) sit beside these at the
    top level of the composed config; `job` is set by the job's file."""

    job: str = "imp"
    name: str = "custom"
    seed: int = 0
    # The runs of these seeds (each its own run folder, as if run with seed=s); null: just `seed`.
    seeds: list[int] | None = None
    progress_bar: bool = True
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)


ROOT_KEYS = tuple(f.name for f in fields(RootConfig))
SHARED_GROUPS = ("logger",)  # the config groups of conf/config.yaml's own defaults list, beside `job`


def register_root_configs(cs: ConfigStore) -> None:
    """Register the schema of the shared groups, which the conf/logger files inherit."""
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """ConfigError naming `key` and the allowed values unless `value` is one of them."""
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")


def check_positive(key: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{key}={value} must be a positive integer")


def check_writable(key: str, folder: str) -> None:
    """The folder, or the nearest existing folder above it, must be a writable directory."""
    path = Path(folder).absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir() or not os.access(path, os.W_OK):
        raise ConfigError(f"{key}={folder} cannot be created: {path} is not a writable folder")


def validate_root(cfg: DictConfig) -> RootConfig:
    """Check the shared keys of any job's config (types, choices, a writable store); return them typed."""
    try:
        root = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RootConfig),
                                                   {k: cfg[k] for k in ROOT_KEYS if k in cfg}))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(f"{key}: {str(err).splitlines()[0]}") from None
    check_choice("logger.name", root.logger.name, LOGGERS)
    check_choice("logger.mode", root.logger.mode, WANDB_MODES)
    check_choice("store.on_corrupt", root.store.on_corrupt, ON_CORRUPT)
    check_writable("store.root", root.store.root)
    return root


def check_job_keys(cfg: DictConfig, job: str, groups: tuple[str, ...]) -> None:
    """ConfigError for a top-level key that is neither shared nor one of `job`'s config groups, unless it is
    null (conf/job/ keeps some such null keys, which run hashes include): a group of another job appended with
    `+group=option` would otherwise ride along unread, and move the run's hash."""
    for key in cfg:
        if key in ROOT_KEYS or key in groups or key == "hydra" or cfg.get(key) is None:
            continue
        raise ConfigError(f"{not_a_group(key, job, groups)}; drop the {key} override")


def not_a_group(key: str, job: str, groups: tuple[str, ...]) -> str:
    """The words for `key` not being one of `job`'s config groups, naming those and the shared ones."""
    return (f"{key} is not a config group of the {job} job (its groups: {', '.join(groups)}; shared: "
            f"{', '.join(SHARED_GROUPS)})")
