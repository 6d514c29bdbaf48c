"""W&B mirror of an experiment, read back from the offline files: level N uses level N-1's mask and ticket
artifacts (same name and digest), a branch uses its level's; the summary run holds the plots and the sweep
objective; under a sweep agent only the summary run takes the agent's run id."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import TINY, imp_folder, make_config

from lottery.imp.auto import resolve_auto
from lottery.imp.job import run
from lottery.tracking.objective import sweep_objective


def _records(run_dir) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_artifact_lineage_plots_and_objective(tmp_path, mnist_root, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_RUN_ID", "agenttrial1")  # as `wandb agent` sets it for the trial
    monkeypatch.setenv("LOTTERY_OBJECTIVE_REMAINING", "85")
    cfg = make_config([*TINY, "imp.levels=1", "+branch=random_reinit", "branch.seed=7", "branch.levels=[1]"])
    cfg = resolve_auto(cfg).cfg  # as lottery.run does before the job and the sweep objective see it
    run(cfg)
    store = imp_folder(cfg)
    runs = {}
    for run_dir in sorted((store / "wandb").glob("offline-run-*")):
        records = _records(run_dir)
        name = next(r["run"]["display_name"] for r in records if r["type"] == "run")
        runs[name.rsplit("-", 1)[-1] if "summary" in name else name.split("-", 1)[1]] = (run_dir, records)
    assert set(runs) == {"level00", "level01", "level01-random_reinit_s7", "summary"}

    def artifacts(key: str, used: bool) -> dict[str, dict]:
        return {r["artifact"]["name"]: r["artifact"] for r in runs[key][1]
                if r["type"] == "artifact" and bool(r["artifact"].get("use_after_commit")) == used}

    group = store.name
    logged = {**artifacts("level00", False), **artifacts("level01", False)}
    assert set(logged) == {f"{group}-{k}-level0{i}" for k in ("mask", "ticket") for i in (0, 1)}
    assert artifacts("level00", True) == {}  # the dense level derives from nothing logged
    for user, source in (("level01", "level00"), ("level01-random_reinit_s7", "level01")):
        used = artifacts(user, True)
        assert set(used) == {f"{group}-mask-{source}", f"{group}-ticket-{source}"}
        for name, artifact in used.items():  # the same content as the logged artifact: one version on sync
            assert artifact["digest"] == logged[name]["digest"] and artifact["type"] == logged[name]["type"]

    # Only the summary run is the agent's run; level runs got ids of their own.
    assert runs["summary"][0].name.endswith("-agenttrial1")
    assert not any(runs[k][0].name.endswith("agenttrial1") for k in runs if k != "summary")

    summary = runs["summary"][1]
    logged_keys = {k for r in summary if r["type"] == "history" for k in r["history"]["item"]}
    for key in ("summary_table", "curves", "test_acc_vs_iteration_table", "test_acc_vs_percent_remaining_table"):
        assert any(k.startswith(f"{key}.") for k in logged_keys), key
    values = {}
    for r in summary:
        if r["type"] == "summary":
            values.update(r["summary"].get("update", {}))
    # 85% remaining: level 1 (80.04%) is closer than level 0 (100%).
    level1 = json.loads((store / "level_01" / "metrics.json").read_text())
    assert values["objective"] == pytest.approx(level1["early_stop_val_acc"])
    assert sweep_objective(cfg) == pytest.approx(level1["early_stop_val_acc"])
    monkeypatch.delenv("LOTTERY_OBJECTIVE_REMAINING")
    level0 = json.loads((store / "level_00" / "metrics.json").read_text())
    monkeypatch.setenv("LOTTERY_OBJECTIVE_METRIC", "final_test_acc")
    assert sweep_objective(cfg) == pytest.approx(level1["final_test_acc"])  # default: the sparsest level
    monkeypatch.setenv("LOTTERY_OBJECTIVE_REMAINING", "99")
    assert sweep_objective(cfg) == pytest.approx(level0["final_test_acc"])
