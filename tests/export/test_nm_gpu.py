"""Issue 16 on the GPU (marked gpu; `pytest -m gpu tests/export`): the Triton glue kernels compiled, cuSPARSELt
through `CsltWeight` in both operand layouts and int8, and the Yᵀ-consuming models against the dense one."""

import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_kernels_on_gpu(dtype):
    from lottery.export import fused

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1000, 300, device="cuda", generator=g).to(dtype)
    assert torch.equal(fused.transpose(x, impl="triton"), x.t().contiguous())
    assert torch.equal(fused.transpose(x[:, 7:250], impl="triton"), x[:, 7:250].t().contiguous())
    res = torch.randn(300, 1000, device="cuda", generator=g).to(dtype)
    assert torch.equal(fused.add_transposed(res, x, impl="triton"), res + x.t())
    heads, hd, b, t = 4, 128, 2, 37
    xt = torch.randn(heads * hd, b * t + 3, device="cuda", generator=g).to(dtype)
    cos, sin = torch.randn(64, hd, device="cuda", generator=g).to(dtype), torch.randn(64, hd, device="cuda").to(dtype)
    for rotate in (True, False):
        want = fused.rope_heads(xt, cos, sin, 5, torch.empty(b, heads, t, hd, device="cuda", dtype=dtype), t, rotate,
                                impl="torch")
        got = fused.rope_heads(xt, cos, sin, 5, torch.empty(b, heads, t, hd, device="cuda", dtype=dtype), t, rotate,
                               impl="triton")
        # one rounding of the output apart: bf16 keeps 8 significant bits (unit roundoff 3.9e-3), fp16 11
        assert _rel(got, want) <= (1e-3 if dtype == torch.float16 else 4e-3)
    xh, w = torch.randn(4096, 40, device="cuda", generator=g).to(dtype), torch.randn(4096, device="cuda").to(dtype)
    assert _rel(fused.rms_norm_cols(xh, w, 1e-6, impl="triton"), fused.rms_norm_cols(xh, w, 1e-6, impl="torch")) <= 4e-3
    gg, uu = x, torch.randn_like(x)
    assert _rel(fused.silu_mul(gg, uu, impl="triton"), F.silu(gg) * uu) <= 4e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 16, 300])
def test_cslt_weight_both_layouts(dtype, tokens):
    from lottery.export.cslt import CsltWeight
    from lottery.pruning.nm import nm_mask

    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(256, 512, device="cuda", generator=g).to(dtype)
    w = w * nm_mask(w.float().abs(), 2, 4).to(dtype)
    x = torch.randn(tokens, 512, device="cuda", generator=g).to(dtype)
    cw = CsltWeight(w)
    exact = (w.double() @ x.double().t())
    tol = max(1e-3, 2 * _rel(F.linear(x, w).t(), exact))  # the export tests' tolerance
    for b in (x.t(), x.t().contiguous()):
        assert _rel(cw.mm_t(b), exact) <= tol
    # one search config per operand layout; a single column is contiguous either way, so it has one layout
    assert len(cw.configs) == (1 if tokens == 1 else 2)


def test_cslt_weight_int8_exact_and_fp16_out():
    from lottery.export.cslt import CsltWeight
    from lottery.pruning.nm import nm_mask

    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randint(-8, 8, (256, 512), device="cuda", generator=g, dtype=torch.int8)
    w = w * nm_mask(w.float().abs(), 2, 4).to(torch.int8)
    x = torch.randint(-8, 8, (64, 512), device="cuda", generator=g, dtype=torch.int8)
    exact = (w.double() @ x.double().t())
    cw = CsltWeight(w)
    assert torch.equal(cw.mm_t(x.t(), out_dtype=torch.int32).double(), exact)
    alpha = torch.rand(256, device="cuda", generator=g) / 64
    assert _rel(cw.mm_t(x.t(), out_dtype=torch.float16, alpha=alpha), exact * alpha.double()[:, None]) <= 1e-3


def test_variants_pass_their_checks_on_gpu():
    from lottery.bench.e2e_nm import check_variants
    from lottery.bench.llama import LlamaDims
    from lottery.bench.variants import VARIANTS, build_variants
    from lottery.export.dispatch import DispatchTable

    d = LlamaDims(512, 1024, 2, 4, 4, 1000, 1e-6, 1e4)
    table = DispatchTable()
    table.record(1024, 512, 8, torch.float16, "contig", 1.0, 2.0)  # gate/up at 8 columns: dense
    models = build_variants(d, torch.float16, 3, 129, VARIANTS, dispatch=table)
    rows = check_variants(models, d, torch.float16, 128, (1, 3))
    assert rows and all(r.ok for r in rows), [r for r in rows if not r.ok]
    assert models["sparse_fm"].blocks[0].lin["gate"].choices[(8, "contig")] == "dense"
