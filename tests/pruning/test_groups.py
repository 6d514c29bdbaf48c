"""Channel groups: every channel set tied by residual additions, BatchNorm and shortcuts, against a hand-written
grouping; group scores against a per-member sum; group pruning is nested, schedule-exact and always compactable."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, imp_folder, make_config
from torch import nn

from lottery.errors import ConfigError, LotteryError
from lottery.imp.job import run as imp_run
from lottery.imp.masks import next_mask
from lottery.models import compact, create_model, prunable_names
from lottery.models.resnet import ResNet
from lottery.pruning import Mask, kept_count
from lottery.pruning.groups import channel_groups, group_prune, group_scores, prune_channel_groups
from lottery.tracking import load_torch

TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these models are tiny, and on a shared machine more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _as_sets(groups) -> set[tuple]:
    return {(g.size, g.prunable, frozenset(g.producers), frozenset(g.norms), frozenset(g.consumers)) for g in groups}


def expected_resnet20() -> set[tuple]:
    """ResNet-20's groups written out by hand from He et al.'s layout (3 stages x 3 blocks, 16/32/64 wide,
    1x1 projection shortcut in the first block of stages 2 and 3)."""
    b = "blocks"
    stage1 = (16, True, frozenset({"conv", f"{b}.0.conv2", f"{b}.1.conv2", f"{b}.2.conv2"}),
              frozenset({"bn", f"{b}.0.bn2", f"{b}.1.bn2", f"{b}.2.bn2"}),
              frozenset({(f"{b}.0.conv1", 1), (f"{b}.1.conv1", 1), (f"{b}.2.conv1", 1), (f"{b}.3.conv1", 1),
                         (f"{b}.3.shortcut.0", 1)}))
    stage2 = (32, True, frozenset({f"{b}.3.shortcut.0", f"{b}.3.conv2", f"{b}.4.conv2", f"{b}.5.conv2"}),
              frozenset({f"{b}.3.shortcut.1", f"{b}.3.bn2", f"{b}.4.bn2", f"{b}.5.bn2"}),
              frozenset({(f"{b}.4.conv1", 1), (f"{b}.5.conv1", 1), (f"{b}.6.conv1", 1), (f"{b}.6.shortcut.0", 1)}))
    stage3 = (64, True, frozenset({f"{b}.6.shortcut.0", f"{b}.6.conv2", f"{b}.7.conv2", f"{b}.8.conv2"}),
              frozenset({f"{b}.6.shortcut.1", f"{b}.6.bn2", f"{b}.7.bn2", f"{b}.8.bn2"}),
              frozenset({(f"{b}.7.conv1", 1), (f"{b}.8.conv1", 1), ("head", 1)}))
    inner = {(w, True, frozenset({f"{b}.{i}.conv1"}), frozenset({f"{b}.{i}.bn1"}), frozenset({(f"{b}.{i}.conv2", 1)}))
             for i, w in enumerate([16] * 3 + [32] * 3 + [64] * 3)}
    ends = {(3, False, frozenset(), frozenset(), frozenset({("conv", 1)})),
            (10, False, frozenset({"head"}), frozenset(), frozenset())}
    return {stage1, stage2, stage3, *inner, *ends}


def test_resnet20_groups_match_hand_written() -> None:
    groups = channel_groups(create_model("resnet20", seed=0))
    assert _as_sets(groups) == expected_resnet20()
    assert sum(g.prunable for g in groups) == 12
    # Every prunable weight's output rows belong to exactly one group.
    names = {n.removesuffix(".weight") for n in prunable_names(create_model("resnet20", seed=0))}
    assert sorted(p for g in groups for p in g.producers) == sorted(names)


def test_vgg16_groups_are_one_per_conv() -> None:
    groups = channel_groups(create_model("vgg16", seed=0))
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    consumers = [f"convs.{i + 1}" for i in range(12)] + ["head"]
    expected = {(w, True, frozenset({f"convs.{i}"}), frozenset({f"bns.{i}"}), frozenset({(consumers[i], 1)}))
                for i, w in enumerate(widths)}
    expected |= {(3, False, frozenset(), frozenset(), frozenset({("convs.0", 1)})),
                 (10, False, frozenset({"head"}), frozenset(), frozenset())}
    assert _as_sets(groups) == expected


def test_flatten_before_linear_gives_columns_per_channel() -> None:
    groups = channel_groups(create_model("conv2", seed=0))
    last_conv = next(g for g in groups if g.producers == ("convs.1",))
    assert last_conv.consumers == (("fcs.0", 16 * 16),)


def randomize_bn(model: nn.Module, seed: int) -> None:
    """Nonzero BatchNorm statistics and affine terms, so that a wrongly kept or dropped channel shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                k = m.num_features
                m.weight.copy_(0.5 + torch.rand(k, generator=gen))
                m.bias.copy_(torch.randn(k, generator=gen) * 0.3)
                m.running_mean.copy_(torch.randn(k, generator=gen) * 0.3)
                m.running_var.copy_(0.5 + torch.rand(k, generator=gen))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("build", [lambda: create_model("resnet20", seed=0),
                                   lambda: ResNet(14, (8, 16, 32), (1, 28, 28), 7)], ids=["resnet20", "resnet14"])
def test_compact_resnet_has_the_masked_outputs(build, ratio: float) -> None:
    model = build()
    randomize_bn(model, 1)
    mask = prune_channel_groups(model, ratio)
    # Random single weights pruned on top: kept channels keep their element mask.
    gen = torch.Generator().manual_seed(2)
    mask = Mask({k: v & (torch.rand(v.shape, generator=gen) > 0.3) for k, v in mask.items()})
    masked = copy.deepcopy(model)
    mask.apply_(masked)
    masked.eval()
    small = compact(masked, mask).eval()
    groups = channel_groups(model)
    for g in groups:
        if g.prunable:
            kept = round((1 - ratio) * g.size)
            for name in g.producers:
                assert small.get_submodule(name).weight.shape[0] == kept
            for name in g.norms:
                assert small.get_submodule(name).num_features == kept
    x = torch.randn(5, *((3, 32, 32) if isinstance(model, ResNet) and model.conv.in_channels == 3 else (1, 28, 28)))
    with torch.no_grad():
        diff = (masked(x) - small(x)).abs().max().item()
    assert diff <= TOL
    assert small.compact_summary.params_after == sum(p.numel() for p in small.parameters())
    assert small.compact_summary.params_after < small.compact_summary.params_before


def test_compact_removes_only_dead_channels() -> None:
    """Pruning a stage's producers only (not its consumers) leaves the channel alive: width kept, outputs equal."""
    model = create_model("resnet20", seed=0)
    randomize_bn(model, 3)
    mask = Mask.ones(model, prunable_names(model))
    rows = dict(mask.items())
    for name in ("conv", "blocks.0.conv2", "blocks.1.conv2", "blocks.2.conv2"):
        rows[f"{name}.weight"] = rows[f"{name}.weight"].clone()
        rows[f"{name}.weight"][:4] = False
    masked = copy.deepcopy(model)
    Mask(rows).apply_(masked)
    masked.eval()
    small = compact(masked, Mask(rows)).eval()
    assert small.conv.weight.shape[0] == 16
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (masked(x) - small(x)).abs().max().item() <= TOL


def test_group_score_is_the_sum_of_member_norms() -> None:
    model = create_model("resnet20", seed=0)
    weights = model.state_dict()
    mask = Mask.ones(model, prunable_names(model))
    group = next(g for g in channel_groups(model) if g.size == 32 and len(g.producers) == 4)
    for norm, f in (("l1", lambda t: t.abs().sum().item()), ("l2", lambda t: t.pow(2).sum().sqrt().item())):
        score, alive = group_scores(weights, mask, group, norm)
        for c in (0, 7, 31):
            want = sum(f(weights[f"{p}.weight"][c].double()) for p in group.producers)
            want += sum(f(weights[f"{q}.weight"][:, c].double()) for q, _ in group.consumers)
            assert score[c].item() == pytest.approx(want, rel=1e-12)
        assert alive.all()


def test_group_prune_follows_the_schedule_and_nests() -> None:
    model = create_model("resnet20", seed=0)
    weights = model.state_dict()
    groups = channel_groups(model)
    mask = Mask.ones(model, prunable_names(model))
    for level in (1, 2, 3):
        new = group_prune(weights, mask, groups, level, 0.2)
        assert all(bool((new[k] <= mask[k]).all()) for k in mask)  # nested
        small = compact(copy.deepcopy(model), new)
        for g in groups:
            if g.prunable:
                assert small.get_submodule(g.producers[0]).weight.shape[0] == kept_count(g.size, 0.2, level)
        mask = new


def test_imp_channel_groups_pattern_gives_exportable_masks() -> None:
    model = create_model("resnet20", seed=0)
    names = prunable_names(model)
    rates = {n: 0.2 for n in names if n != "head.weight"}
    mask = Mask.ones(model, names)
    gen = torch.Generator().manual_seed(0)
    for level in (1, 2):
        trained = {k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                   for k, v in model.state_dict().items()}
        mask = next_mask(trained, mask, level, rates, 0.2, "channel_groups", "l1", "head.weight", None, model=model)
    masked = copy.deepcopy(model)
    mask.apply_(masked)
    randomize_bn(masked, 4)
    masked.eval()
    small = compact(masked, mask).eval()
    assert small.conv.weight.shape[0] == kept_count(16, 0.2, 2)
    assert small.head.weight.shape == (10, kept_count(64, 0.2, 2))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (masked(x) - small(x)).abs().max().item() <= TOL


def test_imp_channel_groups_leaves_groups_with_an_excluded_layer() -> None:
    model = create_model("resnet20", seed=0)
    names = prunable_names(model)
    rates = {n: 0.5 for n in names if n not in ("head.weight", "blocks.4.conv1.weight")}
    mask = next_mask(model.state_dict(), Mask.ones(model, names), 1, rates, 0.5, "channel_groups", "l1",
                     "head.weight", None, model=model)
    assert mask["blocks.4.conv1.weight"].all() and mask["blocks.4.conv2.weight"].all()  # the excluded block
    assert not mask["blocks.3.conv1.weight"].all()


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_range_is_rejected(ratio: float) -> None:
    with pytest.raises(ConfigError, match=r"ratio=.*\[0, 1\)"):
        prune_channel_groups(create_model("resnet20", seed=0), ratio)


def test_removing_every_channel_names_the_layer() -> None:
    model = ResNet(8, (1, 2, 4), (3, 8, 8), 3)  # the stem group has a single channel
    with pytest.raises(ConfigError, match=r"every channel of the group of conv \(") as err:
        prune_channel_groups(model, 0.6)
    assert "\n" not in str(err.value)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(torch.cat([self.a(x), self.b(x)], dim=1), 1).flatten(1))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.depthwise = nn.Conv2d(4, 4, 3, groups=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise(self.stem(x))


@pytest.mark.parametrize("model,needle", [(Concat(), "op cat"), (Grouped(), "layer depthwise (Conv2d with groups=4)")])
def test_unresolvable_coupling_names_the_layer(model: nn.Module, needle: str) -> None:
    with pytest.raises(LotteryError, match="cannot resolve the channel coupling") as err:
        channel_groups(model)
    assert needle in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LotteryError, match="cannot resolve"):
        compact(model, {})


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lottery.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


RESNET_IMP = ["+exp=imp_lenet", "model=resnet20", "pruning=layerwise", "pruning.pattern=channel_groups",
              "logger=none", "data.train_subset=256", "data.eval_subset=128", "progress_bar=false"]


def test_cli_rate_that_empties_a_group_exits_2_in_one_line(tmp_path, mnist_root) -> None:
    result = _cli(*RESNET_IMP, f"data.root={mnist_root}", "pruning.rate=0.99", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-1500:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "every channel of the group of conv" in lines[0], lines
    assert not list((tmp_path / "runs").glob("imp_*")), "a bad command left a run folder behind"


@pytest.mark.slow
def test_cli_imp_channel_groups_masks_compact(tmp_path, mnist_root) -> None:
    result = _cli(*RESNET_IMP, f"data.root={mnist_root}", "pruning.rate=0.5", "imp.levels=2",
                  "training.iterations=4", "training.eval_every=2", "training.checkpoint_every=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = tmp_path.glob("runs/imp_*")
    mask = Mask(torch.load(run / "level_02" / "mask.pt", weights_only=True))
    model = ResNet(20, (16, 32, 64), (1, 28, 28), 10)
    randomize_bn(model, 5)
    mask.apply_(model)
    model.eval()
    small = compact(model, mask).eval()
    assert small.conv.weight.shape[0] == kept_count(16, 0.5, 2)
    assert small.head.weight.shape == (10, kept_count(64, 0.5, 2))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert (model(x) - small(x)).abs().max().item() <= TOL


def test_imp_run_with_channel_groups_compacts(tmp_path) -> None:
    """A one-level ResNet-20 IMP run on synthetic CIFAR: the level's trained weights and mask compact into a
    smaller model with the masked model's outputs."""
    cfg = make_config(["+exp=imp_resnet20", "imp.rewind_to=2", "pruning=layerwise", "pruning.pattern=channel_groups",
                       "pruning.rate=0.5", "data=synthetic_cifar", "training.iterations=4", "training.batch_size=16",
                       "training.eval_every=2", "training.checkpoint_every=1000", "imp.levels=1",
                       "data.eval_subset=32", "logger=none", "progress_bar=false", f"store.root={tmp_path / 'runs'}"])
    imp_run(cfg)
    path = imp_folder(cfg)
    mask = Mask(load_torch(path / "level_01" / "mask.pt"))
    model = create_model("resnet20", seed=0)
    model.load_state_dict(load_torch(path / "level_01" / "final.pt"))
    model.eval()
    small = compact(model, mask).eval()
    assert small.blocks[4].conv1.weight.shape[:2] == (16, 16)
    assert small.head.weight.shape == (10, 32)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - small(x)).abs().max().item() <= TOL


@pytest.mark.parametrize("levels,fails", [(2, False), (3, True)])
def test_rate_that_empties_a_group_at_a_later_level_fails_before_the_run(tmp_path, mnist_root, levels, fails) -> None:
    """LeNet's 300-channel group keeps round(300 * 0.1**L) channels: 30, 3, then 0 at level 3. Level 1 alone
    is fine, so only a check of every level catches it; it must fail in prepare, before any run folder."""
    from lottery.errors import ConfigError
    from lottery.imp.experiment import prepare

    cfg = make_config(["+exp=imp_lenet", "pruning=layerwise", "pruning.pattern=channel_groups", "pruning.rate=0.9",
                       f"imp.levels={levels}", f"data.root={mnist_root}", "data.train_subset=64",
                       "data.eval_subset=64", "logger=none", f"store.root={tmp_path / 'runs'}"])
    if fails:
        with pytest.raises(ConfigError, match=r"pruning\.rate=0\.9 would remove every channel of the group of "
                                              r"layers\.0 \(2 layers, 300 channels\) at level 3 \(of 3\)"):
            prepare(cfg)
    else:
        prepare(cfg)
    assert not (tmp_path / "runs").exists()
