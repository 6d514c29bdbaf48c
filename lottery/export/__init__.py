"""Inference export of pruned linear layers: 2:4 semi-structured sparse kernels and narrower dense layers.

- `to_semi_structured(model)` / `SemiStructuredLinear`: 2:4 weights on cuSPARSELt (CUDA, compute capability >= 8.0).
- `compact_mlp`, `compact_llama_mlps`, `narrow_linear`: structured-pruned neurons removed, dense and narrower.
- `pack_24` / `unpack_24`: a device-free 2:4 values + 2-bit-index format.
"""

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
    "Packed24",
    "SemiStructuredLinear",
    "SemiStructuredUnavailable",
    "compact_llama_mlps",
    "compact_mlp",
    "live_neurons",
    "narrow_linear",
    "pack_24",
    "require_semi_structured_gpu",
    "to_semi_structured",
    "unpack_24",
]
