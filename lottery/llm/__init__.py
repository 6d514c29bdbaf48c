"""One-shot LLM pruning: magnitude, Wanda and SparseGPT, per layer or over a whole Hugging Face model."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lottery.llm.adapters import find_blocks, find_layers, get_weight, set_weight
    from lottery.llm.calibration import (
        calibration_from_file,
        calibration_from_hub,
        load_text,
        sample_segments,
    )
    from lottery.llm.checkpoint import apply_masks, load_masks, load_pruned, save_pruned
    from lottery.llm.magnitude import magnitude_prune
    from lottery.llm.methods import METHODS
    from lottery.llm.obs import obs_prune_columns, obs_prune_step
    from lottery.llm.perplexity import perplexity
    from lottery.llm.report import LayerReport, PruneReport
    from lottery.llm.sequential import prune_model
    from lottery.llm.sparsegpt import sparsegpt_prune
    from lottery.llm.stats import InputStats, relative_error
    from lottery.llm.wanda import wanda_prune

# Public name -> submodule. Loaded on first use, so that `lottery.config` can import the light-weight
# `lottery.llm.schema` without paying for torch/transformers at every command-line start.
_EXPORTS = {
    "find_blocks": "adapters", "find_layers": "adapters", "get_weight": "adapters", "METHODS": "methods",
    "set_weight": "adapters", "calibration_from_file": "calibration", "calibration_from_hub": "calibration",
    "load_text": "calibration", "sample_segments": "calibration", "apply_masks": "checkpoint",
    "load_masks": "checkpoint", "load_pruned": "checkpoint", "save_pruned": "checkpoint",
    "magnitude_prune": "magnitude", "obs_prune_columns": "obs", "obs_prune_step": "obs", "perplexity": "perplexity",
    "LayerReport": "report", "PruneReport": "report", "prune_model": "sequential", "sparsegpt_prune": "sparsegpt",
    "InputStats": "stats", "relative_error": "stats", "wanda_prune": "wanda",
}

__all__ = [
    "InputStats", "LayerReport", "PruneReport", "apply_masks", "calibration_from_file", "calibration_from_hub",
    "METHODS", "find_blocks", "find_layers", "get_weight", "load_masks", "load_pruned", "load_text",
    "magnitude_prune", "obs_prune_columns", "obs_prune_step", "perplexity", "prune_model", "relative_error",
    "sample_segments", "save_pruned", "set_weight", "sparsegpt_prune", "wanda_prune",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"lottery.llm.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lottery.llm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
