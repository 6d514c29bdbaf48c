"""One-level smoke runs of every model family on synthetic CIFAR-shaped data, and structured/N:M IMP patterns."""

from __future__ import annotations

import pytest
import torch
from helpers import imp_folder, make_config

from lottery.errors import ConfigError
from lottery.imp.job import run
from lottery.pruning import Mask
from lottery.pruning.nm import check_nm
from lottery.tracking import load_torch

SMOKE = ["data=synthetic_cifar", "training.iterations=4", "training.batch_size=16", "training.eval_every=2",
         "training.checkpoint_every=1000", "imp.levels=1", "data.eval_subset=32", "logger=none", "progress_bar=false"]


def _run(tmp_path, *overrides: str):
    cfg = make_config([*overrides, f"store.root={tmp_path / 'runs'}"])
    rows = run(cfg)
    return rows, imp_folder(cfg)


@pytest.mark.parametrize("exp,extra", [
    ("imp_conv2", []), ("imp_conv4", []), ("imp_conv6", []),
    ("imp_resnet20", ["imp.rewind_to=2"]), ("imp_vgg16", ["imp.rewind_to=2"]),
])
def test_one_level_of_each_family(tmp_path, exp: str, extra: list[str]) -> None:
    rows, path = _run(tmp_path, f"+exp={exp}", *SMOKE, *extra)
    assert [r["level"] for r in rows] == [0, 1]
    assert 0 < rows[1]["percent_remaining"] < 100
    mask = Mask(load_torch(path / "level_01" / "mask.pt"))
    final = load_torch(path / "level_01" / "final.pt")
    for name, keep in mask.items():
        assert torch.equal(final[name][~keep], torch.zeros(int((~keep).sum())))
    if exp == "imp_conv6":  # per-layer rates by glob: convs 15%, fcs 20%, head 10%
        assert abs(mask.density()["convs.0.weight"] - 0.85) < 0.01
        assert abs(mask.density()["fcs.0.weight"] - 0.8) < 0.01
        assert abs(mask.density()["head.weight"] - 0.9) < 0.01


def test_filter_pruning_removes_whole_filters_and_neurons(tmp_path) -> None:
    _, path = _run(tmp_path, "+exp=imp_conv2", *SMOKE, "pruning.pattern=filters", "pruning.norm=l2")
    mask = Mask(load_torch(path / "level_01" / "mask.pt"))
    for name, keep in mask.items():
        rows = keep.flatten(1)
        assert bool((rows.all(1) | ~rows.any(1)).all()), f"{name} has a partly pruned unit"
    assert not mask["convs.0.weight"].flatten(1).all(1).all()  # some filters are gone
    assert bool(mask["head.weight"].all())  # the output units (classes) are never removed


def test_nm_pattern_in_imp(tmp_path) -> None:
    _, path = _run(tmp_path, "+exp=imp_conv2", *SMOKE, "pruning.pattern=2:4", "pruning.exclude=[convs.0]")
    mask = Mask(load_torch(path / "level_01" / "mask.pt"))
    for name, keep in mask.items():
        if name != "convs.0.weight":
            assert check_nm(keep.flatten(1), 2, 4) and keep.float().mean() == 0.5, name
    assert bool(mask["convs.0.weight"].all())


def test_pattern_that_cannot_fit_fails_before_training(tmp_path) -> None:
    with pytest.raises(ConfigError, match="convs.0"):
        _run(tmp_path, "+exp=imp_conv2", *SMOKE, "pruning.pattern=2:4")
    assert not list((tmp_path / "runs").glob("imp_*/level_00/final.pt"))
