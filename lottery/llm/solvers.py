"""The layer solvers of the registered one-shot methods, all with one signature (see lottery.llm.methods)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lottery.llm.magnitude import magnitude_prune
from lottery.llm.sparsegpt import sparsegpt_prune
from lottery.llm.stats import InputStats
from lottery.llm.wanda import wanda_prune


def magnitude_layer(W: Tensor, stats: InputStats | None, sparsity: float, opts: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Smallest |W_ij| (per matrix, or per row with ``per_row``); ignores ``stats``."""
    return magnitude_prune(W, sparsity, opts["n"], opts["m"], per_row=opts["per_row"])


def wanda_layer(W: Tensor, stats: InputStats, sparsity: float, opts: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """|W_ij| * ||X_j||, compared per output row."""
    return wanda_prune(W, stats.sq_norm, sparsity, opts["n"], opts["m"])


def sparsegpt_layer(W: Tensor, stats: InputStats, sparsity: float, opts: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """SparseGPT's OBS reconstruction with the layer Hessian ``stats.H``."""
    return sparsegpt_prune(W, stats.H, sparsity, opts["n"], opts["m"], blocksize=opts["blocksize"],
                           percdamp=opts["percdamp"])
