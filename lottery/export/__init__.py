"""Inference export of pruned linear layers: 2:4 semi-structured sparse kernels and narrower dense layers.

- `to_semi_structured(model)` / `SemiStructuredLinear`: 2:4 weights on cuSPARSELt (CUDA, compute capability >= 8.0).
- `CsltWeight` / `TransposedLinear`: a 2:4 weight compressed once with tuned configs; Yᵀ = W·B in either operand
  layout, dense or 2:4 per call from a measured `DispatchTable`. `lottery.export.fused`: the glue ops (Triton)
  that consume Yᵀ without transpose copies.
- `compact_mlp`, `compact_llama_mlps`, `narrow_linear`: structured-pruned neurons removed, dense and narrower.
- `pack_24` / `unpack_24`: a device-free 2:4 values + 2-bit-index format.
"""

from lottery.export.cslt import CsltWeight, TransposedLinear
from lottery.export.dispatch import DispatchTable
from lottery.export.packing import Packed24, pack_24, unpack_24
from lottery.export.semi import (
    BACKENDS,
    SemiStructuredLinear,
    SemiStructuredUnavailable,
    require_semi_structured_gpu,
    to_semi_structured,
)
from lottery.export.width import compact_llama_mlps, compact_mlp, live_neurons, narrow_linear

__all__ = [
    "BACKENDS",
    "CsltWeight",
    "DispatchTable",
    "Packed24",
    "SemiStructuredLinear",
    "SemiStructuredUnavailable",
    "compact_llama_mlps",
    "compact_mlp",
    "live_neurons",
    "narrow_linear",
    "pack_24",
    "require_semi_structured_gpu",
    "TransposedLinear",
    "to_semi_structured",
    "unpack_24",
]
