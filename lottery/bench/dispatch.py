"""Measure a `DispatchTable`: dense ``torch.mm(W, B)`` vs 2:4 `CsltWeight.mm_t(B)` per shape, tokens, layout.

Both produce Yᵀ (out, T) from the same operand B, as the Yᵀ-consuming block calls them: ``"contig"`` B is a
contiguous (in, T) (feature-major activations), ``"view"`` B is ``X.t()`` of a contiguous token-major X. Each
point is checked (2:4 against dense on the 2:4-masked weight) and timed as CUDA-graph replays, interleaved,
weights rotated past L2 (`lottery.bench.timing`). A 2:4 path that fails or is wrong counts as infinitely slow,
so the table picks dense there.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from lottery.bench import timing
from lottery.bench.timing import time_side_by_side
from lottery.export.dispatch import DispatchTable
from lottery.pruning.nm import nm_mask

log = logging.getLogger(__name__)

__all__ = ["DispatchRow", "measure_dispatch"]

L2_TARGET_BYTES = 256 << 20


@dataclass
class DispatchRow:
    out_features: int
    in_features: int
    tokens: int
    dtype: str
    layout: str
    dense_ms: float
    sparse_ms: float
    speedup: float
    choice: str
    rel_err: float
    alg_id: int
    split_k: int
    note: str = ""


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30)) if torch.isfinite(a).all() else math.inf


def measure_dispatch(shapes: list[tuple[int, int]], dtype: torch.dtype, tokens: list[int],
                     layouts: tuple[str, ...] = ("contig", "view"), target_s: float = 0.05, seed: int = 0,
                     table: DispatchTable | None = None, deadline: float | None = None) -> tuple[DispatchTable,
                                                                                            list[DispatchRow]]:
    """Fill (or extend) a table with every (shape, tokens, layout) point; stops early past ``deadline``
    (a `time.time()` value), leaving unmeasured points to the table's nearest-bucket rule."""
    import time

    from lottery.export.cslt import CsltWeight

    table = table if table is not None else DispatchTable()
    rows: list[DispatchRow] = []
    gen = torch.Generator(device=timing.DEVICE).manual_seed(seed)
    esize = torch.tensor([], dtype=dtype).element_size()
    dt = str(dtype).removeprefix("torch.")
    for n, k in shapes:
        nsets = max(1, min(8, math.ceil(L2_TARGET_BYTES / (n * k * esize))))
        ws = [(torch.randn(n, k, device=timing.DEVICE, generator=gen) / math.sqrt(k)).to(dtype) for _ in range(nsets)]
        ws = [w * nm_mask(w.float().abs(), 2, 4).to(dtype) for w in ws]
        try:
            cws = [CsltWeight(w) for w in ws]
        except Exception as e:  # noqa: BLE001 - no 2:4 on this stack: every point of the shape is dense
            cws = None
            note = f"compress failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        for t in tokens:
            for layout in layouts:
                if deadline is not None and time.time() > deadline:
                    log.warning("dispatch: time budget reached; %dx%d t=%d %s and later points not measured", n, k,
                                t, layout)
                    return table, rows
                xs = [torch.randn(t, k, device=timing.DEVICE, generator=gen).to(dtype) for _ in range(nsets)]
                bs = [x.t().contiguous() for x in xs] if layout == "contig" else [x.t() for x in xs]
                calls = {"dense": lambda i, bs=bs, ws=ws: torch.mm(ws[i], bs[i])}
                err, alg, sk, vnote = math.nan, -1, -1, "" if cws is not None else note
                if cws is not None:
                    try:
                        y = cws[0].mm_t(bs[0])
                        err = _rel(y, torch.mm(ws[0], bs[0]))
                        cfg = cws[0].configs.get((-(-t // 8) * 8, layout == "view", None))
                        alg, sk = (cfg.alg_id, cfg.split_k) if cfg else (-1, -1)
                        if err <= 1e-2:
                            calls["sparse"] = lambda i, bs=bs, cws=cws: cws[i].mm_t(bs[i])
                        else:
                            vnote = f"wrong result: rel err {err:.1e}"
                    except Exception as e:  # noqa: BLE001
                        vnote = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                        timing.sync()
                tm = time_side_by_side(calls, nsets, mode="graph", target_s=target_s)
                dense = tm["dense"].median
                sparse = tm["sparse"].median if "sparse" in tm else math.inf
                choice = table.record(n, k, t, dtype, layout, dense, sparse)
                rows.append(DispatchRow(n, k, t, dt, layout, dense, sparse, dense / sparse, choice, err, alg, sk,
                                        "; ".join(s for s in (vnote, *(tm[v].error for v in tm)) if s)))
                log.info("dispatch %dx%d t=%d %s %s: dense %.4f ms, 2:4 %.4f ms -> %s", n, k, t, dt, layout, dense,
                         sparse, choice)
                del calls, tm, xs, bs
        del ws, cws
        torch.cuda.empty_cache()
    return table, rows
