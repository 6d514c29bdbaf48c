"""The width_speed bench on the tiny CPU shape: narrowed models compute the dense model with the removed units
zeroed, the dims and parameter counts follow the fractions removed, and the CLI writes its table and CSV."""

from __future__ import annotations

import copy
import csv

import pytest
import torch

from lottery.bench.width_speed import NARROWINGS, build_width_models, main, narrowed_dims, tiny_dims


def test_narrowed_dims_round_the_counts() -> None:
    d = tiny_dims()  # MLP 160, 8 heads over 4 KV groups, head_dim 8
    n = narrowed_dims(d, 0.25, 0.5)
    assert (n.intermediate, n.kv_heads, n.heads, n.hd) == (120, 2, 4, 8)
    assert narrowed_dims(d, 0.0, 0.0).hd == d.hd and narrowed_dims(d, 0.5, 0.0).heads == 8


@pytest.mark.parametrize("variant", ["mlp50", "mlp+heads25", "mlp+heads50"])
def test_narrowed_model_equals_the_masked_dense_model(variant: str) -> None:
    d = tiny_dims()
    models = build_width_models(d, {"dense": (0, 0), variant: NARROWINGS[variant]}, torch.float64, 2, 17, "cpu")
    n = models[variant].d
    masked = copy.deepcopy(models["dense"])
    q, kv = n.heads * n.hd, n.kv_heads * n.hd
    with torch.no_grad():
        for blk in masked.blocks:
            w = {k: lin.weight for k, lin in blk.lin.items()}
            w["gate"][n.intermediate:] = 0
            w["up"][n.intermediate:] = 0
            w["down"][:, n.intermediate:] = 0
            w["q"][q:] = 0
            w["k"][kv:], w["v"][kv:] = 0, 0
            w["o"][:, q:] = 0
    ids = torch.randint(0, d.vocab, (2, 16), generator=torch.Generator().manual_seed(3))
    want, got = masked(ids, 0), models[variant](ids, 0)
    assert torch.allclose(got, want, atol=1e-12, rtol=1e-9)
    assert not torch.allclose(models["dense"](ids, 0), want)  # the removed units did matter


def test_cli_tiny_shape_writes_table_and_csv(tmp_path, capsys) -> None:
    assert main(["--shape", "tiny", "--batches", "1,2", "--prefill", "8", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mlp+heads50" in out and "prefill" in out and "decode" in out
    rows = list(csv.DictReader(open(tmp_path / "width_speed.csv")))
    assert len(rows) == len(NARROWINGS) * 4  # 2 phases x 2 batches
    by = {(r["variant"], r["phase"], r["batch"]): r for r in rows}
    assert float(by[("dense", "prefill", "1")]["speedup"]) == 1.0
    assert int(by[("mlp50", "decode", "2")]["intermediate"]) == 80
    # block linears of the tiny model: q, o 64 x 64; k, v 32 x 64 (4 KV groups x 8); MLP 3 x 64 x 160
    dense_params = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 160
    assert float(by[("mlp50", "decode", "2")]["params_removed"]) == pytest.approx(1.5 * 64 * 160 / dense_params,
                                                                                  rel=1e-5)
    assert all(r["machine"] and float(r["ms"]) > 0 for r in rows)
