"""Bandwidth of the glue kernels that replace the transpose copies (issue 16), against what torch runs.

For LLaMA-7B activation shapes (4096 and 11008 features x 2048 tokens): torch's ``.t().contiguous()`` vs the
Triton tiled transpose at several tiles; ``res + yt.t()`` vs `add_transposed`; the standard RoPE on a head view
vs `rope_heads`; token-major `_rms` vs `rms_norm_cols`; ``F.silu(g) * u`` vs `silu_mul`. GB/s counts the bytes
each op must move (every input read once, every output written once). Each Triton result is checked
against the torch one before timing (transposes exactly).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lottery.bench import timing
from lottery.bench.llama import _rms, _rope
from lottery.bench.timing import time_side_by_side
from lottery.export import fused

log = logging.getLogger(__name__)

__all__ = ["TILES", "KernelRow", "bench_kernels", "best_tile"]

TILES = ((64, 64, 4), (32, 32, 4), (64, 128, 4), (128, 64, 8), (32, 128, 4))  # (BR, BC, warps)
L2_BYTES = 256 << 20


@dataclass
class KernelRow:
    op: str
    variant: str
    features: int
    tokens: int
    dtype: str
    ms: float
    gbps: float
    speedup: float  # over the torch variant of the same op
    rel_err: float
    note: str = ""


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _time_op(op: str, n: int, t: int, dtype: torch.dtype, variants: dict[str, Callable[[int], torch.Tensor]],
             ref: str, nbytes: int, nsets: int, target_s: float, exact: bool) -> list[KernelRow]:
    dt = str(dtype).removeprefix("torch.")
    want = variants[ref](0)
    ok: dict[str, Callable[[int], torch.Tensor]] = {}
    rows: list[KernelRow] = []
    errs: dict[str, float] = {}
    for name, f in variants.items():
        try:
            got = f(0)
            errs[name] = 0.0 if name == ref else _rel(got, want)
            if (errs[name] == 0.0) if exact else errs[name] <= 1e-2:
                ok[name] = f
            else:
                rows.append(KernelRow(op, name, n, t, dt, math.nan, math.nan, math.nan, errs[name], "wrong result"))
        except Exception as e:  # noqa: BLE001 - a kernel that fails is a row, not a crash
            timing.sync()
            rows.append(KernelRow(op, name, n, t, dt, math.nan, math.nan, math.nan, math.nan,
                                  f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"))
    tm = time_side_by_side(ok, nsets, mode="graph", target_s=target_s)
    base = tm[ref].median if ref in tm else math.nan
    for name, tmv in tm.items():
        ms = tmv.median
        rows.append(KernelRow(op, name, n, t, dt, ms, nbytes / (ms * 1e6), base / ms, errs[name], tmv.error))
    return rows


def _bench_shape(n: int, tokens: int, dtype: torch.dtype, heads: int, first: bool, target_s: float,
                 g: torch.Generator) -> list[KernelRow]:
    es = torch.tensor([], dtype=dtype).element_size()
    nsets = max(2, min(8, math.ceil(L2_BYTES / (2 * n * tokens * es))))
    yts = [torch.randn(n, tokens, device=timing.DEVICE, generator=g).to(dtype) for _ in range(nsets)]
    var: dict[str, Callable[[int], torch.Tensor]] = {"torch": lambda i: yts[i].t().contiguous()}
    for br, bc, w in TILES:
        var[f"triton_{br}x{bc}_w{w}"] = (lambda i, br=br, bc=bc, w=w: fused.transpose(
            yts[i], impl="triton", tile=(br, bc), num_warps=w))
    rows = _time_op("transpose", n, tokens, dtype, var, "torch", 2 * n * tokens * es, nsets, target_s, True)
    res = [torch.randn(tokens, n, device=timing.DEVICE, generator=g).to(dtype) for _ in range(nsets)]
    rows += _time_op("add_transposed", n, tokens, dtype,
                     {"torch": lambda i: res[i] + yts[i].t(),
                      "triton": lambda i: fused.add_transposed(res[i], yts[i], impl="triton")},
                     "torch", 3 * n * tokens * es, nsets, target_s, False)
    if first:
        tok = [y.t().contiguous() for y in yts]  # the same values token-major, as the dense block has them
        hd = n // heads
        ang = torch.rand(tokens, hd // 2, device=timing.DEVICE, generator=g) * 6.0
        cos, sin = torch.cat((ang, ang), -1).cos().to(dtype), torch.cat((ang, ang), -1).sin().to(dtype)
        outs = [torch.empty(1, heads, tokens, hd, device=timing.DEVICE, dtype=dtype) for _ in range(nsets)]
        rows += _time_op("rope_heads", n, tokens, dtype, {
            # The old 2:4 block: copy Yᵀ back to Y, then RoPE on its head view; the dense block: RoPE on Y.
            "torch": lambda i: _rope(yts[i].t().contiguous().view(1, tokens, heads, hd).transpose(1, 2), cos, sin),
            "torch_on_Y": lambda i: _rope(tok[i].view(1, tokens, heads, hd).transpose(1, 2), cos, sin),
            "triton": lambda i: fused.rope_heads(yts[i], cos, sin, 0, outs[i], tokens, impl="triton")},
            "torch", 2 * n * tokens * es, nsets, target_s, False)
        w = torch.ones(n, device=timing.DEVICE, dtype=dtype)
        rows += _time_op("rms_norm", n, tokens, dtype, {
            "torch_token_major": lambda i: _rms(tok[i], w, 1e-6),
            "triton_cols": lambda i: fused.rms_norm_cols(yts[i], w, 1e-6, impl="triton").t()},
            "torch_token_major", 2 * n * tokens * es, nsets, target_s, False)
    else:
        us = [torch.randn(n, tokens, device=timing.DEVICE, generator=g).to(dtype) for _ in range(nsets)]
        rows += _time_op("silu_mul", n, tokens, dtype, {
            "torch": lambda i: F.silu(yts[i]) * us[i],
            "triton": lambda i: fused.silu_mul(yts[i], us[i], impl="triton")},
            "torch", 3 * n * tokens * es, nsets, target_s, False)
    return rows


def bench_kernels(dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16), tokens: int = 2048,
                  features: tuple[int, ...] = (4096, 11008), heads: int = 32, target_s: float = 0.1,
                  seed: int = 0) -> list[KernelRow]:
    """All ops, all dtypes; rows in the order measured. The first feature count also times RoPE (as q, with
    ``heads`` heads) and RMSNorm; the others SiLU·mul."""
    g = torch.Generator(device=timing.DEVICE).manual_seed(seed)
    rows: list[KernelRow] = []
    for dtype in dtypes:
        for n in features:
            rows += _bench_shape(n, tokens, dtype, heads, n == features[0], target_s, g)
            torch.cuda.empty_cache()
            log.info("kernels %s %d x %d done", dtype, n, tokens)
    return rows


def best_tile(rows: list[KernelRow]) -> tuple[int, int, int] | None:
    """The transpose tile with the best mean GB/s over all measured shapes, if any Triton tile ran."""
    score: dict[str, list[float]] = {}
    for r in rows:
        if r.op == "transpose" and r.variant.startswith("triton_") and math.isfinite(r.gbps):
            score.setdefault(r.variant, []).append(r.gbps)
    if not score:
        return None
    name = max(score, key=lambda v: sum(score[v]) / len(score[v]))
    br, bc = name.removeprefix("triton_").split("_w")[0].split("x")
    return int(br), int(bc), int(name.split("_w")[1])
