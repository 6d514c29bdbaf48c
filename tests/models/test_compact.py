"""compact(): removing dead and constant units gives a smaller model with the masked model's outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lottery.errors import LotteryError
from lottery.models import MODELS, compact, compact_summary, create_model, prunable_names
from lottery.models.conv import ConvNet
from lottery.models.lenet import LeNet
from lottery.models.vgg import VGG, VGG16_PLAN
from lottery.pruning import Mask

TOL = 1e-5


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def chain(model: nn.Module) -> list[tuple[nn.Module, nn.BatchNorm2d | None]]:
    if isinstance(model, LeNet):
        return [(m, None) for m in model.layers] + [(model.head, None)]
    if isinstance(model, ConvNet):
        return [(m, None) for m in [*model.convs, *model.fcs]] + [(model.head, None)]
    return list(zip(model.convs, model.bns, strict=True)) + [(model.head, None)]


def randomize(model: nn.Module, gen: torch.Generator) -> None:
    """Nonzero biases and BatchNorm statistics, so that constant units really are nonzero."""
    with torch.no_grad():
        for layer, bn in chain(model):
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.5)
            if bn is not None:
                k = bn.num_features
                bn.weight.copy_(0.5 + torch.rand(k, generator=gen))
                bn.bias.copy_(torch.randn(k, generator=gen) * 0.2)
                bn.running_mean.copy_(torch.randn(k, generator=gen) * 0.2)
                bn.running_var.copy_(0.5 + torch.rand(k, generator=gen))


def structured_mask(model: nn.Module, gen: torch.Generator, rows: float, cols: float, unstructured: float):
    """Prune whole rows (incoming weights) and whole input units (outgoing weights) of every hidden layer,
    then random single weights on top. Returns the mask and, per hidden layer, the predicted kept units.

    A pruned row j makes unit j constant: c = relu(BN(b_j)). The test forces the sign of c through b_j, so it
    can predict by rule which constant units compaction may remove (all before a Linear, only the zero ones
    before a padded conv).
    """
    layers = chain(model)
    masks = {name: torch.rand(p.shape, generator=gen) >= unstructured
             for name, p in model.named_parameters() if name in prunable_names(model)}
    names = prunable_names(model)
    kept_units = []
    with torch.no_grad():
        for i, ((layer, bn), name) in enumerate(zip(layers[:-1], names[:-1], strict=True)):
            units = layer.weight.shape[0]
            const = torch.rand(units, generator=gen) < rows
            dead = torch.rand(units, generator=gen) < cols
            positive = torch.rand(units, generator=gen) < 0.5
            masks[name][const] = False
            if bn is not None:  # make sign(BN(b)) = sign(b) for the constant units
                bn.running_mean[const], bn.running_var[const], bn.bias[const] = 0.0, 1.0, 0.0
            layer.bias[const] = torch.where(positive[const], 1.0, -1.0) * (0.5 + torch.rand(int(const.sum()),
                                                                                               generator=gen))
            nxt, next_name = layers[i + 1][0], names[i + 1]
            cols_per_unit = nxt.weight[0].numel() // units
            view = masks[next_name].view(nxt.weight.shape[0], units, cols_per_unit)
            view[:, dead] = False
            before_padded_conv = isinstance(nxt, nn.Conv2d)
            removable = const & ~positive if before_padded_conv else const
            kept_units.append(int((~(dead | removable)).sum()))
    return Mask(masks), kept_units


def rebuilt(model: nn.Module, widths: list[int]) -> nn.Module:
    """A fresh model of the same class with the predicted hidden widths: its size is the expected size."""
    if isinstance(model, LeNet):
        return LeNet(tuple(widths), model.layers[0].in_features, model.head.out_features)
    if isinstance(model, ConvNet):
        n = len(model.convs)
        return ConvNet(tuple(widths[:n]), tuple(widths[n:]), (3, 32, 32), model.head.out_features)
    it = iter(widths)
    return VGG(tuple(e if e == "M" else next(it) for e in VGG16_PLAN), (3, 32, 32), model.head.out_features)


# VGG-16 once only: it is the slow one.
CASES = [("lenet_300_100", (1, 28, 28), 0), ("lenet_300_100", (1, 28, 28), 1), ("conv2", (3, 32, 32), 0),
         ("conv2", (3, 32, 32), 1), ("vgg16", (3, 32, 32), 0)]


@pytest.mark.parametrize(("name", "shape", "seed"), CASES)
def test_compact_is_exact_and_as_small_as_predicted(name: str, shape: tuple[int, ...], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    model = create_model(name, seed=seed, init="kaiming_normal")
    randomize(model, gen)
    mask, widths = structured_mask(model, gen, rows=0.3, cols=0.3, unstructured=0.2)
    mask.apply_(model)
    model.eval()
    small = compact(model, mask)
    x = torch.randn(4, *shape, generator=gen)
    with torch.no_grad():
        ref, out = model(x), small(x)
    assert ref.abs().max() > 0.1  # the comparison is not between two near-zero outputs
    assert (ref - out).abs().max() <= TOL

    expected = n_params(rebuilt(model, widths))
    assert n_params(small) == expected == small.compact_summary.params_after
    assert compact_summary(model, mask) == small.compact_summary
    assert small.compact_summary.params_before == n_params(model) > expected
    assert [c.units_after for c in small.compact_summary.layers[:-1]] == widths
    assert type(small) is type(model) and prunable_names(small) == prunable_names(model)
    # Compaction removes whole units only: pruned weights inside kept units stay zero.
    zeros_before = sum(int((~m).sum()) for m in mask.values())
    zeros_after = sum(int((p == 0).sum()) for n, p in small.named_parameters() if n in mask)
    assert 0 < zeros_after < zeros_before
    # The original is untouched.
    assert all(not isinstance(m, nn.Linear) or m.out_features in (300, 100, 256, 10) for m in model.modules())


def test_conv_constant_channels_before_padded_conv_are_kept_unless_zero() -> None:
    model = create_model("conv2", seed=0).eval()
    names = prunable_names(model)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in names}
    masks["convs.0.weight"][:4] = False  # channels 0-3 of convs.0 output their bias, feeding a padded conv
    masks["convs.1.weight"][:4] = False  # channels 0-3 of convs.1 are constant before the flatten + Linear
    with torch.no_grad():
        model.convs[0].bias[:4] = torch.tensor([1.0, -1.0, 0.5, 0.0])
        model.convs[1].bias[:4] = torch.tensor([1.0, -1.0, 0.5, 2.0])
    mask = Mask(masks)
    mask.apply_(model)
    small = compact(model, mask)
    conv0, conv1 = small.compact_summary.layers[:2]
    assert (conv0.units_after, conv0.folded, conv0.constant_kept) == (62, 2, 2)  # relu(1), relu(.5) stay
    assert (conv1.units_after, conv1.folded) == (60, 4)  # folded exactly into fcs.0's bias
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - small(x)).abs().max() <= TOL


def test_whole_layer_removed_keeps_a_placeholder_unit() -> None:
    # Every unit of layers.0 is constant and every unit of layers.1 dead: the output is a function of the
    # biases only, and modules cannot have zero width, so each layer keeps one inert unit.
    model = create_model("lenet_300_100", seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    randomize(model, gen)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()
             if n in prunable_names(model)}
    masks["layers.0.weight"][:] = False
    masks["head.weight"][:, :] = False
    Mask(masks).apply_(model)
    small = compact(model, Mask(masks))
    assert [c.units_after for c in small.compact_summary.layers] == [1, 1, 10]
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert (model(x) - small(x)).abs().max() <= TOL
        assert torch.allclose(small(x), model.head.bias.expand(5, -1))


def test_constants_cascade_through_fully_connected_layers() -> None:
    model = create_model("lenet_300_100", seed=1).eval()
    randomize(model, torch.Generator().manual_seed(1))
    masks = {"layers.0.weight": torch.zeros(300, 784, dtype=torch.bool)}  # other layers: kept (not named)
    Mask(masks).apply_(model)
    small = compact(model, Mask(masks))
    # layers.0 is constant, so layers.1 sees only constants and becomes constant too: both fold into head.
    assert [c.folded for c in small.compact_summary.layers] == [299, 99, 0]
    x = torch.randn(3, 784)
    with torch.no_grad():
        assert (model(x) - small(x)).abs().max() <= TOL


def test_dense_mask_changes_nothing() -> None:
    model = create_model("conv2", seed=0).eval()
    small = compact(model, Mask.ones(model, prunable_names(model)))
    assert n_params(small) == n_params(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), small(x))


def test_resnet_with_a_full_mask_is_unchanged_and_untraceable_models_raise() -> None:
    """ResNets go through channel groups (tests/pruning/test_groups.py); a full mask removes nothing."""
    resnet = MODELS["resnet20"]().eval()
    small = compact(resnet, Mask.ones(resnet, prunable_names(resnet)))
    assert n_params(small) == n_params(resnet)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(resnet(x), small(x))

    class Reshaping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).view(-1, 2, 2)

    with pytest.raises(LotteryError, match="cannot resolve the channel coupling.*view"):
        compact(Reshaping(), {})


def test_mask_shape_mismatch_raises() -> None:
    model = MODELS["lenet_300_100"]()
    with pytest.raises(ValueError, match="layers.0.weight"):
        compact(model, {"layers.0.weight": torch.ones(3, 3, dtype=torch.bool)})
