"""Issue 16 on a CPU: the Yᵀ-consuming block equals the standard one; the 2:4 paths (through a faithful fake of
torch's cuSPARSELt ops) equal the masked dense model; configs, padding, layouts and the dispatch table."""

import math

import pytest
import torch
from fake_cslt import sparse_mm

from lottery.bench.glue import DenseT, GlueLlama
from lottery.bench.llama import LlamaDims, _Dense, build_models
from lottery.bench.variants import build_variants
from lottery.export.cslt import CsltWeight, TransposedLinear, b_layout
from lottery.export.dispatch import DispatchTable, bucket
from lottery.pruning.nm import nm_mask

D = LlamaDims(64, 96, 2, 4, 4, 50, 1e-6, 1e4)  # head_dim 16


def _glue_from(tiny, layout: str, fuse: bool = False) -> GlueLlama:
    """A GlueLlama over the same weights as a TinyLlama built by build_models (dense linears)."""
    from lottery.bench.glue import GlueBlock

    blocks = [GlueBlock(D, {n: DenseT(m.weight) for n, m in blk.lin.items()}, blk.norm1, blk.norm2, layout,
                        impl="torch", fuse_prefill_cache=fuse) for blk in tiny.blocks]
    return GlueLlama(D, tiny.embed, blocks, tiny.norm, tiny.head, tiny.cache, (tiny.cos, tiny.sin), layout,
                     impl="torch")


@pytest.mark.parametrize("layout,fuse", [("feature", False), ("token", False), ("feature", True)])
def test_glue_block_matches_standard_block_prefill_and_decode(layout, fuse):
    models = build_models(D, torch.float32, 3, 40, lambda w, name: _Dense(w), device="cpu")
    ref = models["dense"]
    glue = _glue_from(ref, layout, fuse)
    ids = torch.randint(0, D.vocab, (3, 13), generator=torch.Generator().manual_seed(1))
    # Prefill of 3 sequences (39 tokens, padded to 40 columns), then one decode step each (3 -> 8 columns).
    want = ref(ids[:, :12], 0)
    want_step = ref(ids[:, 12:], 12)
    ref_cache = [(k.clone(), v.clone()) for k, v in ref.cache]
    got = glue(ids[:, :12], 0)
    got_step = glue(ids[:, 12:], 12)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_step, want_step, atol=1e-5, rtol=1e-4)
    for (k, v), (k0, v0) in zip(glue.cache, ref_cache, strict=True):
        torch.testing.assert_close(k[:3, :, :13], k0[:3, :, :13], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(v[:3, :, :13], v0[:3, :, :13], atol=1e-5, rtol=1e-4)
    # And one sequence (1 token -> 8 padded columns) against a fresh prefill.
    full = ref(ids[:1], 0)
    glue(ids[:1, :12], 0)
    torch.testing.assert_close(glue(ids[:1, 12:], 12), full, atol=1e-5, rtol=1e-4)


def test_all_variants_match_dense_with_fake_cslt(fake_cslt):
    table = DispatchTable()
    # Decode-sized calls (8 padded columns) go dense for the MLP shapes, prefill ones 2:4.
    for n, k in [(96, 64), (64, 96)]:
        for layout in ("contig", "view"):
            table.record(n, k, 8, torch.float32, layout, dense_ms=1.0, sparse_ms=2.0)
            table.record(n, k, 16, torch.float32, layout, dense_ms=2.0, sparse_ms=1.0)
    names = ("dense", "sparse_copy", "sparse_tok", "sparse_fm", "dense_tok", "dense_fm", "stub", "stub_fm")
    models = build_variants(D, torch.float32, 2, 24, names, device="cpu", dispatch=table, impl="torch")
    ids = torch.randint(0, D.vocab, (2, 9), generator=torch.Generator().manual_seed(2))
    out = {}
    for name in names:
        out[name] = (models[name](ids[:, :8], 0), models[name](ids[:, 8:], 8))
    for name in ("sparse_copy", "sparse_tok", "sparse_fm", "dense_tok", "dense_fm"):
        for got, want in zip(out[name], out["dense"], strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=name)
    assert out["stub"][0].shape == out["dense"][0].shape == out["stub_fm"][0].shape == (2, 1, D.vocab)
    gate = models["sparse_fm"].blocks[0].lin["gate"]
    assert gate.choices == {(16, "contig"): "sparse", (8, "contig"): "dense"}
    assert models["sparse_tok"].blocks[0].lin["gate"].choices == {(16, "view"): "sparse", (8, "view"): "dense"}
    assert fake_cslt["search"] > 0


def test_cslt_weight_layouts_padding_and_configs(fake_cslt):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 48, generator=g)
    w = w * nm_mask(w.abs(), 2, 4)
    cw = CsltWeight(w)
    x = torch.randn(11, 48, generator=g)  # 11 tokens: padded to 16 columns inside mm_t
    want = w @ x.t()
    assert b_layout(x.t()) == "view" and b_layout(x.t().contiguous()) == "contig"
    torch.testing.assert_close(cw.mm_t(x.t()), want)
    torch.testing.assert_close(cw.mm_t(x.t().contiguous()), want)
    # A column slice is neither layout: the real binding would misread it (as the fake does); mm_t copies it.
    wide = torch.randn(48, 32, generator=g)
    sl = wide[:, :16]
    assert b_layout(sl) == "other"
    assert not torch.allclose(sparse_mm(w, sl), w @ sl)
    torch.testing.assert_close(cw.mm_t(sl), w @ sl)
    assert set(cw.configs) == {(16, True, None), (16, False, None)}
    assert all(c.alg_id == 3 and c.searched for c in cw.configs.values())
    assert "16:view:None" in cw.state()
    # A second weight of the same shape reuses the shared search.
    calls = fake_cslt["search"]
    CsltWeight(w).mm_t(x.t())
    assert fake_cslt["search"] == calls


def test_transposed_linear_without_sparse_is_dense():
    w = torch.randn(8, 16)
    b = torch.randn(16, 5)
    torch.testing.assert_close(TransposedLinear(w)(b), w @ b)
    with pytest.raises(ValueError):
        TransposedLinear(None)


def test_dispatch_table_buckets_nearest_and_json(tmp_path):
    assert [bucket(t) for t in (1, 2, 3, 8, 9, 2048, 2049)] == [1, 2, 4, 8, 16, 2048, 4096]
    with pytest.raises(ValueError):
        bucket(0)
    t = DispatchTable()
    assert t.record(4096, 4096, 1, torch.bfloat16, "contig", 0.02, 0.03) == "dense"
    assert t.record(4096, 4096, 2048, torch.bfloat16, "contig", 0.10, 0.07) == "sparse"
    assert t.record(4096, 4096, 16, torch.bfloat16, "contig", 0.02, math.nan) == "dense"  # failed 2:4: dense
    assert t.choose(4096, 4096, 1, torch.bfloat16, "contig") == "dense"
    assert t.choose(4096, 4096, 1500, torch.bfloat16, "contig") == "sparse"  # bucket 2048
    assert t.choose(4096, 4096, 3, torch.bfloat16, "contig") == "dense"  # nearest measured: 1 (and 16)
    assert t.choose(4096, 4096, 300, torch.bfloat16, "contig") == "sparse"  # 512: nearer 2048 than 16
    assert t.choose(4096, 4096, 1, torch.float16, "contig") == "sparse"  # never measured
    t.save(tmp_path / "d.json")
    back = DispatchTable.load(tmp_path / "d.json")
    assert back.entries == t.entries and back.times[(4096, 4096, 2048, "bfloat16", "contig")] == (0.10, 0.07)
