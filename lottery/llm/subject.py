"""What one-shot pruning prunes and how it scores a variant (`Subject`): shared by the job and its structured
patterns, below both so that neither imports the other for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class Subject:
    """What is pruned and how it is scored; everything a variant needs, built before any run folder exists."""

    load: Callable[[], nn.Module]  # a fresh dense model (pruning works in place)
    calib_ids: torch.Tensor  # [nsamples, seqlen]
    evaluate: Callable[[nn.Module], float]
    metric: str  # "perplexity" (lower is better) or "cosine" (higher is better)
    dense_key: dict[str, Any]  # what the dense score depends on: names its cache folder
    tokenizer: Any = None
    dense_artifacts: Callable[[Path], None] | None = None  # writes what `evaluate` needs into the dense folder
    calibration: str = ""  # which text calibrated, in words (printed and stored in results.json)
