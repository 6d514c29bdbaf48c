"""GPU benchmarks. `python -m lottery.bench sparse_speed` measures 2:4 and narrow-width speed against dense;
`nm_e2e` (issue 16) the 2:4 model without transpose copies, end to end; `width_speed` the narrowed model.

Library pieces: `time_side_by_side` (interleaved CUDA-event timing), `amdahl`, `llama7b_dims`.
"""

from lottery.bench.e2e import amdahl
from lottery.bench.llama import llama7b_dims
from lottery.bench.timing import time_side_by_side

__all__ = ["amdahl", "llama7b_dims", "time_side_by_side"]
