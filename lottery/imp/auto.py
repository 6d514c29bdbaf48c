"""Resolve `trainer.accelerator: auto` and `training.engine: auto` to what will actually run (issue 18).

Resolution happens before a config is hashed, so a run's folder records the device kind and the engine that
trained it: a CPU run and a GPU run of the same config never share a folder, and results of an explicit
`training.engine=trainer` run stay where they were.

    accelerator auto -> gpu when CUDA is visible, else cpu
    engine auto      -> trainer  when several processes (DDP), a strategy other than auto, or SLURM need it
                        batched  on one GPU (the step replayed as a CUDA graph, also for one seed)
                        fabric   on one CPU device (bitwise the Trainer's results, less per-step overhead)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from omegaconf import DictConfig, open_dict


class Resolved(NamedTuple):
    """The config with concrete accelerator and engine, and one line per `auto` saying what it became and why."""

    cfg: DictConfig
    reasons: list[str]


def cuda_visible() -> bool:
    """Whether a CUDA device is visible to this process."""
    return torch.cuda.is_available()


def under_slurm() -> bool:
    """Whether this process is a SLURM batch task (Lightning's test: its requeue-on-preemption needs the Trainer)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def auto_engine(accelerator: str, processes: int, strategy: str, slurm: bool) -> tuple[str, str]:
    """The engine `training.engine: auto` picks for a concrete accelerator, and why."""
    if processes > 1 or strategy not in ("auto", "single_device"):
        return "trainer", f"{processes} process(es) with trainer.strategy={strategy} need Lightning's Trainer (DDP)"
    if slurm:
        return "trainer", "a SLURM batch task: the Trainer requeues it on pre-emption"
    if accelerator == "gpu":
        return "batched", "one GPU: the training step is replayed as a CUDA graph"
    if accelerator == "cpu":
        return "fabric", "one CPU device: Fabric gives the Trainer's results with less per-step overhead"
    return "trainer", f"trainer.accelerator={accelerator}: only the Trainer supports it"


def resolve_auto(cfg: DictConfig, cuda: Callable[[], bool] = cuda_visible,
                 slurm: Callable[[], bool] = under_slurm) -> Resolved:
    """A copy of the IMP config `cfg` with `trainer.accelerator` and `training.engine` concrete.

    A config without `auto` comes back equal (and without reasons), so resolving twice is harmless."""
    cfg = cfg.copy()
    reasons: list[str] = []
    trainer, training = cfg.get("trainer"), cfg.get("training")
    if trainer is None or training is None:
        return Resolved(cfg, reasons)
    with open_dict(cfg):
        if trainer.accelerator == "auto":
            has_cuda = cuda()
            trainer.accelerator = "gpu" if has_cuda else "cpu"
            reasons.append(f"trainer.accelerator=auto -> {trainer.accelerator} "
                           f"({'a CUDA device is visible' if has_cuda else 'no CUDA device is visible'})")
        if training.get("engine", "trainer") == "auto":
            engine, why = auto_engine(trainer.accelerator, trainer.devices * trainer.num_nodes, trainer.strategy,
                                      slurm())
            training.engine = engine
            reasons.append(f"training.engine=auto -> {engine} ({why})")
    return Resolved(cfg, reasons)
