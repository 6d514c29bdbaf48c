"""The structured patterns of the one-shot job: names, what each removes, and their config checks.

Torch-free (config validation reads it before anything heavy loads). With a structured `prune.pattern`,
`prune.sparsity` is the fraction of *units* removed in every block (uniform per block): MLP intermediate
neurons for `neurons`; MLP neurons and key/value groups (whole attention heads without grouped-query
attention) for `neurons+heads`. `prune.method` is the unit score: `wanda` (activation-aware, |W|·||X|| summed
over the unit's weights) or `magnitude` (|W| summed).
"""

from __future__ import annotations

from typing import Any

from lottery.errors import ConfigError

# pattern -> does it remove key/value groups too (MLP neurons are always removed)
STRUCTURED_PATTERNS: dict[str, bool] = {"neurons": False, "neurons+heads": True}
STRUCTURED_METHODS = ("wanda", "magnitude")

__all__ = ["STRUCTURED_METHODS", "STRUCTURED_PATTERNS", "check_structured_prune", "is_structured"]


def is_structured(pattern: Any) -> bool:
    """Is `pattern` one of the structured (whole-unit) patterns?"""
    return str(pattern) in STRUCTURED_PATTERNS


def check_structured_prune(methods: list[str], patterns: list[str], include: list[str], exclude: list[str]) -> None:
    """ConfigError for options a structured pattern cannot honour: a method other than a unit score, or
    include/exclude globs (every block's MLP and attention take part, so the narrow model stays uniform)."""
    structured = [p for p in patterns if is_structured(p)]
    if not structured:
        return
    for method in methods:
        if method not in STRUCTURED_METHODS:
            raise ConfigError(f"prune.method={method!r} has no structured solver (prune.pattern={structured[0]}); "
                              f"choose one of {', '.join(STRUCTURED_METHODS)}, or an unstructured / N:M pattern")
    if include or exclude:
        raise ConfigError(f"prune.include / prune.exclude must be empty with prune.pattern={structured[0]}: "
                          "structured pruning narrows every block alike")
