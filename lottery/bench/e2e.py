"""End-to-end latency of the LLaMA-shaped model: dense vs 2:4 in every block linear, with Amdahl's ceiling.

Phases: prefill of `prefill` tokens at batch 1, and one decode step at batch 1 and 16 with `prefill` tokens
already cached. Every phase is captured as a CUDA graph per model and the replays are interleaved.
f = (dense − stub) / dense is the measured fraction of time in the block linears; the ceiling for a
per-matmul speedup s is 1 / (1 − f + f/s).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from lottery.bench.llama import LlamaDims, build_models
from lottery.bench.timing import time_side_by_side

log = logging.getLogger(__name__)

__all__ = ["E2ERow", "amdahl", "bench_e2e"]


def amdahl(f: float, s: float) -> float:
    """Overall speedup when a fraction f of the time is sped up s times: 1 / (1 − f + f/s)."""
    return 1.0 / (1.0 - f + f / s)


@dataclass
class E2ERow:
    phase: str
    batch: int
    tokens: int
    dtype: str
    layers: int
    dense_ms: float
    sparse_ms: float
    stub_ms: float
    speedup: float
    f_linear: float
    linear_speedup: float
    amdahl_2x: float
    rel_err_logits: float
    rel_err_block0: float
    reps: int
    backend: str


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def bench_e2e(d: LlamaDims, dtype: torch.dtype, prefill: int = 2048, decode_batches: tuple[int, ...] = (1, 16),
              seed: int = 0, backend: str = "cslt") -> list[E2ERow]:
    """Build the three models once and time prefill and decode phases side by side."""
    from lottery.export.semi import SemiStructuredLinear

    max_batch = max((1, *decode_batches))
    # transpose="copy": this is the measurement of experiments/sparse_speed/RESULTS.md (the Triton transpose and
    # the Yᵀ-consuming blocks are `python -m lottery.bench nm_e2e`).
    models = build_models(d, dtype, max_batch, prefill + 1, lambda w, name: SemiStructuredLinear(
        w, backend=backend, keep_transposed=name in ("gate", "up"), transpose="copy"), seed=seed)
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    ids = torch.randint(0, d.vocab, (max_batch, prefill), device="cuda", generator=g)

    # Correctness before timing: first block output and final logits of the 2:4 model vs the masked dense one.
    with torch.no_grad():
        x = torch.nn.functional.embedding(ids[:1], models["dense"].embed)
        cos, sin = models["dense"].cos[:prefill], models["dense"].sin[:prefill]
        kc, vc = models["dense"].cache[0]
        b0 = [models[m].blocks[0](x, cos, sin, kc[:1], vc[:1], 0) for m in ("dense", "sparse")]
        err_block = _rel(b0[1], b0[0])
        logits = [models[m](ids[:1], 0) for m in ("dense", "sparse")]
        err_logits = _rel(logits[1], logits[0])
    log.info("e2e correctness: block0 rel err %.2e, logits rel err %.2e", err_block, err_logits)

    phases = [("prefill", 1, prefill, 0)] + [("decode", b, 1, prefill) for b in decode_batches]
    rows = []
    for phase, b, t, pos in phases:
        inp = ids[:b, :t].contiguous()
        calls = {m: (lambda i, mod=models[m], inp=inp, pos=pos: mod(inp, pos)) for m in ("dense", "sparse", "stub")}
        tm = time_side_by_side(calls, nsets=1, mode="graph", min_reps=10, max_reps=100, target_s=0.5)
        dense, sparse, stub = (tm[m].median for m in ("dense", "sparse", "stub"))
        f = max(0.0, min(1.0, (dense - stub) / dense))
        lin_speed = (dense - stub) / max(sparse - stub, 1e-9)
        rows.append(E2ERow(phase, b, t, str(dtype).removeprefix("torch."), d.layers, dense, sparse, stub,
                           dense / sparse, f, lin_speed, amdahl(f, 2.0), err_logits, err_block,
                           len(tm["dense"].ms), backend))
        for m in ("dense", "sparse", "stub"):
            if tm[m].error:
                log.warning("e2e %s b=%d %s: %s", phase, b, m, tm[m].error)
        del calls, tm
        torch.cuda.empty_cache()
    del models
    torch.cuda.empty_cache()
    return rows
