"""LevelSpec: everything that defines the training of one IMP level, as plain values (no config objects)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LevelSpec:
    """Everything that defines the training of one level; every training engine reads it (the Trainer and
    Fabric engines take the batch size from their datamodule, the batched engine from here)."""

    start_step: int
    iterations: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[int, ...]
    gamma: float
    eval_every: int
    checkpoint_every: int
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"
    num_nodes: int = 1
    deterministic: bool = True
    progress_bar: bool = True
    engine: str = "trainer"  # trainer | fabric (see lottery.imp.schema.ENGINES; auto is resolved before this)
    precision: str = "32-true"  # Lightning's spelling: 32-true | bf16-mixed
    batch_size: int = 60
    cuda_graph: bool = False  # engine=batched on a GPU: replay the step as a CUDA graph (off unless asked)
