"""End-to-end IMP runs on a small slice of the real MNIST: sparsity, rewinding, resume, determinism."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY, imp_folder, make_config

from lottery.imp.job import run
from lottery.pruning import Mask, kept_count
from lottery.tracking import load_torch
from lottery.training import MaskedClassifier


def _run(tmp_path, *overrides: str, root: str = "runs"):
    cfg = make_config([*TINY, "logger=none", f"store.root={tmp_path / root}", *overrides])
    rows = run(cfg)
    return rows, imp_folder(cfg)


def test_imp_end_to_end(tmp_path, mnist_root, capsys) -> None:
    rows, path = _run(tmp_path, "imp.levels=2")
    out = capsys.readouterr().out
    assert "% remaining" in out and "early-stop it" in out
    assert [r["level"] for r in rows] == [0, 1, 2]
    init = load_torch(path / "init.pt")
    for level in range(3):
        ldir = path / f"level_{level:02d}"
        mask = Mask(load_torch(ldir / "mask.pt"))
        metrics = json.loads((ldir / "metrics.json").read_text())
        # Layerwise rates of the paper: 20% of hidden layers, 10% of the output layer per round.
        for name, rate in [("layers.0.weight", 0.2), ("layers.1.weight", 0.2), ("head.weight", 0.1)]:
            assert int(mask[name].sum()) == kept_count(mask[name].numel(), rate, level)
            assert metrics["layer_kept"][name] == int(mask[name].sum())
        # Reset to init: the level starts from θ0 ⊙ mask, biases untouched.
        assert all(torch.equal(v, t) for v, t in zip(load_torch(ldir / "start.pt").values(),
                                                      mask.apply_to_state(init).values(), strict=True))
        final = load_torch(ldir / "final.pt")
        for name, keep in mask.items():
            assert torch.equal(final[name][~keep], torch.zeros(int((~keep).sum())))
        assert [h["iteration"] for h in metrics["history"]] == [20, 40, 60]
        best = min(metrics["history"], key=lambda h: h["val_loss"])
        assert metrics["early_stop_iteration"] == best["iteration"]
        assert metrics["early_stop_test_acc"] == best["test_acc"]
        assert metrics["final_test_acc"] == metrics["history"][-1]["test_acc"] > 0.5
        assert not (ldir / "last.ckpt").exists()
    assert json.loads((path / "summary.json").read_text()) == rows


def test_rerun_skips_finished_levels(tmp_path, mnist_root, monkeypatch) -> None:
    _run(tmp_path, "imp.levels=1")

    def no_training(*args, **kwargs):
        raise AssertionError("a finished level was trained again")

    monkeypatch.setattr("lottery.imp.experiment.train_level", no_training)
    rows, _ = _run(tmp_path, "imp.levels=1")
    assert len(rows) == 2


def test_rewind_to_iteration_starts_from_theta_k(tmp_path, mnist_root) -> None:
    _, path = _run(tmp_path, "imp.levels=1", "imp.rewind=iteration", "imp.rewind_to=20")
    # Independent computation of θ20: a separate dense run that stops at iteration 20.
    _, short = _run(tmp_path, "imp.levels=0", "training.iterations=20", root="short")
    theta_k = load_torch(path / "rewind.pt")
    reference = load_torch(short / "level_00" / "final.pt")
    assert all(torch.equal(theta_k[k], reference[k]) for k in reference)
    mask = Mask(load_torch(path / "level_01" / "mask.pt"))
    start = load_torch(path / "level_01" / "start.pt")
    expected = mask.apply_to_state(theta_k)
    assert all(torch.equal(start[k], expected[k]) for k in expected)
    history = json.loads((path / "level_01" / "metrics.json").read_text())["history"]
    assert [h["iteration"] for h in history] == [40, 60]  # training resumes the schedule at k = 20


def test_rewind_in_epochs_equals_the_same_iteration(tmp_path, mnist_root) -> None:
    _, by_iteration = _run(tmp_path, "imp.levels=0", "imp.rewind=iteration", "imp.rewind_to=20", root="a")
    _, by_epoch = _run(tmp_path, "imp.levels=0", "imp.rewind=iteration", "imp.rewind_to=1ep", root="b")
    _, by_epoch_mode = _run(tmp_path, "imp.levels=0", "imp.rewind=epoch", "imp.rewind_to=1", root="c")
    a = load_torch(by_iteration / "rewind.pt")  # 1200 examples / batch 60 = 20 iterations per epoch
    for other in (by_epoch, by_epoch_mode):
        b = load_torch(other / "rewind.pt")
        assert all(torch.equal(a[k], b[k]) for k in a)


def _files(path):
    out = {}
    for ldir in sorted(path.glob("level_*")):
        metrics = json.loads((ldir / "metrics.json").read_text())
        metrics.pop("train_seconds")
        out[ldir.name] = (load_torch(ldir / "mask.pt"), load_torch(ldir / "final.pt"), metrics)
    return out


def test_killed_run_resumes_bitwise(tmp_path, mnist_root, monkeypatch) -> None:
    # The Trainer's resume (Lightning checkpoints); Fabric's is tested in tests/training/test_fast.py.
    overrides = ("imp.levels=2", "training.checkpoint_every=20", "training.engine=trainer")
    _, clean = _run(tmp_path, *overrides, root="clean")

    original = MaskedClassifier.training_step
    calls = {"n": 0}

    def dying_step(self, batch, batch_idx):
        calls["n"] += 1
        if calls["n"] == 60 + 50:  # level 1, iteration 50: after the checkpoint at 40
            raise RuntimeError("simulated kill")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(MaskedClassifier, "training_step", dying_step)
    with pytest.raises(RuntimeError, match="simulated kill"):
        _run(tmp_path, *overrides, root="killed")
    monkeypatch.setattr(MaskedClassifier, "training_step", original)
    killed_path = clean.parent.parent / "killed" / clean.name
    assert (killed_path / "level_01" / "last.ckpt").exists()
    assert not (killed_path / "level_01" / "metrics.json").exists()

    _, resumed = _run(tmp_path, *overrides, root="killed")
    a, b = _files(clean), _files(resumed)
    assert a.keys() == b.keys() == {"level_00", "level_01", "level_02"}
    for level in a:
        mask_a, final_a, metrics_a = a[level]
        mask_b, final_b, metrics_b = b[level]
        assert all(torch.equal(mask_a[k], mask_b[k]) for k in mask_a)
        assert all(torch.equal(final_a[k], final_b[k]) for k in final_a), level
        assert metrics_a == metrics_b, level


def test_seed_controls_init_and_masks(tmp_path, mnist_root) -> None:
    _, p0 = _run(tmp_path, "imp.levels=1", "seed=0", root="s0")
    _, p1 = _run(tmp_path, "imp.levels=1", "seed=1", root="s1")
    assert not torch.equal(load_torch(p0 / "init.pt")["head.weight"], load_torch(p1 / "init.pt")["head.weight"])
    assert not torch.equal(load_torch(p0 / "level_01/mask.pt")["layers.0.weight"],
                           load_torch(p1 / "level_01/mask.pt")["layers.0.weight"])


def test_global_pruning_keeps_the_global_count(tmp_path, mnist_root) -> None:
    _, path = _run(tmp_path, "imp.levels=1", "pruning=global", "pruning.exclude=[head]")
    mask = Mask(load_torch(path / "level_01" / "mask.pt"))
    pool = ["layers.0.weight", "layers.1.weight"]
    assert sum(int(mask[n].sum()) for n in pool) == kept_count(sum(mask[n].numel() for n in pool), 0.2, 1)
    assert bool(mask["head.weight"].all())
    final = load_torch(path / "level_00" / "final.pt")
    kept = torch.cat([final[n].abs()[mask[n]] for n in pool])
    pruned = torch.cat([final[n].abs()[~mask[n]] for n in pool])
    assert kept.min() >= pruned.max()


def test_fabric_engine_gives_the_same_run(tmp_path, mnist_root) -> None:
    _, trainer = _run(tmp_path, "imp.levels=1", root="trainer")
    _, fabric = _run(tmp_path, "imp.levels=1", "training.engine=fabric", root="fabric")
    for level in ("level_00", "level_01"):
        a, b = load_torch(trainer / level / "final.pt"), load_torch(fabric / level / "final.pt")
        assert all(torch.equal(a[k], b[k]) for k in a), level
        ha = json.loads((trainer / level / "metrics.json").read_text())["history"]
        hb = json.loads((fabric / level / "metrics.json").read_text())["history"]
        assert ha == hb
