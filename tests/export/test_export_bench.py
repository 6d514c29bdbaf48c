"""Benchmark pieces that need no GPU: Amdahl, CSV round trip, plot, and the LLaMA-shaped model's cache logic."""

from pathlib import Path

import pytest
import torch

from lottery.bench import amdahl
from lottery.bench.e2e import E2ERow
from lottery.bench.layers import LayerRow
from lottery.bench.llama import LlamaDims, _Dense, build_models
from lottery.bench.report import best_sparse, format_layers, plot, read_csv, write_csv


def test_amdahl_matches_problem_5():
    assert amdahl(0.7, 2.0) == pytest.approx(1.538, abs=1e-3)
    assert amdahl(0.0, 2.0) == 1.0 and amdahl(1.0, 2.0) == pytest.approx(2.0)


def _rows():
    rows = []
    for t, s in [(16, 0.6), (2048, 1.4)]:
        for v, sp in [("dense", 1.0), ("half", 1.9), ("torch_cslt", s), ("torch_semi", s - 0.2)]:
            rows.append(LayerRow(11008, 4096, t, "float16", v, "graph", 0.1 / sp, sp, 1e-5, True, 1.0, 3, 1, 3, 20))
    return rows


def test_csv_round_trip_table_and_plot(tmp_path: Path):
    rows = _rows()
    e2e = [E2ERow("prefill", 1, 2048, "float16", 32, 58.0, 57.0, 23.0, 1.02, 0.6, 1.03, 1.43, 2e-3, 8e-4, 10, "cslt")]
    write_csv(rows, tmp_path / "layers.csv")
    write_csv(e2e, tmp_path / "e2e.csv")
    back = read_csv(tmp_path / "layers.csv")
    assert back[0]["tokens"] == 16 and back[0]["ok"] is True and isinstance(back[0]["ms"], float)
    best = best_sparse(back)
    assert best[(11008, 4096, 2048, "float16", "graph")]["variant"] == "torch_cslt"
    assert "torch_cslt" in format_layers(back)
    plot(back, read_csv(tmp_path / "e2e.csv"), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_tiny_llama_decode_matches_prefill_on_cpu():
    d = LlamaDims(64, 160, 2, 4, 4, 100, 1e-6, 1e4)
    models = build_models(d, torch.float32, 2, 33, lambda w, name: _Dense(w.clone()), device="cpu")
    ids = torch.randint(0, 100, (1, 33), generator=torch.Generator().manual_seed(0))
    full = models["dense"](ids, 0)
    models["dense"](ids[:, :32], 0)
    step = models["dense"](ids[:, 32:], 32)
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(models["sparse"](ids, 0), full, atol=1e-5, rtol=1e-4)
    assert models["stub"](ids, 0).shape == full.shape
