"""training.engine=batched: several seeds' IMP runs (tickets and control branches) trained in lockstep equal the
same runs trained one at a time, keep their own run folders, resume after a kill, and refuse what they cannot do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY, imp_folder, killed_at, make_config

from lottery.errors import ConfigError
from lottery.imp.auto import resolve_auto
from lottery.imp.job import run
from lottery.pruning import Mask
from lottery.run import validate
from lottery.tracking import load_torch
from lottery.tracking.objective import sweep_objective
from lottery.training import replicates

SMALL = [*TINY, "logger=none", "imp.levels=2", "+branch=random_reinit"]


def folder(tmp_path: Path, *overrides: str) -> Path:
    cfg = make_config([*SMALL, f"store.root={tmp_path}", *overrides])
    return imp_folder(cfg)


def leaves(path: Path) -> list[Path]:
    """Every trained level and branch folder of a run."""
    return sorted(p.parent for p in path.glob("level_*/**/metrics.json"))


def assert_same_run(batched: Path, single: Path) -> None:
    """Same masks, same start weights, final weights and curves equal to float tolerance."""
    assert [p.relative_to(batched) for p in leaves(batched)] == [p.relative_to(single) for p in leaves(single)]
    init_a, init_b = load_torch(batched / "init.pt"), load_torch(single / "init.pt")
    assert init_a.keys() == init_b.keys() and all(torch.equal(init_a[k], init_b[k]) for k in init_a)
    for a, b in zip(leaves(batched), leaves(single), strict=True):
        mask_a, mask_b = Mask(load_torch(a / "mask.pt")), Mask(load_torch(b / "mask.pt"))
        for name in mask_a:
            # The batched sums round differently; a rank flip at the pruning threshold is possible, but rare.
            assert (mask_a[name] != mask_b[name]).float().mean() < 1e-3, (a, name)
        start_b = load_torch(b / "start.pt")
        assert all(torch.allclose(v, start_b[k], atol=1e-5) for k, v in load_torch(a / "start.pt").items())
        final_a, final_b = load_torch(a / "final.pt"), load_torch(b / "final.pt")
        for name in final_a:
            moved = (final_b[name] - start_b[name]).abs().max()
            diff = (final_a[name] - final_b[name]).abs()
            # Usually equal to float error or bit for bit. But the batched sums round differently, and how much
            # depends on the processor's kernels: on an AMD EPYC one member of four drifted chaotically over its 60
            # Adam steps (half its weights off by > 1e-5, the curves still equal to 1e-3). What must hold anywhere:
            # all but 2% of the weights within 5% of what training moved the layer (1.0% of a bias seen there).
            far = (diff > 0.05 * moved).float().mean()
            assert far < 0.02, (a, name, float(far))
            if name in mask_a:
                assert torch.count_nonzero(final_a[name][~mask_a[name]]) == 0
        ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
        assert [h["iteration"] for h in ma["history"]] == [h["iteration"] for h in mb["history"]]
        for ha, hb in zip(ma["history"], mb["history"], strict=True):
            assert ha["lr"] == pytest.approx(hb["lr"])
            assert ha["val_loss"] == pytest.approx(hb["val_loss"], rel=1e-3)
            assert ha["test_acc"] == pytest.approx(hb["test_acc"], abs=0.005)
            assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=2e-3)


@pytest.mark.parametrize("rewind", [["imp.rewind=init"], ["imp.rewind=iteration", "imp.rewind_to=20"]])
def test_seeds_in_lockstep_equal_separate_runs(tmp_path, mnist_root, rewind: list[str]) -> None:
    root = tmp_path / "batched"
    cfg = make_config([*SMALL, f"store.root={root}", "training.engine=batched", "seeds=[0,1]", *rewind])
    rows = run(cfg)
    assert sorted({(r["seed"], r["level"], r["branch"]) for r in rows}) == sorted(
        {(s, lv, "") for s in (0, 1) for lv in (0, 1, 2)} | {(s, lv, f"random_reinit_s{1000 + s}")
                                                              for s in (0, 1) for lv in (1, 2)})
    for seed in (0, 1):
        # Each seed's folder is the one a single batched run of that seed would use ...
        path = folder(root, "training.engine=batched", f"seed={seed}", *rewind)
        level1 = json.loads((path / "level_01" / "metrics.json").read_text())
        assert level1["engine"] == "batched"
        # ... every level trained its two tickets and two branches together (split by schedule when rewinding
        # to an iteration: tickets start at 20, random re-inits at 0).
        assert level1["replicates"] == (4 if rewind == ["imp.rewind=init"] else 2)
        if rewind != ["imp.rewind=init"]:
            assert level1["start_step"] == 20 and (path / "rewind.pt").exists()
        # ... and its results are those of the run trained alone with the Fabric engine.
        single_root = tmp_path / "single"
        run(make_config([*SMALL, f"store.root={single_root}", "training.engine=fabric", f"seed={seed}", *rewind]))
        single = folder(single_root, "training.engine=fabric", f"seed={seed}", *rewind)
        assert_same_run(path, single)
        if rewind != ["imp.rewind=init"]:
            theta_k, want = load_torch(path / "rewind.pt"), load_torch(single / "rewind.pt")
            for name in want:
                assert torch.allclose(theta_k[name], want[name], atol=1e-5), name


def test_killed_lockstep_run_resumes_where_it_stopped(tmp_path, mnist_root, monkeypatch) -> None:
    overrides = [*SMALL, "training.engine=batched", "seeds=[0,1]", "imp.levels=1"]
    whole_root, killed_root = tmp_path / "whole", tmp_path / "killed"
    run(make_config([*overrides, f"store.root={whole_root}"]))

    import lottery.imp.batched as batched

    real = batched.train_replicates
    calls = {"n": 0}

    def killed_in_level_1(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # level 1's group: die after 50 of 60 steps (checkpoints every 20)
            with killed_at(replicates, 50):
                return real(*args, **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(batched, "train_replicates", killed_in_level_1)
    with pytest.raises(RuntimeError, match="simulated failure"):
        run(make_config([*overrides, f"store.root={killed_root}"]))
    path = folder(killed_root, "training.engine=batched", "seed=1", "imp.levels=1")
    assert (path / "level_00" / "metrics.json").exists() and not (path / "level_01" / "metrics.json").exists()
    assert torch.load(path / "level_01" / "replicate.ckpt", weights_only=True)["step"] == 40

    resumed_steps = []

    def record_resume(*args, **kwargs):
        from lottery.training.replicates import checkpoint_step

        resumed_steps.append([checkpoint_step(p) for p in kwargs["checkpoints"]])
        return real(*args, **kwargs)

    monkeypatch.setattr(batched, "train_replicates", record_resume)
    run(make_config([*overrides, f"store.root={killed_root}"]))
    assert resumed_steps == [[40, 40, 40, 40]]  # level 0 was not retrained; level 1 went on from step 40
    for seed in (0, 1):
        a = folder(killed_root, "training.engine=batched", f"seed={seed}", "imp.levels=1")
        b = folder(whole_root, "training.engine=batched", f"seed={seed}", "imp.levels=1")
        for leaf in leaves(b):
            got = load_torch(a / leaf.relative_to(b) / "final.pt")
            for name, value in load_torch(leaf / "final.pt").items():
                assert torch.equal(got[name], value), (leaf, name)  # CPU: the resumed run is bitwise the same
            assert not (a / leaf.relative_to(b) / "replicate.ckpt").exists()
    monkeypatch.setattr(batched, "train_replicates", lambda *a, **k: pytest.fail("a finished level was retrained"))
    rows = run(make_config([*overrides, f"store.root={killed_root}"]))
    assert len(rows) == 2 * 3


def test_sweep_objective_is_the_mean_over_seeds(tmp_path, mnist_root) -> None:
    cfg = make_config([*SMALL, f"store.root={tmp_path}", "training.engine=batched", "seeds=[0,1]", "imp.levels=1",
                       "~branch"])
    run(cfg)
    per_seed = []
    for seed in (0, 1):
        one = make_config([*SMALL, f"store.root={tmp_path}", "training.engine=batched", f"seed={seed}",
                           "imp.levels=1", "~branch"])
        per_seed.append(sweep_objective(resolve_auto(one).cfg))  # lottery.run hands it the resolved config
    assert None not in per_seed
    assert sweep_objective(resolve_auto(cfg).cfg) == pytest.approx(sum(per_seed) / 2)


@pytest.mark.parametrize(("overrides", "message"), [
    (["seeds=[0,0]"], "distinct seeds"),
    (["seeds=[0,1]", "+branch.seed=1"], "branch.seed=1 is one of seeds"),
    (["training.engine=batched", "trainer=ddp_cpu"], "trains on one device"),
])
def test_bad_batched_configs_are_refused(tmp_path, overrides: list[str], message: str) -> None:
    cfg = make_config([*TINY, f"store.root={tmp_path}", *overrides])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_batchnorm_and_augmentation_models_run_batched(tmp_path) -> None:
    """ResNet-20 (BatchNorm) with random crops and flips through the batched engine, rewinding to iteration 2.

    Numerical equality with separate runs is tested in float64 in tests/training/test_replicates.py (in
    float32 this small-batch BatchNorm training parts from any other float32 computation within a few steps);
    here: the driver stores BatchNorm statistics, rewinds with them, and keeps pruned weights at zero.
    """
    small = ["+exp=imp_resnet20", "data=synthetic_cifar", "data.augment=true", "data.val_size=100",
             "data.train_subset=200", "data.eval_subset=50", "training.batch_size=10", "training.iterations=6",
             "training.eval_every=3", "training.milestones=[]", "imp.levels=1", "imp.rewind_to=2",
             "logger=none", "progress_bar=false", f"store.root={tmp_path}"]
    rows = run(make_config([*small, "training.engine=batched", "seeds=[0,1]", "+branch=random_reinit"]))
    assert len(rows) == 2 * 3
    for seed in (0, 1):
        path = imp_folder(make_config([*small, "training.engine=batched", f"seed={seed}"]), tmp_path)
        theta_k = load_torch(path / "rewind.pt")
        assert int(theta_k["bn.num_batches_tracked"]) == 2  # θk carries BatchNorm's statistics at iteration 2
        level1 = json.loads((path / "level_01" / "metrics.json").read_text())
        assert level1["start_step"] == 2 and [h["iteration"] for h in level1["history"]] == [5, 6]
        assert level1["replicates"] == 2  # the tickets start at 2, the re-inits at 0: two groups
        start = load_torch(path / "level_01" / "start.pt")
        assert torch.equal(start["bn.running_var"], theta_k["bn.running_var"])
        final = load_torch(path / "level_01" / "final.pt")
        assert int(final["bn.num_batches_tracked"]) == 6
        mask = Mask(load_torch(path / "level_01" / "mask.pt"))
        for name, keep in mask.items():
            assert torch.count_nonzero(final[name][~keep]) == 0


def test_conv_experiment_runs_batched(tmp_path) -> None:
    """The lth_conv networks (Conv-N, no augmentation as in the paper) train through the batched engine too."""
    small = ["+exp=imp_conv2", "data=synthetic_cifar", "data.augment=true", "data.val_size=100",
             "data.train_subset=200", "data.eval_subset=50", "training.batch_size=10", "training.iterations=4",
             "training.eval_every=2", "imp.levels=1", f"store.root={tmp_path}"]
    cfg = make_config([*small, "+branch=random_reinit", "training.engine=batched", "seeds=[0,1]", "logger=none",
                       "progress_bar=false"])
    rows = run(cfg)
    assert len(rows) == 2 * 3
    for seed in (0, 1):
        one = make_config([*small, "training.engine=batched", f"seed={seed}"])
        path = imp_folder(one)
        level1 = json.loads((path / "level_01" / "metrics.json").read_text())
        assert level1["replicates"] == 4 and [h["iteration"] for h in level1["history"]] == [2, 4]
        mask = Mask(load_torch(path / "level_01" / "mask.pt"))
        final = load_torch(path / "level_01" / f"branch_random_reinit_s{1000 + seed}" / "final.pt")
        for name, keep in mask.items():
            assert torch.count_nonzero(final[name][~keep]) == 0
