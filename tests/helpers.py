"""Helpers shared by the tests: paths and config composition."""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lottery.imp.auto import resolve_auto
from lottery.pruning import Mask
from lottery.run import register_configs
from lottery.tracking import RunStore
from lottery.training.replicates import (
    CropFlip,
    ReplicateData,
    ReplicateRun,
    Replicates,
    StepOptions,
    train_replicates,
)
from lottery.training.spec import LevelSpec

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = str(REPO / "conf")
SHARED_DATA = Path(os.environ.get("LOTTERY_TEST_DATA", REPO.parent / "shared" / "data"))
# Where the tests keep an MNIST they downloaded themselves (read before conftest points HOME into tmp_path).
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lottery" / "test-data"
MNIST_HOST = ("ossci-datasets.s3.amazonaws.com", 443)  # torchvision's first MNIST mirror


def has_mnist(root: Path) -> bool:
    """Whether `root` holds MNIST as torchvision lays it out (root/MNIST/raw/...)."""
    return (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


def is_online(host: tuple[str, int] = MNIST_HOST, timeout: float = 3.0) -> bool:
    """Whether the MNIST mirror answers a TCP connection within `timeout` seconds."""
    try:
        socket.create_connection(host, timeout=timeout).close()
    except OSError:
        return False
    return True


def download_mnist(root: Path) -> None:
    """Fetch MNIST's four files through torchvision into root/MNIST/raw."""
    from torchvision.datasets import MNIST

    for train in (True, False):
        MNIST(str(root), train=train, download=True)


def locate_mnist(shared: Path, cache: Path, online: Callable[[], bool] = is_online,
                 download: Callable[[Path], None] = download_mnist) -> tuple[Path | None, str]:
    """The data root holding MNIST for the tests, and how it was found: the shared folder, else the user cache,
    else a download into the cache (once; only when online). (None, why) when offline and absent."""
    if has_mnist(shared):
        return shared, f"MNIST from {shared}"
    if has_mnist(cache):
        return cache, f"MNIST from the cache {cache}"
    if not online():
        return None, (f"MNIST is neither in {shared} nor in {cache} and the machine is offline: the MNIST tests "
                      "were skipped (set LOTTERY_TEST_DATA, or run once online to fetch it)")
    download(cache)
    if not has_mnist(cache):
        return None, f"downloading MNIST into {cache} did not produce MNIST/raw: the MNIST tests were skipped"
    return cache, f"MNIST downloaded into {cache}"

register_configs()


def make_config(overrides: list[str]) -> DictConfig:
    """Compose conf/config.yaml with `overrides`, as `python -m lottery.run` would."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def imp_folder(cfg: DictConfig, root: str | Path | None = None) -> Path:
    """The run folder the IMP job writes for `cfg` (its `auto` settings resolved on this machine, as the job
    does before hashing), under `root` (default: cfg.store.root)."""
    return RunStore(cfg.store.root if root is None else root, resolve_auto(cfg).cfg, prefix="imp").path


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


def run_replicates(model_fn: Callable[[], torch.nn.Module], inits: Sequence[Mapping[str, torch.Tensor]],
                   masks: Sequence[Mask | None], train: tuple[torch.Tensor, torch.Tensor], batch_size: int,
                   seeds: Sequence[int], iterations: int, *,
                   eval_sets: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                   eval_batch_size: int = 1000, device: str | torch.device = "cpu", crop_padding: int = 0,
                   crop_fill: torch.Tensor | None = None, fused_optimizer: bool | None = None,
                   compile_loss: bool | None = None, checkpoints: Sequence[Path] | None = None,
                   rewind: Any = None, progress: str | None = None, **spec: Any) -> list[ReplicateRun]:
    """`train_replicates` called with one keyword per setting (what the replicate tests vary): builds the level
    spec (`spec`: LevelSpec fields; the defaults are LeNet's Adam recipe with no milestones) and the groups."""
    fields = {"start_step": 0, "optimizer": "adam", "lr": 1.2e-3, "momentum": 0.0, "weight_decay": 0.0,
              "milestones": (), "gamma": 0.1, "eval_every": 100, "checkpoint_every": 1000, **spec}
    level = LevelSpec(iterations=iterations, batch_size=batch_size,
                      **{**fields, "milestones": tuple(fields["milestones"])})
    return train_replicates(level, Replicates(model_fn, inits, masks, seeds),
                            ReplicateData(train, eval_sets or {}, eval_batch_size), device=device,
                            augment=CropFlip(crop_padding, crop_fill),
                            options=StepOptions(fused_optimizer, compile_loss), checkpoints=checkpoints,
                            rewind=rewind, progress=progress)


def cpu_identity() -> str:
    """The processor's model name and the ISA torch dispatches to: what decides the BLAS kernels' rounding."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name} / {torch.backends.cpu.get_cpu_capability()}"
