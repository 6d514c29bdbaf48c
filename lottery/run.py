"""Entry point: compose the Hydra config, validate it, run the job.

    python -m lottery.run +exp=imp_lenet
    python -m lottery.run +exp=imp_lenet imp.levels=5 training.iterations=2000 seed=3

A bad config value ends the run before any work with one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lottery.config import register_configs, validate
from lottery.errors import LotteryError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
EXIT_BAD_INPUT = 2
log = logging.getLogger("lottery")

register_configs()


def _one_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text.replace("Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", "").strip()


def _dispatch(cfg: DictConfig) -> object:
    if cfg.job == "imp":
        from lottery.imp.job import run

        return run(cfg)
    if cfg.job == "oneshot":
        from lottery.llm.job import run as run_oneshot

        return run_oneshot(cfg)
    raise LotteryError(f"job={cfg.job!r} is unknown")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        from lottery.tracking.objective import sweep_objective  # what a Hydra sweeper (Optuna) optimises

        return sweep_objective(cfg, _dispatch(cfg))
    except LotteryError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


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
