"""Masks and the rules that compute them: magnitude (or any per-weight score, see scores.py), layerwise or global."""

from lottery.pruning.magnitude import kept_count, magnitude_prune, resolve_rates, score_prune
from lottery.pruning.mask import Mask, jaccard

__all__ = ["Mask", "jaccard", "kept_count", "magnitude_prune", "resolve_rates", "score_prune"]
