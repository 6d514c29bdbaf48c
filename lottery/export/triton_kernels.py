"""Triton kernels that remove the transpose copies around cuSPARSELt's Yᵀ output (issue 16).

`torch._cslt_sparse_mm(W_c, B)` computes W·B and returns it row-major, i.e. Yᵀ (N, T) for B = Xᵀ. torch's
strided copy back to Y runs at ~0.6 TB/s on an H200; these kernels either transpose with coalesced tiles
(`transpose`) or fold the transpose into an op the model runs anyway: the residual add (`add_transposed`),
RoPE plus the write into attention's (batch, heads, tokens, head_dim) layout or the KV cache (`rope_heads`),
RMSNorm over dim 0 for feature-major activations (`rms_norm_cols`) and SiLU·mul (`silu_mul`).

The kernels are plain functions here and are JIT-compiled on first use (`kernel(name)`). Under
``TRITON_INTERPRET=1`` (set before triton is imported) Triton's interpreter runs them on CPU tensors, which is
how the CPU tests check them.
Numerics follow the torch reference ops in `lottery.export.fused` rounding for rounding (each intermediate that
torch rounds to the activation dtype is rounded here too), so fp16/bf16 results match them closely.
Nothing here is imported unless Triton is installed; `available()` says whether it is.
"""

from __future__ import annotations

import functools
import os
from typing import Any

try:  # Triton ships with torch's CUDA wheels on Linux; CPU-only installs may lack it.
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only without triton
    triton = tl = None  # type: ignore[assignment]
    _HAVE_TRITON = False

__all__ = ["available", "kernel"]


def available() -> bool:
    """Whether Triton can be imported here."""
    return _HAVE_TRITON


if _HAVE_TRITON:

    def _transpose(x, y, R, C, sxr, sxc, syr, syc, BR: tl.constexpr, BC: tl.constexpr):
        # y[c, r] = x[r, c]. The load is coalesced along c (x's unit stride), the store along r; Triton
        # converts the tile's register layout between them through shared memory.
        r = tl.program_id(0) * BR + tl.arange(0, BR)
        c = tl.program_id(1) * BC + tl.arange(0, BC)
        m = (r[:, None] < R) & (c[None, :] < C)
        tile = tl.load(x + r[:, None] * sxr + c[None, :] * sxc, mask=m)
        tl.store(y + c[None, :] * syr + r[:, None] * syc, tile, mask=m)

    def _add_transposed(res, yt, out, T, N, srt, srn, syn, syt, sot, son, BT: tl.constexpr, BN: tl.constexpr):
        # out[t, n] = res[t, n] + yt[n, t], added in fp32 and rounded once (as torch's half/bf16 add does).
        t = tl.program_id(0) * BT + tl.arange(0, BT)
        n = tl.program_id(1) * BN + tl.arange(0, BN)
        m = (t[:, None] < T) & (n[None, :] < N)
        a = tl.load(res + t[:, None] * srt + n[None, :] * srn, mask=m).to(tl.float32)
        b = tl.load(yt + n[None, :] * syn + t[:, None] * syt, mask=m).to(tl.float32)
        tl.store(out + t[:, None] * sot + n[None, :] * son, (a + b).to(out.dtype.element_ty), mask=m)

    def _rope_heads(xt, cos, sin, out, out2, ncols, seqlen, pos0, sxf, sxc, scp, ssp, sob, soh, sot, sob2, soh2,
                    sot2, HALF: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, ROTATE: tl.constexpr,
                    HAS2: tl.constexpr):
        # xt is feature-major (heads*head_dim, batch*seqlen): column c is token c % seqlen of sequence
        # c // seqlen. Head h's rows h*head_dim + d go to out[b, h, t, d], rotated by RoPE at position
        # pos0 + t when ROTATE (x*cos + rotate_half(x)*sin, each product rounded as torch rounds it). With HAS2
        # the same values also go to out2 (e.g. a fresh k for attention and the KV cache, in one pass).
        h = tl.program_id(1)
        c = tl.program_id(0) * BT + tl.arange(0, BT)
        d = tl.arange(0, BD)
        cm = c < ncols
        m = (d[:, None] < HALF) & cm[None, :]
        bi = c // seqlen
        ti = c % seqlen
        row = h * (2 * HALF) + d
        p1 = xt + row[:, None] * sxf + c[None, :] * sxc
        x1 = tl.load(p1, mask=m)
        x2 = tl.load(p1 + HALF * sxf, mask=m)
        dt = x1.dtype
        if ROTATE:
            pos = pos0 + ti
            c1 = tl.load(cos + pos[None, :] * scp + d[:, None], mask=m).to(tl.float32)
            c2 = tl.load(cos + pos[None, :] * scp + HALF + d[:, None], mask=m).to(tl.float32)
            s1 = tl.load(sin + pos[None, :] * ssp + d[:, None], mask=m).to(tl.float32)
            s2 = tl.load(sin + pos[None, :] * ssp + HALF + d[:, None], mask=m).to(tl.float32)
            f1 = x1.to(tl.float32)
            f2 = x2.to(tl.float32)
            a1 = (f1 * c1).to(dt).to(tl.float32)
            b1 = ((-f2) * s1).to(dt).to(tl.float32)
            a2 = (f2 * c2).to(dt).to(tl.float32)
            b2 = (f1 * s2).to(dt).to(tl.float32)
            y1 = (a1 + b1).to(out.dtype.element_ty)
            y2 = (a2 + b2).to(out.dtype.element_ty)
        else:
            y1 = x1.to(out.dtype.element_ty)
            y2 = x2.to(out.dtype.element_ty)
        po = out + bi[None, :] * sob + h * soh + ti[None, :] * sot + d[:, None]
        tl.store(po, y1, mask=m)
        tl.store(po + HALF, y2, mask=m)
        if HAS2:
            p2 = out2 + bi[None, :] * sob2 + h * soh2 + ti[None, :] * sot2 + d[:, None]
            tl.store(p2, y1.to(out2.dtype.element_ty), mask=m)
            tl.store(p2 + HALF, y2.to(out2.dtype.element_ty), mask=m)

    def _col_sumsq(x, part, H, N, sxh, sxn, CH, BH: tl.constexpr, BN: tl.constexpr):
        # part[s, n] = sum of x[h, n]^2 over rows h in chunk s (CH rows), in fp32.
        n = tl.program_id(0) * BN + tl.arange(0, BN)
        s = tl.program_id(1)
        nm = n < N
        acc = tl.zeros([BN], dtype=tl.float32)
        for h0 in range(s * CH, s * CH + CH, BH):
            h = h0 + tl.arange(0, BH)
            m = (h[:, None] < H) & nm[None, :]
            v = tl.load(x + h[:, None] * sxh + n[None, :] * sxn, mask=m, other=0.0).to(tl.float32)
            acc += tl.sum(v * v, axis=0)
        tl.store(part + s * N + n, acc, mask=nm)

    def _rms_cols_apply(x, w, part, out, H, N, S, eps, sxh, sxn, soh, son,
                        BS: tl.constexpr, BH: tl.constexpr, BN: tl.constexpr):
        # out[h, n] = (x[h, n] * rsqrt(mean_h x^2 + eps)) rounded to x's dtype, times w[h] (rounded again).
        n = tl.program_id(0) * BN + tl.arange(0, BN)
        h = tl.program_id(1) * BH + tl.arange(0, BH)
        nm = n < N
        sidx = tl.arange(0, BS)
        ps = tl.load(part + sidx[:, None] * N + n[None, :], mask=(sidx[:, None] < S) & nm[None, :], other=0.0)
        r = 1.0 / tl.sqrt(tl.sum(ps, axis=0) / H + eps)
        m = (h[:, None] < H) & nm[None, :]
        v = tl.load(x + h[:, None] * sxh + n[None, :] * sxn, mask=m)
        dt = v.dtype
        y = (v.to(tl.float32) * r[None, :]).to(dt).to(tl.float32)
        wv = tl.load(w + h, mask=h < H).to(tl.float32)
        tl.store(out + h[:, None] * soh + n[None, :] * son, (y * wv[:, None]).to(dt), mask=m)

    def _silu_mul(g, u, out, numel, BLOCK: tl.constexpr):
        # out = silu(g) * u with silu rounded to the dtype first, as F.silu(g) * u does.
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < numel
        gv = tl.load(g + i, mask=m)
        dt = gv.dtype
        gf = gv.to(tl.float32)
        s = (gf / (1.0 + tl.exp(-gf))).to(dt).to(tl.float32)
        uv = tl.load(u + i, mask=m).to(tl.float32)
        tl.store(out + i, (s * uv).to(dt), mask=m)

    _RAW = {"transpose": _transpose, "add_transposed": _add_transposed, "rope_heads": _rope_heads,
            "col_sumsq": _col_sumsq, "rms_cols_apply": _rms_cols_apply, "silu_mul": _silu_mul}
else:  # pragma: no cover
    _RAW = {}


@functools.cache
def kernel(name: str, interpret: bool = False) -> Any:
    """The named kernel, JIT-compiled; ``interpret`` (a CPU tensor) needs TRITON_INTERPRET=1 (module docstring)."""
    if not _HAVE_TRITON:
        raise RuntimeError("Triton is not installed")
    if interpret and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton's own library functions (tl.sum, tl.zeros, ...) are compiled or interpreted when triton is
        # imported, so the interpreter works only if the variable was set before that import.
        raise RuntimeError("Triton kernels run on CPU tensors only under TRITON_INTERPRET=1, set before triton is "
                           "imported")
    return triton.jit(_RAW[name])
