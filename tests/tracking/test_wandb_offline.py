"""The offline W&B runs hold the logged metrics and the mask/ticket artifacts, read back from their files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import TINY, make_config

from lottery.imp.job import run


def _records(run_dir) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_offline_runs_contain_metrics_and_artifacts(tmp_path, mnist_root) -> None:
    cfg = make_config([*TINY, "imp.levels=1", f"store.root={tmp_path / 'runs'}"])
    run(cfg)
    (store,) = (tmp_path / "runs").glob("imp_*")
    offline = sorted((store / "wandb").glob("offline-run-*"))
    assert len(offline) == 3  # one per level, one for the summary table
    by_name = {}
    for run_dir in offline:
        records = _records(run_dir)
        config = next(r["run"] for r in records if r["type"] == "run")
        by_name[config["display_name"]] = records
    level_runs = sorted(name for name in by_name if "level" in name)
    assert len(level_runs) == 2 and any(name.endswith("summary") for name in by_name)
    for level, name in enumerate(level_runs):
        records = by_name[name]
        history = [r["history"]["item"] for r in records if r["type"] == "history"]
        history = [h for h in history if "val/acc" in h]  # the rest are the mask-analysis histograms
        assert [h["iteration"] for h in history] == [20, 40, 60]
        assert all(0 <= h["val/acc"] <= 1 and h["test/loss"] > 0 for h in history)
        metrics = json.loads((store / f"level_{level:02d}" / "metrics.json").read_text())
        assert [h["val/acc"] for h in history] == pytest.approx([h["val_acc"] for h in metrics["history"]], rel=1e-6)
        artifacts = {r["artifact"]["type"]: r["artifact"] for r in records if r["type"] == "artifact"}
        assert set(artifacts) == {"mask", "ticket"}
        assert artifacts["mask"]["metadata"] and "percent_remaining" in artifacts["mask"]["metadata"]


def test_batched_engine_logs_each_seeds_curves_to_its_own_runs(tmp_path, mnist_root) -> None:
    cfg = make_config([*TINY, "imp.levels=0", "training.engine=batched", "seeds=[0,1]",
                       f"store.root={tmp_path / 'runs'}"])
    run(cfg)
    stores = sorted((tmp_path / "runs").glob("imp_*"))
    assert len(stores) == 2
    for store in stores:
        offline = sorted((store / "wandb").glob("offline-run-*"))
        assert len(offline) == 2  # the level and the summary
        level_records = next(r for r in map(_records, offline)
                             if any(x["type"] == "history" and "val/acc" in x["history"]["item"] for x in r))
        history = [r["history"]["item"] for r in level_records if r["type"] == "history"]
        history = [h for h in history if "val/acc" in h]
        metrics = json.loads((store / "level_00" / "metrics.json").read_text())
        assert [h["iteration"] for h in history] == [20, 40, 60]
        assert [h["val/acc"] for h in history] == pytest.approx([h["val_acc"] for h in metrics["history"]], rel=1e-6)


def test_online_without_network_falls_back_to_offline(tmp_path, mnist_root, monkeypatch, caplog) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    cfg = make_config([*TINY, "imp.levels=0", "logger.mode=online", "logger.init_timeout=5",
                       f"store.root={tmp_path / 'runs'}"])
    with caplog.at_level("WARNING"):
        rows = run(cfg)
    assert len(rows) == 1 and rows[0]["final_test_acc"] > 0.5
    assert any("continuing offline" in r.getMessage() for r in caplog.records)
    (store,) = (tmp_path / "runs").glob("imp_*")
    assert len(list((store / "wandb").glob("offline-run-*"))) == 2  # the level and the summary, kept offline
