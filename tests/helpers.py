"""Helpers shared by the tests: paths and config composition."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lottery.run import register_configs

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = str(REPO / "conf")
SHARED_DATA = Path(os.environ.get("LOTTERY_TEST_DATA", REPO.parent / "shared" / "data"))

register_configs()


def make_config(overrides: list[str]) -> DictConfig:
    """Compose conf/config.yaml with `overrides`, as `python -m lottery.run` would."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


# Small, fast settings for end-to-end runs on the real MNIST files.
TINY = ["+exp=imp_lenet", "data.train_subset=1200", "data.eval_subset=500", "training.iterations=60",
        "training.eval_every=20", "training.checkpoint_every=20", "progress_bar=false"]


@contextmanager
def killed_at(module: ModuleType, step: int) -> Iterator[None]:
    """Inside the block, the training loop of `module` (lottery.training.fast or lottery.training.replicates)
    dies with RuntimeError("simulated failure ...") when its level reaches `step` steps (counted from the
    level's start), after the checkpoints of earlier steps: a kill that the next call must recover from.

    It wraps the loop's per-step learning-rate lookup, so the library carries no test hook."""
    real = module.lr_factor

    def lr_factor(done: int, *args, **kwargs) -> float:
        if done >= step:
            raise RuntimeError(f"simulated failure at step {done}")
        return real(done, *args, **kwargs)

    module.lr_factor = lr_factor
    try:
        yield
    finally:
        module.lr_factor = real
