"""Per-layer matmul time: dense cuBLAS vs 2:4 sparse (several paths) vs half-width dense, one shape at a time.

Variants (Y = X·Wᵀ, W is out×in, X is tokens×in):
- ``dense``: `F.linear` on the unpruned weight (cuBLAS); ``dense_masked``: the same on the 2:4-masked weight.
- ``half``: `F.linear` with half the larger of out/in (a structured-pruned layer exported narrower).
- ``torch_semi``: `F.linear` on `to_sparse_semi_structured(W)` (torch's cuSPARSELt path, plan per call).
- ``torch_cslt``: `torch._cslt_sparse_mm` with the alg id from `torch._cslt_sparse_mm_search`; returns Yᵀ.
- ``torch_cslt_xT``: the same fed Xᵀ stored contiguous (activations kept transposed between layers).
- ``lt_A`` / ``lt_A_rowD`` / ``lt_B``: our cached-plan cuSPARSELt binding in each operand layout
  (`lottery.export.cusparselt`); ``lt_A_rowD`` returns Yᵀ, the other two Y. ``lt_A_rowD_xT`` takes Xᵀ
  contiguous and returns Yᵀ (activations kept transposed between layers: no transpose copies).
- cuSPARSELt refuses fewer rows than 8 (16 for int8): those sparse variants get X zero-padded beforehand.
- Issue 16 (`lottery.export.cslt.CsltWeight`, configs searched with split-K by ``mm_search``, padding inside):
  ``dense_fm``: ``torch.mm(W, Xᵀ)`` on a contiguous Xᵀ (the dense matmul of feature-major activations, Yᵀ out);
  ``cslt_tuned`` / ``cslt_tuned_xT``: 2:4 from X.t() / from a contiguous Xᵀ, Yᵀ out;
  ``cslt_Y_copy`` / ``cslt_Y_triton``: 2:4 then back to token-major Y by torch's ``.contiguous()`` (what the old
  export paid per layer) / by the Triton tiled transpose.
- int8: ``dense`` is `torch._int_mm` (int32 out; X padded to 32 rows below 17, which it refuses) and the lt
  variants take int8 and write int32. ``cslt_i8`` / ``cslt_i8_xT``: 2:4 int8 through `torch._cslt_sparse_mm`
  (int32 out); ``cslt_i8_f16``: int8 in, fp16 out with a per-output-channel scale (alpha), the W8A8 output a
  model would use; ``dense_fp16``: `F.linear` in fp16 on the same shape, for int8 vs fp16.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lottery.bench import timing
from lottery.bench.timing import time_side_by_side
from lottery.pruning.nm import nm_mask

log = logging.getLogger(__name__)

__all__ = ["FLOAT_VARIANTS", "INT8_VARIANTS", "LayerRow", "bench_layer"]

FLOAT_VARIANTS = ("dense", "dense_masked", "half", "torch_semi", "torch_cslt", "torch_cslt_xT")
NM_VARIANTS = ("dense", "dense_fm", "torch_cslt", "cslt_tuned", "cslt_tuned_xT", "cslt_Y_copy", "cslt_Y_triton")
CTYPES_VARIANTS = ("lt_A", "lt_A_rowD", "lt_A_rowD_xT", "lt_B")  # experimental: crashed on the H200
INT8_VARIANTS = ("dense", "half", "lt_A_rowD", "lt_A_rowD_xT", "lt_B", "cslt_i8", "cslt_i8_xT", "cslt_i8_f16",
                 "dense_fp16")
INT8_NM_VARIANTS = ("dense", "cslt_i8", "cslt_i8_xT", "cslt_i8_f16", "dense_fp16")
_CSLTW = ("cslt_tuned", "cslt_tuned_xT", "cslt_Y_copy", "cslt_Y_triton", "cslt_i8", "cslt_i8_xT", "cslt_i8_f16")
_SPARSE = ("torch_semi", "torch_cslt", "torch_cslt_xT", "lt_A", "lt_A_rowD", "lt_A_rowD_xT", "lt_B", *_CSLTW)
_TRANSPOSED_OUT = ("torch_cslt", "torch_cslt_xT", "lt_A_rowD", "lt_A_rowD_xT", "dense_fm", "cslt_tuned",
                   "cslt_tuned_xT", "cslt_i8", "cslt_i8_xT", "cslt_i8_f16")
_PAD_ROWS = {torch.float16: 8, torch.bfloat16: 8, torch.int8: 16}
L2_TARGET_BYTES = 256 << 20  # rotate weight copies until they total ~4x the H200's 60 MB L2


@dataclass
class LayerRow:
    """One (shape, tokens, dtype, variant) measurement."""

    out_features: int
    in_features: int
    tokens: int
    dtype: str
    variant: str
    mode: str
    ms: float
    speedup: float
    rel_err: float
    ok: bool
    tflops: float
    alg_id: int
    split_k: int
    nsets: int
    reps: int
    note: str = ""


def _rand(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    if dtype == torch.int8:
        return torch.randint(-8, 8, shape, dtype=torch.int8, device=timing.DEVICE, generator=gen)
    return (torch.randn(shape, device=timing.DEVICE, generator=gen) * scale).to(dtype)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.float(), ref.float()
    if not torch.isfinite(y).all():
        return float("inf")
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


def bench_layer(n: int, k: int, tokens_list: list[int], dtype: torch.dtype, variants: tuple[str, ...],
                mode: str = "graph", tol: float = 1e-3, seed: int = 0, target_s: float = 0.25) -> list[LayerRow]:
    """Measure every variant at every token count for one weight shape (out=n, in=k)."""
    from lottery.export.cslt import CsltWeight
    from lottery.export.cusparselt import LtSparseWeight
    from lottery.export.fused import transpose as fused_transpose

    gen = torch.Generator(device=timing.DEVICE).manual_seed(seed)
    esize = torch.tensor([], dtype=dtype).element_size()
    nsets = max(1, min(8, math.ceil(L2_TARGET_BYTES / (n * k * esize))))
    is_int = dtype == torch.int8
    ws = [_rand((n, k), dtype, gen, 1 / math.sqrt(k)) for _ in range(nsets)]
    wm = [w * nm_mask(w.float().abs(), 2, 4).to(w.dtype) for w in ws]
    halve_out = n >= k
    wh = [w[: n // 2].contiguous() if halve_out else w[:, : k // 2].contiguous() for w in ws]
    wt, wmt, wht = ws, wm, wh

    def dense_mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch._int_mm(x, w.t()) if is_int else F.linear(x, w)

    # Per-output-channel dequantisation scale of the int8 fp16-out variant (the same for every copy).
    alpha = torch.rand(n, device=timing.DEVICE, generator=gen).add_(0.5).div_(64.0) if is_int else None
    wf16 = [(torch.randn(n, k, device=timing.DEVICE, generator=gen) / math.sqrt(k)).half() for _ in range(nsets)] \
        if is_int and "dense_fp16" in variants else []
    odt = torch.int32 if is_int else None  # int8 2:4 writes int32 (its default would be int8, saturated)
    semi, packed, lt, cw = {}, {}, {}, {}
    notes: dict[str, str] = {}
    for v in variants:
        try:
            if v == "torch_semi":
                from torch.sparse import to_sparse_semi_structured

                semi[v] = [to_sparse_semi_structured(w) for w in wm]
            elif v in ("torch_cslt", "torch_cslt_xT"):
                packed[v] = [torch._cslt_compress(w) for w in wm]
            elif v.startswith("lt_"):
                lt[v] = [LtSparseWeight(w, layout=v[3:].removesuffix("_xT")) for w in wm]
            elif v in _CSLTW:
                cw[v] = cw.get("any") or [CsltWeight(w) for w in wm]  # one compressed copy set for all
                cw["any"] = cw[v]
        except Exception as e:  # noqa: BLE001 - an unavailable path is reported as a row, not a crash
            notes[v] = f"setup failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            log.warning("%dx%d %s %s: %s", n, k, dtype, v, notes[v])
    rows: list[LayerRow] = []
    for t in tokens_list:
        xs = [_rand((t, k), dtype, gen) for _ in range(nsets)]
        # torch._int_mm needs more than 16 rows: the int8 dense baseline gets X zero-padded to 32 rows there.
        xd = [F.pad(x, (0, 0, 0, 32 - t)) for x in xs] if is_int and t <= 16 else xs
        xf16 = [x.half() for x in xs] if wf16 else []
        xh = xs if halve_out else [x[:, : k // 2].contiguous() for x in xs]
        tp = -(-t // _PAD_ROWS[dtype]) * _PAD_ROWS[dtype]
        xp = xs if tp == t else [F.pad(x, (0, 0, 0, tp - t)) for x in xs]
        xpt = [x.t().contiguous() for x in xp] if {"lt_A_rowD_xT", "torch_cslt_xT"} & set(variants) else []
        xst = [x.t().contiguous() for x in xs] if {"dense_fm", "cslt_tuned_xT", "cslt_i8_xT"} & set(variants) else []
        calls: dict[str, Callable[[int], object]] = {}
        info: dict[str, tuple[int, int]] = {}
        errs: dict[str, float] = {}
        vnotes = dict(notes)
        # Reference: dense on the masked weight (int8: the exact product, in float64, whatever the token count).
        ref = (xs[0].double() @ wmt[0].double().t()).to(torch.int32) if is_int else dense_mm(xs[0], wmt[0])
        for v in variants:
            if v in notes:
                continue
            try:
                if v == "dense":
                    calls[v] = lambda i, xd=xd: dense_mm(xd[i], wt[i])
                    if xd is not xs:
                        vnotes[v] = "X padded to 32 rows"
                elif v == "dense_fm":
                    calls[v] = lambda i, xst=xst: torch.mm(wmt[i], xst[i])
                elif v == "dense_fp16":
                    calls[v] = lambda i, xf16=xf16: F.linear(xf16[i], wf16[i])
                elif v in _CSLTW:
                    ws_ = cw[v]
                    if v in ("cslt_tuned_xT", "cslt_i8_xT"):
                        calls[v] = lambda i, xst=xst, ws_=ws_: ws_[i].mm_t(xst[i], out_dtype=odt)
                    elif v == "cslt_i8_f16":
                        calls[v] = lambda i, xs=xs, ws_=ws_: ws_[i].mm_t(xs[i].t(), out_dtype=torch.float16,
                                                                          alpha=alpha)
                    elif v == "cslt_Y_copy":
                        calls[v] = lambda i, xs=xs, ws_=ws_: ws_[i].mm_t(xs[i].t()).t().contiguous()
                    elif v == "cslt_Y_triton":
                        calls[v] = lambda i, xs=xs, ws_=ws_: fused_transpose(ws_[i].mm_t(xs[i].t()), impl="triton")
                    else:
                        calls[v] = lambda i, xs=xs, ws_=ws_: ws_[i].mm_t(xs[i].t(), out_dtype=odt)
                    calls[v](0)
                    od = torch.float16 if v == "cslt_i8_f16" else odt
                    # (a (K, 1) view counts as contiguous, so fall back to the config the call just made)
                    cfg = ws_[0].configs.get((-(-t // _PAD_ROWS[dtype]) * _PAD_ROWS[dtype], not v.endswith("_xT"),
                                              od)) or (list(ws_[0].configs.values()) or [None])[-1]
                    if cfg is not None:
                        info[v] = (cfg.alg_id, cfg.split_k)
                        if cfg.note:
                            vnotes[v] = cfg.note[:160]
                elif v == "dense_masked":
                    calls[v] = lambda i, xs=xs: dense_mm(xs[i], wmt[i])
                elif v == "half":
                    calls[v] = lambda i, xh=xh: dense_mm(xh[i], wht[i])
                elif v == "torch_semi":
                    calls[v] = lambda i, xs=xs: F.linear(xs[i], semi["torch_semi"][i])
                elif v == "torch_cslt":
                    p = packed[v]
                    alg = int(torch._cslt_sparse_mm_search(p[0], xp[0].t()))
                    info[v] = (alg, 0)
                    calls[v] = lambda i, xp=xp, alg=alg, p=p: torch._cslt_sparse_mm(p[i], xp[i].t(), alg_id=alg)
                elif v == "torch_cslt_xT":
                    p = packed[v]
                    alg = int(torch._cslt_sparse_mm_search(p[0], xpt[0]))
                    info[v] = (alg, 0)
                    calls[v] = lambda i, xpt=xpt, alg=alg, p=p: torch._cslt_sparse_mm(p[i], xpt[i], alg_id=alg)
                elif v.startswith("lt_"):
                    # The first copy searches; the others reuse its tuned config (same shape).
                    x_t = v.endswith("_xT")
                    plans = [sw.plan(tp, x_transposed=x_t) for sw in lt[v]]
                    p0 = plans[0]
                    info[v] = (p0.alg_id, p0.split_k)
                    if p0.search_error:
                        vnotes[v] = "search failed, default config: " + p0.search_error[:120]
                    inputs = xpt if x_t else xp
                    calls[v] = lambda i, inputs=inputs, plans=plans: plans[i].run(inputs[i])
                else:
                    raise ValueError(f"unknown variant {v!r}")
                if v in _SPARSE or v in ("dense_masked", "dense_fm"):
                    y = calls[v](0)
                    y = (y.t() if v in _TRANSPOSED_OUT else y)[:t]
                    errs[v] = _rel_err(y, ref.float() * alpha if v == "cslt_i8_f16" else ref)
            except Exception as e:  # noqa: BLE001 - a failing path becomes a row with its reason
                vnotes[v] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                calls.pop(v, None)
                log.warning("%dx%d t=%d %s %s: %s", n, k, t, dtype, v, vnotes[v])
                timing.sync()  # a sticky CUDA error must stop the run, not poison later rows
        bad = {v for v, e in errs.items() if not (e <= (0.0 if is_int and v != "cslt_i8_f16" else tol))}
        for v in bad:
            vnotes[v] = f"wrong result: rel err {errs[v]:.2e} > tol; not timed"
            calls.pop(v, None)
            log.warning("%dx%d t=%d %s %s: %s", n, k, t, dtype, v, vnotes[v])
        timings = time_side_by_side(calls, nsets, mode=mode, target_s=target_s) if calls else {}
        base = timings["dense"].median if "dense" in timings else float("nan")
        for v in variants:
            tm = timings.get(v)
            flops = 2.0 * t * n * k * (0.5 if v == "half" else 1.0)
            ms = tm.median if tm else float("nan")
            alg, sk = info.get(v, (-1, -1))
            note = "; ".join(s for s in (vnotes.get(v, ""), tm.error if tm else "") if s)
            if v in _TRANSPOSED_OUT and not note:
                note = "output is Y^T"
            if tm and tp != t and (v.startswith("torch_cslt") or v.startswith("lt_")):
                note = "; ".join(s for s in (note, f"X padded to {tp} rows") if s)
            rows.append(LayerRow(n, k, t, str(dtype).removeprefix("torch."), v, mode, ms,
                                 base / ms if tm else float("nan"), errs.get(v, 0.0 if tm else float("nan")),
                                 tm is not None, flops / (ms * 1e9) if tm else float("nan"), alg, sk, nsets,
                                 len(tm.ms) if tm else 0, note))
        del calls, timings, xs, xh, xp, xpt, xst, xd, xf16, ref
        torch.cuda.empty_cache()
    return rows
