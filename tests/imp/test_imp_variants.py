"""Rewinding variants, one-shot pruning and control branches, end to end on a small slice of MNIST."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY, imp_folder, make_config

from lottery.imp.job import run
from lottery.pruning import Mask
from lottery.tracking import load_torch

SCHEDULE = ["training.optimizer=sgd", "training.lr=0.05", "training.momentum=0.9", "training.milestones=[30]"]


def _run(tmp_path, *overrides: str, root: str = "runs"):
    cfg = make_config([*TINY, "logger=none", f"store.root={tmp_path / root}", *overrides])
    rows = run(cfg)
    return rows, imp_folder(cfg)


def _history(path, level: int, sub: str = "") -> list[dict]:
    folder = path / f"level_{level:02d}" / sub
    return json.loads((folder / "metrics.json").read_text())["history"]


def test_lr_rewinding_keeps_weights_and_restarts_the_schedule(tmp_path, mnist_root) -> None:
    _, path = _run(tmp_path, "imp.levels=1", "imp.rewind=lr", *SCHEDULE)
    mask = Mask(load_torch(path / "level_01" / "mask.pt"))
    start = load_torch(path / "level_01" / "start.pt")
    expected = mask.apply_to_state(load_torch(path / "level_00" / "final.pt"))
    assert all(torch.equal(start[k], expected[k]) for k in expected)
    for level in (0, 1):
        lrs = [(h["iteration"], h["lr"]) for h in _history(path, level)]
        assert lrs == [(20, 0.05), (40, pytest.approx(0.005)), (60, pytest.approx(0.005))]


def test_finetune_keeps_weights_at_the_final_lr(tmp_path, mnist_root) -> None:
    _, path = _run(tmp_path, "imp.levels=1", "imp.rewind=finetune", *SCHEDULE)
    mask = Mask(load_torch(path / "level_01" / "mask.pt"))
    start = load_torch(path / "level_01" / "start.pt")
    expected = mask.apply_to_state(load_torch(path / "level_00" / "final.pt"))
    assert all(torch.equal(start[k], expected[k]) for k in expected)
    assert [h["lr"] for h in _history(path, 1)] == [pytest.approx(0.005)] * 3


def test_oneshot_reaches_the_same_sparsity_as_iterative(tmp_path, mnist_root) -> None:
    _, iterative = _run(tmp_path, "imp.levels=3", root="iterative")
    _, oneshot = _run(tmp_path, "imp.levels=3", "imp.oneshot=true", root="oneshot")
    assert sorted(p.name for p in oneshot.glob("level_*")) == ["level_00", "level_01"]
    final_iterative = Mask(load_torch(iterative / "level_03" / "mask.pt"))
    final_oneshot = Mask(load_torch(oneshot / "level_01" / "mask.pt"))
    assert final_oneshot.kept() == final_iterative.kept()
    assert final_oneshot != final_iterative  # same sparsity, reached differently
    # Level 0 is the same training in both.
    assert torch.equal(load_torch(iterative / "level_00" / "final.pt")["head.weight"],
                       load_torch(oneshot / "level_00" / "final.pt")["head.weight"])


def test_control_branches(tmp_path, mnist_root) -> None:
    rows, path = _run(tmp_path, "imp.levels=1", "+branch=random_reinit")
    assert [(r["level"], r["branch"]) for r in rows] == [(0, ""), (1, ""), (1, "random_reinit_s1000")]
    ticket, reinit = path / "level_01", path / "level_01" / "branch_random_reinit_s1000"
    assert Mask(load_torch(reinit / "mask.pt")) == Mask(load_torch(ticket / "mask.pt"))
    assert not torch.equal(load_torch(reinit / "start.pt")["layers.0.weight"],
                           load_torch(ticket / "start.pt")["layers.0.weight"])
    assert (reinit / "metrics.json").exists()

    # Further branches land in the same run folder, beside the same level.
    _, same = _run(tmp_path, "imp.levels=1", "+branch=random_prune", "branch.seed=5")
    assert same == path
    rp = path / "level_01" / "branch_random_prune_s5"
    random_mask, ticket_mask = Mask(load_torch(rp / "mask.pt")), Mask(load_torch(ticket / "mask.pt"))
    assert random_mask.kept() == ticket_mask.kept() and random_mask != ticket_mask
    assert all(torch.equal(v, w) for v, w in zip(load_torch(rp / "start.pt").values(),
               random_mask.apply_to_state(load_torch(path / "init.pt")).values(), strict=True))

    _run(tmp_path, "imp.levels=1", "+branch=retrain", "branch.seed=3")
    rt = path / "level_01" / "branch_retrain_s3"
    assert torch.equal(load_torch(rt / "start.pt")["layers.0.weight"], load_torch(ticket / "start.pt")["layers.0.weight"])
    assert not torch.equal(load_torch(rt / "final.pt")["layers.0.weight"],
                           load_torch(ticket / "final.pt")["layers.0.weight"])
