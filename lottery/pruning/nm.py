"""N:M semi-structured sparsity: at most N non-zeros in every contiguous group of M along the last dim.

The convention is NVIDIA's (2:4 keeps 2 of every 4). The SparseGPT/Wanda reference code names the number
*pruned* per group instead; for 2:4 and 4:8 the two conventions coincide.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lottery.errors import ConfigError

__all__ = ["check_nm", "nm_mask", "parse_nm", "validate_nm"]


def parse_nm(pattern: str, key: str = "pruning.pattern") -> tuple[int, int] | None:
    """(n, m) of an "N:M" pattern string such as "2:4"; None for a pattern without a colon ("unstructured",
    "neurons", ...), which the caller checks against its own choices. ConfigError naming `key` when the
    pattern is not two integers with 1 <= N <= M."""
    text = str(pattern)
    if ":" not in text:
        return None
    parts = text.split(":")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise ConfigError(f"{key}={text!r} is malformed; write N:M patterns as two integers, e.g. 2:4")
    n, m = int(parts[0]), int(parts[1])
    if not 1 <= n <= m:
        raise ConfigError(f"{key}={text!r}: N:M needs 1 <= N <= M (e.g. 2:4, 4:8)")
    return n, m


def validate_nm(n: int, m: int, last_dim: int | None = None) -> None:
    """Raise ValueError unless 0 <= n <= m, m > 0 and (if given) ``last_dim`` is divisible by m."""
    if m <= 0:
        raise ValueError(f"N:M sparsity needs m > 0, got n={n}, m={m}")
    if n < 0:
        raise ValueError(f"N:M sparsity needs n >= 0, got n={n}, m={m}")
    if n > m:
        raise ValueError(f"N:M sparsity needs n <= m, got n={n} > m={m}")
    if last_dim is not None and last_dim % m != 0:
        raise ValueError(f"N:M sparsity needs the last dim ({last_dim}) divisible by m={m} (n={n})")


def nm_mask(score: Tensor, n: int, m: int) -> Tensor:
    """Keep-mask (True = kept) holding the n largest scores of each contiguous group of m along the last dim.

    Ties are broken by ``torch.topk`` (deterministic for a given input on a given device).
    """
    if score.dim() == 0:
        raise ValueError("nm_mask needs a tensor with at least one dimension")
    validate_nm(n, m, score.shape[-1])
    groups = score.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    if n > 0:
        keep.scatter_(1, torch.topk(groups, n, dim=1, largest=True).indices, True)
    return keep.reshape(score.shape)


def check_nm(mask_or_weight: Tensor, n: int, m: int) -> bool:
    """True iff every contiguous group of m along the last dim has at most n non-zero (or True) entries.

    A last dim not divisible by m cannot satisfy the pattern and gives False.
    """
    validate_nm(n, m)
    if mask_or_weight.dim() == 0 or mask_or_weight.shape[-1] % m != 0:
        return False
    nonzero = (mask_or_weight != 0).reshape(-1, m).sum(dim=1)
    return bool((nonzero <= n).all())
