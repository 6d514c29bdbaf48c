"""experiments.regenerate instability: the committed H200 result renders again from its stored metrics with a
byte-identical CSV whose numbers are the stored paths'; a small real run renders end to end (slow)."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import pytest
from helpers import REPO, TINY

from experiments.regenerate import main

STORED = REPO / "experiments" / "figures" / "rendered" / "instability_lenet_h200"
H200_SET = ("training.engine=batched", "trainer=gpu", "logger=none", "progress_bar=false")
# The committed results: the full 50,000-iteration schedule, and the earlier reduced run kept beside it.
COMMITTED = {"full": (STORED, H200_SET),
             "reduced_10k": (STORED / "reduced_10k",
                             (*H200_SET, "training.iterations=10000", "training.checkpoint_every=5000"))}


def _args(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.parametrize("which", sorted(COMMITTED))
def test_committed_h200_instability_renders_again_from_its_stored_results(which: str, tmp_path: Path,
                                                                          monkeypatch) -> None:
    stored, overrides = COMMITTED[which]
    with tarfile.open(stored / "run_metrics.tar.gz") as tar:
        tar.extractall(tmp_path / "store", filter="data")
    monkeypatch.setenv("LOTTERY_RUNS", str(tmp_path / "store"))
    assert main(["instability", "--no-run", "--out", str(tmp_path / "figures"), *_args(*overrides)]) == 0
    rendered = tmp_path / "figures" / "instability" / "instability.csv"
    assert rendered.read_bytes() == (stored / "instability.csv").read_bytes()
    with rendered.open() as f:
        rows = list(csv.DictReader(f))
    barriers = [r for r in rows if r["panel"] == "barrier"]
    assert {r["n"] for r in rows} == {"5"} and {r["level"] for r in barriers} == {"0", "7", "15"}
    assert sorted({int(r["k"]) for r in barriers}) == [0, 100, 250, 500, 1000, 2000]
    # Each barrier row is the mean/min/max of the five stored paths' own barriers, recomputed from their errors.
    paths = [json.loads(p.read_text()) for p in (tmp_path / "store").glob("imp_*/level_07/branch_*_k500_*/instability.json")]
    recomputed = [max(p["errors"]) - (p["errors"][0] + p["errors"][-1]) / 2 for p in paths]
    row = next(r for r in barriers if r["level"] == "7" and r["k"] == "500")
    assert len(paths) == 5 and float(row["min"]) == pytest.approx(min(recomputed))
    assert float(row["max"]) == pytest.approx(max(recomputed))
    assert float(row["mean"]) == pytest.approx(sum(recomputed) / 5)


def test_missing_runs_are_named_with_no_run(tmp_path: Path, capsys) -> None:
    assert main(["instability", "--no-run", "--seeds", "1", *_args(*H200_SET)]) == 1
    assert "branch.rewind_to=[0,100,250,500,1000,2000]" in capsys.readouterr().err


@pytest.mark.slow
def test_instability_figure_from_small_real_runs(tmp_path: Path, mnist_root: Path) -> None:
    small = (*TINY[1:], "logger=none", "imp.levels=1", "branch.levels=[0,1]", "branch.rewind_to=[0,20]",
             "branch.points=4", "training.engine=batched")
    assert main(["instability", "--seeds", "2", "--out", str(tmp_path / "figures"), *_args(*small)]) == 0
    out = tmp_path / "figures" / "instability"
    assert all((out / f"instability.{ext}").stat().st_size > 0 for ext in ("png", "pdf", "csv"))
    with (out / "instability.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["n"] for r in rows} == {"2"}
    assert {(r["level"], r["k"]) for r in rows if r["panel"] == "barrier"} == {("0", "0"), ("0", "20"), ("1", "0"),
                                                                                ("1", "20")}


def test_only_names_a_known_series_and_cannot_go_with_no_run(capsys) -> None:
    assert main(["instability", "--only", "7", "--seeds", "2", *_args(*H200_SET)]) == 2
    assert "--only 7: no such series; this figure has 0, 1" in capsys.readouterr().err
    assert main(["instability", "--only", "0", "--no-run", *_args(*H200_SET)]) == 2
    assert "cannot go with --no-run" in capsys.readouterr().err


@pytest.mark.slow
def test_only_trains_one_series_and_draws_nothing(tmp_path: Path, mnist_root: Path, monkeypatch) -> None:
    monkeypatch.setenv("LOTTERY_RUNS", str(tmp_path / "store"))
    small = (*TINY[1:], "logger=none", "imp.levels=1", "branch.levels=[1]", "branch.rewind_to=[0]",
             "branch.points=3", "training.engine=batched")
    out = tmp_path / "figures"
    assert main(["instability", "--seeds", "2", "--only", "1", "--out", str(out), *_args(*small)]) == 0
    assert not (out / "instability").exists()
    # seed 1 is in the store now; seed 0 is still missing, and only it
    assert main(["instability", "--seeds", "2", "--no-run", "--out", str(out), *_args(*small)]) == 1
    assert main(["instability", "--seeds", "2", "--only", "0", "--out", str(out), *_args(*small)]) == 0
    assert main(["instability", "--seeds", "2", "--no-run", "--out", str(out), *_args(*small)]) == 0
    assert (out / "instability" / "instability.csv").stat().st_size > 0
