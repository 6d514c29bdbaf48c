"""The LLaMA block rebuilt around Yᵀ: every block linear returns W·B as (out, tokens), and nothing copies it back.

`torch._cslt_sparse_mm` returns Yᵀ; the standard block (`lottery.bench.llama.Block`) needs Y, and the copies
back ate the whole 2:4 gain end to end (issue 16). Here the block's linears are `TransposedLinear`-like
modules ``B (in, T) -> (out, T)`` and the consumers take that layout as it comes:

- q, k, v: `rope_heads` reads qᵀ/kᵀ/vᵀ and writes (batch, heads, tokens, head_dim), RoPE applied on the way:
  q into a fresh tensor; k and v into the static KV cache and, in prefill, also into fresh tensors in the same
  pass, so that prefill attention reads contiguous (batch, heads, tokens, head_dim) operands rather than cache
  slices (``fuse_prefill_cache=True`` reads the cache instead, saving those writes).
- attention's output (batch, tokens, heads·head_dim) is contiguous token-major, so o reads its transposed view.
- gate/up → `silu_mul` on the two contiguous Yᵀ → down reads the contiguous (intermediate, T) as is.
- the residual stream, ``layout``: ``"feature"`` keeps it (hidden, T) — RMSNorm runs over dim 0
  (`rms_norm_cols`), its output feeds q/k/v/gate/up as a contiguous B, and the o/down outputs add to it
  directly; ``"token"`` keeps it (T, hidden) — the usual RMSNorm, its output's transposed view feeds the
  linears, and o/down are added by `add_transposed` (the transpose fused into the residual add).

Tokens are padded to a multiple of `pad_to` columns (8: cuSPARSELt's minimum) once per forward, so no layer pads
or slices; attention and the cache see only the real tokens. With dense ``torch.mm`` linears and
``impl="torch"`` it runs on a CPU; the tests check it against `TinyLlama` there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lottery.bench.llama import LlamaDims, _rms
from lottery.export.fused import add_transposed, rms_norm_cols, rope_heads, silu_mul, transpose

__all__ = ["LAYOUTS", "DenseT", "GlueBlock", "GlueLlama", "StubT"]

LAYOUTS = ("feature", "token")


class DenseT(nn.Module):
    """B (in, T) -> W·B (out, T) with a dense weight (cuBLAS reads either layout of B without a copy)."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", w, persistent=False)

    def forward(self, b: Tensor) -> Tensor:
        return torch.mm(self.weight, b)


class StubT(nn.Module):
    """Returns a pre-made (out, T) tensor: the block minus this matmul (for Amdahl's f)."""

    def __init__(self, out_features: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.dtype, self.cache = out_features, dtype, {}

    def forward(self, b: Tensor) -> Tensor:
        shape = (self.out_features, b.shape[1])
        y = self.cache.get(shape)
        if y is None:
            y = self.cache[shape] = torch.randn(shape, device=b.device).mul_(0.02).to(self.dtype)
        return y


class GlueBlock(nn.Module):
    """Pre-norm attention + SwiGLU MLP over Yᵀ-returning linears (see the module docstring)."""

    def __init__(self, d: LlamaDims, lin: dict[str, nn.Module], norm1: Tensor, norm2: Tensor, layout: str,
                 impl: str = "auto", fuse_prefill_cache: bool = False) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.d, self.layout, self.impl, self.fuse_prefill_cache = d, layout, impl, fuse_prefill_cache
        self.lin = nn.ModuleDict(lin)
        self.register_buffer("norm1", norm1, persistent=False)
        self.register_buffer("norm2", norm2, persistent=False)

    def _norm(self, x: Tensor, w: Tensor) -> Tensor:
        """The linears' operand B (hidden, Tp): contiguous (feature) or the transposed view (token)."""
        if self.layout == "feature":
            return rms_norm_cols(x, w, self.d.eps, impl=self.impl)
        return _rms(x, w, self.d.eps).t()

    def _residual(self, x: Tensor, yt: Tensor) -> Tensor:
        return x + yt if self.layout == "feature" else add_transposed(x, yt, impl=self.impl)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kc: Tensor, vc: Tensor, pos: int, b: int,
                t: int) -> Tensor:
        """x: the residual stream, (hidden, Tp) or (Tp, hidden), Tp >= b·t; kc/vc: (b, kv_heads, max_len, hd)."""
        d, hd = self.d, self.d.hd
        h = self._norm(x, self.norm1)
        q = torch.empty((b, d.heads, t, hd), dtype=x.dtype, device=x.device)
        rope_heads(self.lin["q"](h), cos, sin, pos, q, t, rotate=True, impl=self.impl)
        gqa = d.kv_heads != d.heads
        kt, vt = self.lin["k"](h), self.lin["v"](h)
        if pos == 0 and not self.fuse_prefill_cache:
            k = torch.empty((b, d.kv_heads, t, hd), dtype=x.dtype, device=x.device)
            v = torch.empty_like(k)
            rope_heads(kt, cos, sin, pos, k, t, rotate=True, impl=self.impl, out2=kc[:, :, :t])
            rope_heads(vt, cos, sin, pos, v, t, rotate=False, impl=self.impl, out2=vc[:, :, :t])
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif pos == 0:
            rope_heads(kt, cos, sin, pos, kc[:, :, :t], t, rotate=True, impl=self.impl)
            rope_heads(vt, cos, sin, pos, vc[:, :, :t], t, rotate=False, impl=self.impl)
            a = F.scaled_dot_product_attention(q, kc[:, :, :t], vc[:, :, :t], is_causal=True, enable_gqa=gqa)
        else:  # decode: the new tokens go to the cache and attend to all of it up to themselves
            rope_heads(kt, cos, sin, pos, kc[:, :, pos:pos + t], t, rotate=True, impl=self.impl)
            rope_heads(vt, cos, sin, pos, vc[:, :, pos:pos + t], t, rotate=False, impl=self.impl)
            a = F.scaled_dot_product_attention(q, kc[:, :, :pos + t], vc[:, :, :pos + t], enable_gqa=gqa)
        a2 = a.transpose(1, 2).reshape(b * t, d.heads * hd)
        if not a2.is_contiguous():
            a2 = a2.contiguous()  # the linears need B^T contiguous (cuSPARSELt would misread other strides)
        tp = x.shape[1] if self.layout == "feature" else x.shape[0]
        if tp != b * t:
            a2 = F.pad(a2, (0, 0, 0, tp - b * t))
        x = self._residual(x, self.lin["o"](a2.t()))
        h = self._norm(x, self.norm2)
        m = silu_mul(self.lin["gate"](h), self.lin["up"](h), impl=self.impl)
        return self._residual(x, self.lin["down"](m))


class GlueLlama(nn.Module):
    """Embedding, `GlueBlock`s, final norm and lm_head; same call and outputs as `TinyLlama`."""

    def __init__(self, d: LlamaDims, embed: Tensor, blocks: list[GlueBlock], norm: Tensor, head: Tensor,
                 cache: list[tuple[Tensor, Tensor]], rope: tuple[Tensor, Tensor], layout: str, pad_to: int = 8,
                 impl: str = "auto") -> None:
        super().__init__()
        self.d, self.embed, self.blocks, self.norm, self.head = d, embed, nn.ModuleList(blocks), norm, head
        self.cache, self.cos, self.sin = cache, rope[0], rope[1]
        self.layout, self.pad_to, self.impl = layout, pad_to, impl

    @torch.no_grad()
    def forward(self, ids: Tensor, pos: int) -> Tensor:
        b, t = ids.shape
        n = b * t
        tp = -(-n // self.pad_to) * self.pad_to
        x = F.embedding(ids.reshape(n), self.embed)  # (n, hidden), token c = sequence c // t, position c % t
        if tp != n:
            x = F.pad(x, (0, 0, 0, tp - n))  # zero tokens stay finite through every block and are never read
        if self.layout == "feature":
            x = transpose(x, impl=self.impl)
        for blk, (kc, vc) in zip(self.blocks, self.cache, strict=True):
            x = blk(x, self.cos, self.sin, kc[:b], vc[:b], pos, b, t)
        last = x[:, t - 1:n:t].t() if self.layout == "feature" else x[t - 1:n:t]  # (b, hidden)
        return F.linear(_rms(last, self.norm, self.d.eps), self.head).unsqueeze(1)
