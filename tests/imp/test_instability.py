"""+branch=instability end to end on a slice of real MNIST (both engines), a BatchNorm network on synthetic
CIFAR, resuming, and bad input (one line, exit 2, before any run folder)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import TINY, imp_folder, make_config

from lottery.errors import ConfigError
from lottery.imp.job import run
from lottery.pruning import Mask
from lottery.run import precheck
from lottery.tracking import load_torch

BRANCH = ["+branch=instability", "branch.rewind_to=[0,20]", "branch.points=5", "imp.levels=1", "logger=none"]
FABRIC = "training.engine=fabric"  # the Trainer's semantics with less overhead per training: keeps these fast


def _run(tmp_path, *overrides: str):
    cfg = make_config([*TINY, *BRANCH, f"store.root={tmp_path / 'runs'}", *overrides])
    rows = run(cfg)
    return cfg, rows, imp_folder(cfg)


def _json(path):
    return json.loads(path.read_text())


def test_instability_branch_stores_copies_and_the_path(tmp_path, mnist_root) -> None:
    cfg, rows, path = _run(tmp_path, FABRIC, "branch.levels=[1]")
    folder = path / "level_01" / "branch_instability_k20_s1000-2000"
    result = _json(folder / "instability.json")
    assert result["level"] == 1 and result["rewind_to"] == 20 and result["seeds"] == [1000, 2000]
    assert result["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0] and len(result["errors"]) == 5
    assert result["barrier"] == pytest.approx(max(result["errors"]) - (result["errors"][0] + result["errors"][-1]) / 2)
    # The endpoints are the two trained copies: their errors are the copies' own final test errors.
    for end, seed in zip(result["endpoint_errors"], (1000, 2000), strict=True):
        copy = _json(folder / f"copy_s{seed}" / "metrics.json")
        assert end == pytest.approx(1 - copy["final_test_acc"], abs=1e-12)
        assert copy["start_step"] == 20 and copy["iterations"] == 60
    # Both copies start from θk, the ticket trained to k with the run's data order: the prefix retraces the
    # level's own training (CPU is deterministic), so its evaluation at k equals the level's.
    prefix = _json(folder / "prefix" / "metrics.json")
    level = _json(path / "level_01" / "metrics.json")
    assert prefix["history"][-1]["iteration"] == 20
    assert prefix["history"][-1]["val_loss"] == next(h["val_loss"] for h in level["history"] if h["iteration"] == 20)
    theta_k = load_torch(folder / "prefix" / "final.pt")
    starts = [load_torch(folder / f"copy_s{s}" / "start.pt") for s in (1000, 2000)]
    assert all(torch.equal(starts[0][k], theta_k[k]) and torch.equal(starts[1][k], theta_k[k]) for k in theta_k)
    finals = [load_torch(folder / f"copy_s{s}" / "final.pt") for s in (1000, 2000)]
    assert any(not torch.equal(finals[0][k], finals[1][k]) for k in theta_k)  # different data orders
    mask = Mask(load_torch(path / "level_01" / "mask.pt"))
    for name, keep in mask.items():
        assert all(torch.count_nonzero(f[name][~keep]) == 0 for f in finals)
    # k = 0 needs no prefix: the copies start from the level's ticket itself.
    k0 = path / "level_01" / "branch_instability_k0_s1000-2000"
    assert not (k0 / "prefix").exists()
    assert all(torch.equal(load_torch(k0 / "copy_s1000" / "start.pt")[k], v)
               for k, v in load_torch(path / "level_01" / "start.pt").items())
    summary = _json(path / "instability.json")
    assert [(r["level"], r["rewind_to"]) for r in summary] == [(1, 0), (1, 20)]
    assert not (path / "level_00" / "branch_instability_k0_s1000-2000").exists()  # branch.levels=[1] only
    assert {r["branch"] for r in rows[2:]} == {f"instability_k{k}_s1000-2000/copy_s{s}" for k in (0, 20)
                                               for s in (1000, 2000)}


def test_rerun_skips_and_a_lost_path_is_recomputed_without_training(tmp_path, mnist_root) -> None:
    _, _, path = _run(tmp_path, FABRIC, "branch.rewind_to=20", "branch.levels=[1]")
    folder = path / "level_01" / "branch_instability_k20_s1000-2000"
    before = _json(folder / "instability.json")
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("final.pt")}
    (folder / "instability.json").unlink()
    _run(tmp_path, FABRIC, "branch.rewind_to=20", "branch.levels=[1]")
    assert _json(folder / "instability.json") == before
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("final.pt")} == stamps


@pytest.mark.slow
def test_batched_engine_trains_the_copies_of_every_seed(tmp_path, mnist_root) -> None:
    _, rows, _ = _run(tmp_path, "training.engine=batched", "seeds=[0,1]")
    for seed in (0, 1):
        cfg = make_config([*TINY, *BRANCH, f"store.root={tmp_path / 'runs'}", "training.engine=batched",
                           f"seed={seed}"])
        path = imp_folder(cfg)
        dense = _json(path / "level_00" / f"branch_instability_k0_s{seed + 1000}-{seed + 2000}" / "instability.json")
        assert dense["percent_remaining"] == 100.0 and not dense["batchnorm_recomputed"]  # level 0: dense
        for k in (0, 20):
            folder = path / "level_01" / f"branch_instability_k{k}_s{seed + 1000}-{seed + 2000}"
            result = _json(folder / "instability.json")
            copy = _json(folder / f"copy_s{seed + 1000}" / "metrics.json")
            assert copy["engine"] == "batched" and copy["replicates"] == 8  # 2 seeds × 2 levels × 2 copies, one k
            assert result["endpoint_errors"][0] == pytest.approx(1 - copy["final_test_acc"], abs=1e-6)
    assert len([r for r in rows if r["branch"]]) == 16


@pytest.mark.slow
@pytest.mark.parametrize("exp", ["imp_resnet20", "imp_vgg16"])
def test_batchnorm_networks_on_synthetic_cifar(tmp_path, exp: str) -> None:
    cfg = make_config([f"+exp={exp}", "data=synthetic_cifar", "training.iterations=4", "training.batch_size=16",
                       "training.eval_every=2", "imp.levels=1", "imp.rewind_to=2", "data.eval_subset=32",
                       "data.train_subset=64", "logger=none", "progress_bar=false", "+branch=instability",
                       "branch.rewind_to=2", "branch.points=3", "branch.levels=[1]", f"store.root={tmp_path}"])
    run(cfg)
    path = imp_folder(cfg)
    result = _json(path / "level_01" / "branch_instability_k2_s1000-2000" / "instability.json")
    assert result["batchnorm_recomputed"] and len(result["errors"]) == 3


@pytest.mark.parametrize("override,key", [
    ("branch.rewind_to=60", "branch.rewind_to=60"),  # training ends at iteration 60
    ("branch.rewind_to=[0,2ep]", "branch.rewind_to=40"),  # 2 epochs of 20 iterations: fine; see below
    ("branch.levels=[5]", "branch.levels entry 5"),
    ("branch.points=1", "branch.points=1"),
    ("branch.seeds=[3,3]", "branch.seeds"),
    ("branch.seed=7", "branch.seed=7"),
    ("branch.rewind_to=soon", "branch.rewind_to='soon'"),
])
def test_bad_input_is_one_line_before_any_folder(tmp_path, override: str, key: str) -> None:
    overrides = [*TINY, *BRANCH, override, f"store.root={tmp_path / 'runs'}"]
    problem = precheck(overrides)
    if override == "branch.rewind_to=[0,2ep]":
        assert problem is None  # "2ep" is iteration 40 of 60 (1200 examples / batch 60 = 20 iterations per epoch)
        return
    assert problem is not None and key in problem and "\n" not in problem
    with pytest.raises(ConfigError):
        run(make_config(overrides))
    assert not os.path.exists(tmp_path / "runs")


def test_rewind_before_a_pruned_level_starts_is_rejected(tmp_path) -> None:
    problem = precheck([*TINY, *BRANCH, "imp.rewind=iteration", "imp.rewind_to=20", "branch.rewind_to=10"])
    assert problem is not None and "branch.rewind_to=10" in problem and "branch.levels=[0]" in problem
    assert precheck([*TINY, *BRANCH, "imp.rewind=iteration", "imp.rewind_to=20", "branch.rewind_to=10",
                     "branch.levels=[0]"]) is None


@pytest.mark.slow
def test_each_analysis_is_a_wandb_run_with_its_path(tmp_path, mnist_root) -> None:
    import subprocess
    import sys

    cfg, _, path = _run(tmp_path, FABRIC, "logger=wandb", "branch.rewind_to=20", "branch.levels=[1]",
                        "branch.points=3")
    result = _json(path / "level_01" / "branch_instability_k20_s1000-2000" / "instability.json")
    found = []
    for run_dir in (path / "wandb").glob("offline-run-*"):
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        history = [r for r in records if r.get("type") == "history" or "path/test_error" in json.dumps(r)]
        errors = [h for h in history if "path/test_error" in json.dumps(h)]
        if errors:
            found.append(run_dir)
            assert len(errors) >= 3 and f"{result['barrier']}" in out
    assert len(found) == 1
