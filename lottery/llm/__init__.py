"""One-shot LLM pruning: magnitude, Wanda and SparseGPT, per layer or over a whole Hugging Face model."""

from __future__ import annotations

from lottery.llm.adapters import find_blocks, find_layers, get_weight, set_weight
from lottery.llm.calibration import calibration_from_file, calibration_from_hub, load_text, sample_segments
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

# Imported eagerly: a lazy module __getattr__ returned the submodule `lottery.llm.perplexity` instead of the
# function once anything had imported that submodule (Python binds a package attribute per loaded submodule).
__all__ = [
    "InputStats", "LayerReport", "PruneReport", "apply_masks", "calibration_from_file", "calibration_from_hub",
    "METHODS", "find_blocks", "find_layers", "get_weight", "load_masks", "load_pruned", "load_text",
    "magnitude_prune", "obs_prune_columns", "obs_prune_step", "perplexity", "prune_model", "relative_error",
    "sample_segments", "save_pruned", "set_weight", "sparsegpt_prune", "wanda_prune",
]
