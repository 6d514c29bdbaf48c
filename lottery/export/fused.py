"""The glue ops of a 2:4 LLaMA block that consume cuSPARSELt's Yᵀ directly, each with a torch reference.

Every op takes ``impl``: ``"torch"`` (reference, any device), ``"triton"`` (the kernels of
`lottery.export.triton_kernels`; on a CPU tensor Triton's interpreter runs them, which is what the CPU tests
use) or ``"auto"`` (Triton on a CUDA tensor when Triton is installed, else torch).

Layouts: a *feature-major* activation is (features, tokens), the Yᵀ that `torch._cslt_sparse_mm` returns;
token-major is the usual (tokens, features).
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IMPLS", "add_transposed", "resolve_impl", "rms_norm_cols", "rope_heads", "silu_mul", "transpose"]

IMPLS = ("auto", "triton", "torch")
# Tile sizes: 64x64 tiles of 2-byte elements are 8 KB, enough bytes in flight per CTA for HBM3 with 4 warps.
TRANSPOSE_TILE = (64, 64)
TRANSPOSE_WARPS = 4  # (the benchmark sets both to the fastest tile it measured)


def resolve_impl(impl: str, x: Tensor) -> str:
    """"torch" or "triton" for this tensor (see the module docstring)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if x.is_cuda and _have_triton() else "torch"
    return impl


@functools.cache
def _have_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _k(name: str, x: Tensor):
    # Imported on first use: importing lottery.export must not pay for importing triton.
    from lottery.export import triton_kernels

    return triton_kernels.kernel(name, interpret=not x.is_cuda)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def transpose(x: Tensor, impl: str = "auto", tile: tuple[int, int] | None = None,
              num_warps: int | None = None) -> Tensor:
    """A contiguous copy of ``x.t()`` for a 2-D ``x`` of any strides."""
    if x.dim() != 2:
        raise ValueError(f"transpose takes a 2-D tensor, got shape {tuple(x.shape)}")
    if resolve_impl(impl, x) == "torch":
        return x.t().contiguous()
    r, c = x.shape
    y = torch.empty((c, r), dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    br, bc = tile or TRANSPOSE_TILE
    kw = {"num_warps": num_warps or TRANSPOSE_WARPS} if x.is_cuda else {}
    _k("transpose", x)[(_cdiv(r, br), _cdiv(c, bc))](x, y, r, c, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                                                     BR=br, BC=bc, **kw)
    return y


def add_transposed(res: Tensor, yt: Tensor, impl: str = "auto") -> Tensor:
    """``res + yt.t()`` as a new contiguous (T, N) tensor: the residual add after a layer that returned Yᵀ."""
    if res.dim() != 2 or yt.shape != (res.shape[1], res.shape[0]):
        raise ValueError(f"add_transposed: res {tuple(res.shape)} and yt {tuple(yt.shape)} are not (T, N) / (N, T)")
    if resolve_impl(impl, res) == "torch":
        return (res + yt.t()).contiguous()
    t, n = res.shape
    out = torch.empty((t, n), dtype=res.dtype, device=res.device)
    bt, bn = TRANSPOSE_TILE
    _k("add_transposed", res)[(_cdiv(t, bt), _cdiv(n, bn))](
        res, yt, out, t, n, res.stride(0), res.stride(1), yt.stride(0), yt.stride(1), out.stride(0), out.stride(1),
        BT=bt, BN=bn)
    return out


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_heads(xt: Tensor, cos: Tensor, sin: Tensor, pos: int, out: Tensor, seqlen: int, rotate: bool = True,
               impl: str = "auto", out2: Tensor | None = None) -> Tensor:
    """Write feature-major ``xt`` (heads·head_dim, batch·seqlen) into ``out`` (batch, heads, seqlen, head_dim),
    rotated by RoPE at positions ``pos .. pos+seqlen-1`` when ``rotate`` (cos/sin: (max_len, head_dim) tables).

    ``out`` may be any view with unit stride in its last dim, e.g. a slice of a static KV cache: the cache write
    and the transpose are then the same pass. Column c of ``xt`` is token c % seqlen of sequence c // seqlen;
    columns past batch·seqlen (padding) are ignored. ``out2`` (same shape, e.g. the cache slice while ``out`` is
    a fresh tensor for attention) receives the same values in the same pass. Returns ``out``.
    """
    b, heads, t, hd = out.shape
    if t != seqlen or xt.shape[0] != heads * hd or xt.shape[1] < b * t or hd % 2:
        raise ValueError(f"rope_heads: xt {tuple(xt.shape)} does not fill out {tuple(out.shape)} (seqlen {seqlen})")
    if out2 is not None and out2.shape != out.shape:
        raise ValueError(f"rope_heads: out2 {tuple(out2.shape)} is not shaped like out {tuple(out.shape)}")
    if resolve_impl(impl, xt) == "torch":
        x = xt[:, : b * t].t().reshape(b, t, heads, hd).transpose(1, 2)
        if rotate:
            c, s = cos[pos:pos + t], sin[pos:pos + t]
            x = x * c + _rotate_half(x) * s
        out.copy_(x)
        if out2 is not None:
            out2.copy_(x)
        return out
    if out.stride(-1) != 1 or (out2 is not None and out2.stride(-1) != 1):
        raise ValueError("rope_heads: out (and out2) must have unit stride in their last dim")
    half = hd // 2
    bd = 1 << max(0, (half - 1).bit_length())
    bt = 64 if bd <= 64 else 32
    ncols = b * t
    o2 = out if out2 is None else out2
    _k("rope_heads", xt)[(_cdiv(ncols, bt), heads)](
        xt, cos, sin, out, o2, ncols, t, pos, xt.stride(0), xt.stride(1), cos.stride(0), sin.stride(0),
        out.stride(0), out.stride(1), out.stride(2), o2.stride(0), o2.stride(1), o2.stride(2),
        HALF=half, BD=bd, BT=bt, ROTATE=rotate, HAS2=out2 is not None)
    return out


def rms_norm_cols(x: Tensor, w: Tensor, eps: float, impl: str = "auto") -> Tensor:
    """RMSNorm of every column of a feature-major (hidden, tokens) ``x``: the token-major
    ``(x·rsqrt(mean(x²)+eps)).to(dtype) * w`` applied over dim 0. Returns a contiguous (hidden, tokens) tensor."""
    if x.dim() != 2 or w.shape != (x.shape[0],):
        raise ValueError(f"rms_norm_cols: x {tuple(x.shape)} and w {tuple(w.shape)} do not match")
    if resolve_impl(impl, x) == "torch":
        xf = x.float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(0, keepdim=True) + eps)).to(x.dtype) * w[:, None]
        return y.contiguous()
    h, n = x.shape
    bn, bh, ch = 64, 64, 512  # 512-row chunks: 8 partial sums for hidden 4096, ~256 CTAs at 2048 tokens
    s = _cdiv(h, ch)
    part = torch.empty((s, n), dtype=torch.float32, device=x.device)
    out = torch.empty((h, n), dtype=x.dtype, device=x.device)
    _k("col_sumsq", x)[(_cdiv(n, bn), s)](x, part, h, n, x.stride(0), x.stride(1), ch, BH=bh, BN=bn)
    bs = 1 << max(0, (s - 1).bit_length())
    _k("rms_cols_apply", x)[(_cdiv(n, bn), _cdiv(h, bh))](
        x, w, part, out, h, n, s, float(eps), x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        BS=bs, BH=bh, BN=bn)
    return out


def silu_mul(g: Tensor, u: Tensor, impl: str = "auto") -> Tensor:
    """``F.silu(g) * u`` for two tensors of one shape (contiguous ones on the Triton path)."""
    if g.shape != u.shape:
        raise ValueError(f"silu_mul: shapes differ, {tuple(g.shape)} vs {tuple(u.shape)}")
    if resolve_impl(impl, g) == "torch" or not (g.is_contiguous() and u.is_contiguous()):
        return F.silu(g) * u
    out = torch.empty_like(g)
    n = g.numel()
    block = 1024
    _k("silu_mul", g)[(_cdiv(n, block),)](g, u, out, n, BLOCK=block)
    return out
