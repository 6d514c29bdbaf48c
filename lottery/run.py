"""Entry point: compose the Hydra config, validate it, run the job.

    python -m lottery.run +exp=imp_lenet
    python -m lottery.run +exp=imp_lenet imp.levels=5 training.iterations=2000 seed=3

A bad config value ends the run before any work with one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
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

from lottery.config import register_root_configs, validate_root
from lottery.errors import ConfigError, LotteryError
from lottery.imp.job import resolve as resolve_imp
from lottery.imp.job import run as run_imp
from lottery.imp.schema import register_imp_configs, validate_imp
from lottery.llm.finetune import run as run_finetune
from lottery.llm.finetune_schema import register_finetune_configs, validate_finetune
from lottery.llm.job import run as run_oneshot
from lottery.llm.schema import register_oneshot_configs, validate_oneshot
from lottery.tracking.objective import sweep_objective

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
EXIT_BAD_INPUT = 2
log = logging.getLogger("lottery")


def _as_is(cfg: DictConfig) -> DictConfig:
    return cfg


class Job(NamedTuple):
    """A job: how its config is checked (before any run folder exists), how it runs, and how its `auto`
    settings become concrete before anything hashes the config (identity for jobs without any)."""

    validate: Callable[[DictConfig], Any]
    run: Callable[[DictConfig], Any]
    resolve: Callable[[DictConfig], DictConfig] = _as_is


# The config key `job` picks a row. A new job adds its row here and its groups' schema to register_configs.
JOBS: dict[str, Job] = {
    "imp": Job(validate_imp, run_imp, resolve_imp),
    "oneshot": Job(validate_oneshot, run_oneshot),
    "finetune": Job(validate_finetune, run_finetune),
}


def register_configs() -> None:
    """Register every job's schema so the conf/ files can inherit it through their defaults lists."""
    cs = ConfigStore.instance()
    register_root_configs(cs)
    register_imp_configs(cs)
    register_oneshot_configs(cs)
    register_finetune_configs(cs)


def job_of(cfg: DictConfig) -> Job:
    """The row of JOBS that `cfg.job` names; ConfigError naming the key otherwise."""
    if cfg.get("job") not in JOBS:
        raise ConfigError(f"job={cfg.get('job')!r} is not allowed; choose one of {', '.join(JOBS)}")
    return JOBS[cfg.job]


def validate(cfg: DictConfig) -> Any:
    """Check the config of any job; raise ConfigError naming the key. Returns what the job's check returns."""
    job = job_of(cfg)
    validate_root(cfg)
    return job.validate(cfg)


register_configs()


def _one_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
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


def precheck(overrides: list[str]) -> str | None:
    """Compose and validate a single-run command line; return a one-line error or None.

    Runs before Hydra creates any output folder, so a bad command leaves nothing behind.
    """
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[o for o in overrides if not o.lstrip("+~").startswith("hydra")])
        validate(cfg)
    except LotteryError as err:
        return _one_line(err)
    except Exception as err:  # Hydra/OmegaConf composition errors: unknown group option, wrong type, bad syntax
        return _one_line(err)
    return None


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
