"""A LLaMA-shaped decoder with random weights and a static KV cache, small enough to read, fit for graph capture.

Dimensions come from `transformers.LlamaConfig()` (its defaults are LLaMA-7B). Only the seven block linears
(q, k, v, o, gate, up, down) change between the dense and the 2:4 model; embedding, norms, attention,
lm_head and cache are shared objects. A third model swaps the block linears for stubs that return a
pre-made tensor, so dense minus stub is the time spent in those matmuls (Amdahl's f).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lottery.pruning.nm import nm_mask

__all__ = ["BLOCK_LINEARS", "Block", "DenseLinear", "LlamaDims", "TinyLlama", "build_models", "llama7b_dims"]

BLOCK_LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class LlamaDims:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    eps: float
    rope_theta: float
    head_dim: int | None = None  # None: hidden // heads; set when heads were removed (a narrowed model)

    @property
    def hd(self) -> int:
        """The width of one attention head."""
        return self.head_dim or self.hidden // self.heads


def llama7b_dims(layers: int | None = None) -> LlamaDims:
    """LLaMA-7B dimensions from transformers' LlamaConfig defaults (hard-coded if transformers is absent)."""
    try:
        from transformers import LlamaConfig

        c = LlamaConfig()
        rope = getattr(c, "rope_theta", None) or (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 1e4)
        d = LlamaDims(c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                      c.num_key_value_heads or c.num_attention_heads, c.vocab_size, c.rms_norm_eps, float(rope))
    except ImportError:
        d = LlamaDims(4096, 11008, 32, 32, 32, 32000, 1e-6, 1e4)
    return d if layers is None else LlamaDims(**{**d.__dict__, "layers": layers})


def _rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Block(nn.Module):
    """Pre-norm attention + SwiGLU MLP; `lin` maps BLOCK_LINEARS names to any (x -> x·Wᵀ) module."""

    def __init__(self, d: LlamaDims, lin: dict[str, nn.Module], norm1: Tensor, norm2: Tensor) -> None:
        super().__init__()
        self.d = d
        self.lin = nn.ModuleDict(lin)
        self.register_buffer("norm1", norm1, persistent=False)
        self.register_buffer("norm2", norm2, persistent=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kc: Tensor, vc: Tensor, pos: int) -> Tensor:
        b, t, _ = x.shape
        d, hd = self.d, self.d.hd
        h = _rms(x, self.norm1, d.eps)
        q = self.lin["q"](h).view(b, t, d.heads, hd).transpose(1, 2)
        k = self.lin["k"](h).view(b, t, d.kv_heads, hd).transpose(1, 2)
        v = self.lin["v"](h).view(b, t, d.kv_heads, hd).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        kc[:, :, pos:pos + t] = k
        vc[:, :, pos:pos + t] = v
        if pos == 0:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=d.kv_heads != d.heads)
        else:  # decode: one new token attends to the whole cache up to itself, no mask needed
            a = F.scaled_dot_product_attention(q, kc[:, :, :pos + t], vc[:, :, :pos + t],
                                               enable_gqa=d.kv_heads != d.heads)
        x = x + self.lin["o"](a.transpose(1, 2).reshape(b, t, d.heads * hd))
        h = _rms(x, self.norm2, d.eps)
        return x + self.lin["down"](F.silu(self.lin["gate"](h)) * self.lin["up"](h))


class TinyLlama(nn.Module):
    """Embedding, blocks, final norm and lm_head over a static cache (B, kv_heads, max_len, head_dim)."""

    def __init__(self, d: LlamaDims, embed: Tensor, blocks: list[Block], norm: Tensor, head: Tensor,
                 cache: list[tuple[Tensor, Tensor]], rope: tuple[Tensor, Tensor]) -> None:
        super().__init__()
        self.d, self.embed, self.blocks, self.norm, self.head = d, embed, nn.ModuleList(blocks), norm, head
        self.cache, self.cos, self.sin = cache, rope[0], rope[1]

    @torch.no_grad()
    def forward(self, ids: Tensor, pos: int) -> Tensor:
        b, t = ids.shape
        x = F.embedding(ids, self.embed)
        cos, sin = self.cos[pos:pos + t], self.sin[pos:pos + t]
        for blk, (kc, vc) in zip(self.blocks, self.cache, strict=True):
            x = blk(x, cos, sin, kc[:b], vc[:b], pos)
        return F.linear(_rms(x[:, -1:], self.norm, self.d.eps), self.head)


class _Dense(nn.Module):
    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", w, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


DenseLinear = _Dense  # x -> x·Wᵀ over a fixed weight (no bias), the dense models' linear


class _Stub(nn.Module):
    """Returns a pre-made random tensor of the right shape: the model minus this matmul."""

    def __init__(self, out_features: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.dtype, self.cache = out_features, dtype, {}

    def forward(self, x: Tensor) -> Tensor:
        shape = (*x.shape[:-1], self.out_features)
        y = self.cache.get(shape)
        if y is None:
            y = self.cache[shape] = torch.randn(shape, device=x.device).mul_(0.02).to(self.dtype)
        return y


RandFn = Callable[..., Tensor]


def shared_parts(d: LlamaDims, dtype: torch.dtype, max_len: int, device: str, seed: int = 0
                 ) -> tuple[RandFn, Tensor, Tensor, Tensor, tuple[Tensor, Tensor]]:
    """What every benchmark model variant shares: the seeded source of random weights (`rand(*shape, std=)`;
    later draws continue its sequence), the embedding, the head, the final norm and the RoPE (cos, sin) tables."""
    g = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape: int, std: float = 0.02) -> Tensor:
        return (torch.randn(shape, device=device, generator=g) * std).to(dtype)

    embed, head = rand(d.vocab, d.hidden), rand(d.vocab, d.hidden)
    norm = torch.ones(d.hidden, device=device, dtype=dtype)
    hd = d.hd
    inv = 1.0 / (d.rope_theta ** (torch.arange(0, hd, 2, device=device).float() / hd))
    ang = torch.outer(torch.arange(max_len, device=device).float(), inv)
    ang = torch.cat((ang, ang), dim=-1)
    return rand, embed, head, norm, (ang.cos().to(dtype), ang.sin().to(dtype))


def build_models(d: LlamaDims, dtype: torch.dtype, max_batch: int, max_len: int,
                 sparse_linear: Callable[[Tensor, str], nn.Module], seed: int = 0,
                 device: str = "cuda") -> dict[str, TinyLlama]:
    """Dense (2:4-masked weights), sparse (`sparse_linear(masked weight, name)`) and stub models sharing the
    rest."""
    hd = d.hidden // d.heads
    shapes = {"q": (d.hidden, d.hidden), "k": (d.kv_heads * hd, d.hidden), "v": (d.kv_heads * hd, d.hidden),
              "o": (d.hidden, d.hidden), "gate": (d.intermediate, d.hidden), "up": (d.intermediate, d.hidden),
              "down": (d.hidden, d.intermediate)}
    rand, embed, head, norm, rope = shared_parts(d, dtype, max_len, device, seed)
    cache = [(rand(max_batch, d.kv_heads, max_len, hd, std=1.0), rand(max_batch, d.kv_heads, max_len, hd, std=1.0))
             for _ in range(d.layers)]
    blocks: dict[str, list[Block]] = {"dense": [], "sparse": [], "stub": []}
    for _ in range(d.layers):
        n1, n2 = norm.clone(), norm.clone()
        dense, sparse, stub = {}, {}, {}
        for name, (n, k) in shapes.items():
            w = rand(n, k, std=1.0 / math.sqrt(k))
            w.mul_(nm_mask(w.abs(), 2, 4))
            dense[name], sparse[name], stub[name] = _Dense(w), sparse_linear(w, name), _Stub(n, dtype)
        blocks["dense"].append(Block(d, dense, n1, n2))
        blocks["sparse"].append(Block(d, sparse, n1, n2))
        blocks["stub"].append(Block(d, stub, n1, n2))
    return {name: TinyLlama(d, embed, bl, norm, head, cache, rope) for name, bl in blocks.items()}
