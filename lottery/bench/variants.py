"""The LLaMA-shaped models that issue 16 compares, built over one set of weights.

Every variant holds the same 2:4-masked block weights (dense tensors shared, compressed ones shared), the same
embedding, norms, lm_head, RoPE tables and KV cache:

| name | block | block linears | Yᵀ handled by |
|---|---|---|---|
| ``dense`` | standard `Block` | `F.linear` (cuBLAS) | — (the baseline) |
| ``sparse_copy`` | standard | 2:4 `SemiStructuredLinear` | ``.contiguous()`` after q/k/v/o/down (the old export) |
| ``sparse_tt`` | standard | 2:4 `SemiStructuredLinear` | Triton tiled transpose after q/k/v/o/down |
| ``dense_tok`` | `GlueBlock`, token-major residual | ``torch.mm(W, Xᵀ)`` | fused: RoPE/cache, residual add |
| ``sparse_tok`` | `GlueBlock`, token-major residual | 2:4 (+ dispatch) | fused: RoPE/cache, residual add |
| ``dense_fm`` | `GlueBlock`, feature-major residual | ``torch.mm(W, B)`` | never transposed |
| ``sparse_fm`` | `GlueBlock`, feature-major residual | 2:4 (+ dispatch) | never transposed |
| ``stub`` / ``stub_tok`` / ``stub_fm`` | each block kind | pre-made outputs | (Amdahl's f of that block) |

The dense glue variants are the fair baselines of the sparse glue ones: same kernels, dense matmuls.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lottery.bench.glue import DenseT, GlueBlock, GlueLlama, StubT
from lottery.bench.llama import Block, LlamaDims, TinyLlama, _Dense, _Stub, shared_parts
from lottery.pruning.nm import nm_mask

__all__ = ["SPARSE_VARIANTS", "VARIANTS", "build_variants", "block_shapes"]

VARIANTS = ("dense", "sparse_copy", "sparse_tt", "dense_tok", "sparse_tok", "dense_fm", "sparse_fm", "stub",
            "stub_tok", "stub_fm")
SPARSE_VARIANTS = ("sparse_copy", "sparse_tt", "sparse_tok", "sparse_fm")
_GLUE = {"dense_tok": "token", "sparse_tok": "token", "dense_fm": "feature", "sparse_fm": "feature",
         "stub_tok": "token", "stub_fm": "feature"}


def block_shapes(d: LlamaDims) -> dict[str, tuple[int, int]]:
    """(out, in) of each block linear."""
    hd = d.hd
    return {"q": (d.heads * hd, d.hidden), "k": (d.kv_heads * hd, d.hidden), "v": (d.kv_heads * hd, d.hidden),
            "o": (d.hidden, d.heads * hd), "gate": (d.intermediate, d.hidden), "up": (d.intermediate, d.hidden),
            "down": (d.hidden, d.intermediate)}


def build_variants(d: LlamaDims, dtype: torch.dtype, max_batch: int, max_len: int, variants: tuple[str, ...],
                   seed: int = 0, device: str = "cuda", dispatch=None, impl: str = "auto",
                   search: bool = True) -> dict[str, nn.Module]:
    """The requested variants (names from `VARIANTS`) over shared random weights; ``dispatch`` (a
    `DispatchTable`) is given to the glue models' 2:4 linears. Each model is called ``model(ids, pos)``."""
    from lottery.export.cslt import CsltWeight, TransposedLinear
    from lottery.export.semi import SemiStructuredLinear

    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown variants {bad}; known: {VARIANTS}")
    rand, embed, head, norm, rope = shared_parts(d, dtype, max_len, device, seed)
    hd = d.hd
    cache = [(rand(max_batch, d.kv_heads, max_len, hd, std=1.0), rand(max_batch, d.kv_heads, max_len, hd, std=1.0))
             for _ in range(d.layers)]
    need_sparse = any(v in SPARSE_VARIANTS for v in variants)
    blocks: dict[str, list[nn.Module]] = {v: [] for v in variants}
    for _ in range(d.layers):
        n1, n2 = norm.clone(), norm.clone()
        lins: dict[str, dict[str, nn.Module]] = {v: {} for v in variants}
        for name, (n, k) in block_shapes(d).items():
            w = rand(n, k, std=1.0 / math.sqrt(k))
            w.mul_(nm_mask(w.abs(), 2, 4))
            cw = CsltWeight(w, search=search) if need_sparse else None
            for v in variants:
                if v == "dense":
                    lins[v][name] = _Dense(w)
                elif v in ("sparse_copy", "sparse_tt"):
                    lins[v][name] = SemiStructuredLinear(
                        None, compressed=cw, keep_transposed=name in ("gate", "up"),
                        transpose="copy" if v == "sparse_copy" else "triton")
                elif v in ("dense_tok", "dense_fm"):
                    lins[v][name] = DenseT(w)
                elif v in ("sparse_tok", "sparse_fm"):
                    lins[v][name] = TransposedLinear(w if dispatch is not None else None, cw, dispatch)
                elif v == "stub":
                    lins[v][name] = _Stub(n, dtype)
                else:
                    lins[v][name] = StubT(n, dtype)
        for v in variants:
            if v in _GLUE:
                blocks[v].append(GlueBlock(d, lins[v], n1, n2, _GLUE[v], impl=impl))
            else:
                blocks[v].append(Block(d, lins[v], n1, n2))
    out: dict[str, nn.Module] = {}
    for v in variants:
        if v in _GLUE:
            out[v] = GlueLlama(d, embed, blocks[v], norm, head, cache, rope, _GLUE[v], impl=impl)
        else:
            out[v] = TinyLlama(d, embed, blocks[v], norm, head, cache, rope)
    return out
