"""Run by test_nm_triton.py in a subprocess with TRITON_INTERPRET=1: every Triton glue kernel against its torch
reference on small CPU shapes, and a tiny GlueLlama with the Triton kernels against the torch ones.
Prints one JSON object: check name -> max relative difference (0.0 = identical)."""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402

from lottery.bench.glue import DenseT, GlueBlock, GlueLlama  # noqa: E402
from lottery.bench.llama import LlamaDims, _Dense, build_models  # noqa: E402
from lottery.export import fused  # noqa: E402


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max |a − b| relative to max |b| (0.0 when identical)."""
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main() -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        name = str(dt).removeprefix("torch.")
        x = torch.randn(70, 100, generator=g).to(dt)
        out[f"transpose/{name}"] = diff(fused.transpose(x, impl="triton"), x.t().contiguous())
        out[f"transpose_strided/{name}"] = diff(fused.transpose(x.t()[3:50], impl="triton"), x.t()[3:50].t())
        out[f"transpose_tile/{name}"] = diff(fused.transpose(x, impl="triton", tile=(32, 128)), x.t())
        res = torch.randn(100, 70, generator=g).to(dt)
        out[f"add_transposed/{name}"] = diff(fused.add_transposed(res, x, impl="triton"), res + x.t())
        for hd in (16, 12):  # 12: half 6, not a power of two (masked lanes)
            heads, b, t, pos = 3, 2, 5, 4
            xt = torch.randn(heads * hd, b * t + 3, generator=g).to(dt)  # 3 padding columns, never read
            cos, sin = torch.randn(20, hd, generator=g).to(dt), torch.randn(20, hd, generator=g).to(dt)
            for rotate in (True, False):
                want = fused.rope_heads(xt, cos, sin, pos, torch.zeros(b, heads, t, hd, dtype=dt), t, rotate,
                                        impl="torch")
                cache = torch.zeros(b, heads, 16, hd, dtype=dt)
                fresh = torch.zeros(b, heads, t, hd, dtype=dt)
                fused.rope_heads(xt, cos, sin, pos, fresh, t, rotate, impl="triton", out2=cache[:, :, pos:pos + t])
                key = f"rope_heads/{name}/hd{hd}/{'rope' if rotate else 'copy'}"
                out[key] = max(diff(cache[:, :, pos:pos + t], want), diff(fresh, want))
                out[key + "/untouched"] = float(cache[:, :, :pos].abs().sum() + cache[:, :, pos + t:].abs().sum())
        xh, w = torch.randn(600, 37, generator=g).to(dt), torch.randn(600, generator=g).to(dt)
        out[f"rms_norm_cols/{name}"] = diff(fused.rms_norm_cols(xh, w, 1e-6, impl="triton"),
                                            fused.rms_norm_cols(xh, w, 1e-6, impl="torch"))
        out[f"rms_norm_cols_view/{name}"] = diff(fused.rms_norm_cols(xh.t().contiguous().t(), w, 1e-6, impl="triton"),
                                                 fused.rms_norm_cols(xh, w, 1e-6, impl="torch"))
        gg, uu = torch.randn(50, 30, generator=g).to(dt), torch.randn(50, 30, generator=g).to(dt)
        out[f"silu_mul/{name}"] = diff(fused.silu_mul(gg, uu, impl="triton"), torch.nn.functional.silu(gg) * uu)
    # A whole tiny model: Triton glue vs torch glue, both residual layouts, prefill and a decode step.
    d = LlamaDims(64, 96, 2, 4, 4, 50, 1e-6, 1e4)
    tiny = build_models(d, torch.float32, 2, 24, lambda w, name: _Dense(w), device="cpu")["dense"]
    ids = torch.randint(0, d.vocab, (2, 9), generator=g)
    for layout, fuse in (("feature", False), ("token", False), ("feature", True)):
        res = {}
        for impl in ("torch", "triton"):
            blocks = [GlueBlock(d, {n: DenseT(m.weight) for n, m in blk.lin.items()}, blk.norm1, blk.norm2, layout,
                                impl=impl, fuse_prefill_cache=fuse) for blk in tiny.blocks]
            m = GlueLlama(d, tiny.embed, blocks, tiny.norm, tiny.head, tiny.cache, (tiny.cos, tiny.sin), layout,
                          impl=impl)
            res[impl] = (m(ids[:, :8], 0), m(ids[:, 8:], 8))
        tag = layout + ("_fused_cache" if fuse else "")
        out[f"model/{tag}/prefill"] = diff(res["triton"][0], res["torch"][0])
        out[f"model/{tag}/decode"] = diff(res["triton"][1], res["torch"][1])
    return out


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
