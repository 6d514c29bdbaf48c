"""Entry point: compose the Hydra config, validate it, run the job.

    python -m lottery.run +exp=imp_lenet
    python -m lottery.run +exp=imp_lenet imp.levels=5 training.iterations=2000 seed=3

A bad config value ends the run before any work with one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lottery.config import ROOT_KEYS, check_job_keys, not_a_group, register_root_configs, validate_root
from lottery.errors import ConfigError, LotteryError
from lottery.imp.job import resolve as resolve_imp
from lottery.imp.job import run as run_imp
from lottery.imp.schema import GROUPS as IMP_GROUPS
from lottery.imp.schema import register_imp_configs, validate_imp
from lottery.llm.finetune import run as run_finetune
from lottery.llm.finetune_schema import GROUPS as FINETUNE_GROUPS
from lottery.llm.finetune_schema import register_finetune_configs, validate_finetune
from lottery.llm.job import run as run_oneshot
from lottery.llm.schema import GROUPS as ONESHOT_GROUPS
from lottery.llm.schema import register_oneshot_configs, validate_oneshot
from lottery.tracking.objective import sweep_objective

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
EXIT_BAD_INPUT = 2
log = logging.getLogger("lottery")


def _as_is(cfg: DictConfig) -> DictConfig:
    return cfg


class Job(NamedTuple):
    """A job: its config groups (selected with their defaults by conf/job/<job>.yaml), how its config is checked
    (before any run folder exists), how it runs, and how its `auto` settings become concrete before anything
    hashes the config (identity for jobs without any)."""

    groups: tuple[str, ...]
    validate: Callable[[DictConfig], Any]
    run: Callable[[DictConfig], Any]
    resolve: Callable[[DictConfig], DictConfig] = _as_is


# The config key `job`, which the job's file conf/job/<job>.yaml sets (`override /job: NAME` in an experiment),
# picks a row. A new job adds its file there, its row here and its groups' schema to register_configs.
JOBS: dict[str, Job] = {
    "imp": Job((*IMP_GROUPS, "branch"), validate_imp, run_imp, resolve_imp),  # +branch=NAME: optional
    "oneshot": Job(ONESHOT_GROUPS, validate_oneshot, run_oneshot),
    "finetune": Job(FINETUNE_GROUPS, validate_finetune, run_finetune),
}


def register_configs() -> None:
    """Register every job's schema so the conf/ files can inherit it through their defaults lists."""
    cs = ConfigStore.instance()
    register_root_configs(cs)
    register_imp_configs(cs)
    register_oneshot_configs(cs)
    register_finetune_configs(cs)


def job_of(cfg: DictConfig) -> Job:
    """The row of JOBS that `cfg.job` names; ConfigError naming the key if there is none, or if `cfg` sets a
    group that the job does not have (checked here, so a multirun, which skips `precheck`, refuses it too)."""
    if cfg.get("job") not in JOBS:
        raise ConfigError(f"job={cfg.get('job')!r} is not allowed; choose one of {', '.join(JOBS)}")
    job = JOBS[cfg.job]
    check_job_keys(cfg, cfg.job, job.groups)
    return job


def validate(cfg: DictConfig) -> Any:
    """Check the config of any job; raise ConfigError naming the key. Returns what the job's check returns."""
    job = job_of(cfg)
    validate_root(cfg)
    return job.validate(cfg)


register_configs()


def _one_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = text.split(" Config search path:")[0]  # Hydra's list of folders after an unknown group option
    return text.replace("Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", "").strip()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        job = job_of(cfg)
        cfg = job.resolve(cfg)  # the run folder and the sweep objective both hash the resolved config
        return sweep_objective(cfg, job.run(cfg))  # what a Hydra sweeper (Optuna) optimises
    except LotteryError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        remove_hydra_run_dir()
        sys.exit(EXIT_BAD_INPUT)


def remove_hydra_run_dir() -> None:
    """Delete the folder Hydra made for a single run that was refused (it holds only Hydra's copy of the command
    line and its log), and its parents (`<date>/`, `hydra/`, the store root) while they are empty. Sweeps keep
    theirs."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.RUN:
        return
    out = Path(HydraConfig.get().runtime.output_dir)
    logging.shutdown()  # close Hydra's log file in the folder before it goes
    shutil.rmtree(out, ignore_errors=True)
    for parent in list(out.parents)[:3]:  # <date>/, hydra/ and store.root: never above it
        try:
            parent.rmdir()
        except OSError:  # not empty (other runs) or already gone
            break


_HYDRA_FLAGS = ("-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion",
                "-cd", "--config-dir", "-cn", "--config-name", "-cp", "--config-path", "-p", "--package")


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def precheck(overrides: list[str]) -> str | None:
    """Compose and validate a single-run command line; return a one-line error or None.

    Runs before Hydra creates any output folder, so a bad command leaves nothing behind.
    """
    overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        validate(_compose(overrides))
    except LotteryError as err:
        return _one_line(err)
    except Exception as err:  # Hydra/OmegaConf composition errors: unknown group option, wrong type, bad syntax
        return _not_a_group_of_the_job(str(err), overrides) or _one_line(err)
    return None


# Hydra's words for a command-line override of a group (or key) that the composed config does not have.
_NOT_OVERRIDDEN = re.compile(r"Could not override '([^']+)'")


def _not_a_group_of_the_job(message: str, overrides: list[str]) -> str | None:
    """Hydra's "Could not override 'pruning'" for a command-line override of another job's group, said so:
    which job the command runs and its groups (Hydra's own hint, `+pruning=...`, is refused by job_of too).
    None for any other error, or when the command without that override does not compose either."""
    match = _NOT_OVERRIDDEN.match(message)
    if match is None:
        return None
    key = match.group(1)
    group = re.split(r"[./]", key)[0]
    given = [o for o in overrides if o.lstrip("+~").split("=")[0] == key]
    try:
        cfg = _compose([o for o in overrides if o not in given])
    except Exception:  # then Hydra's own message is the best there is
        return None
    job = JOBS.get(cfg.get("job"))
    if job is None or group in job.groups or group in ROOT_KEYS:
        return None
    return f"{given[0] if given else key}: {not_a_group(group, cfg.job, job.groups)}"


def cli() -> None:
    args = sys.argv[1:]
    if not any(a in _HYDRA_FLAGS or a.split("=")[0] in _HYDRA_FLAGS for a in args):
        problem = precheck(args)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
    main()


if __name__ == "__main__":
    cli()
