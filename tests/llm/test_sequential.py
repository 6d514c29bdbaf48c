"""The sequential driver over whole tiny Hugging Face models."""

import copy

import pytest
import torch
from tiny_hf import FAMILIES, calib_ids, tiny_model

from lottery.llm import find_blocks, find_layers, get_weight, prune_model
from lottery.pruning.nm import check_nm


def _block0_outputs(model, ids):
    """Outputs of block 0 for each calibration row, from ordinary full forwards."""
    _, blocks = find_blocks(model)
    outs = []
    handle = blocks[0].register_forward_hook(lambda _m, _a, out: outs.append(out.detach().clone()))
    with torch.no_grad():
        for j in range(ids.shape[0]):
            model(input_ids=ids[j : j + 1])
    handle.remove()
    return outs


@pytest.mark.parametrize("family", FAMILIES)
def test_block1_sees_pruned_block0_outputs(family):
    model, ids = tiny_model(family), calib_ids()
    dense_outs = _block0_outputs(copy.deepcopy(model), ids)
    _, blocks = find_blocks(model)
    seen = []
    blocks[1].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    prune_model(model, "sparsegpt", 0.5, ids, progress=False)
    pruned_outs = _block0_outputs(model, ids)  # block 0 is pruned now
    # seen[0] is the capture's dense forward of row 0 (it records every block's arguments); then comes
    # block 1's statistics pass, before block 1 itself is pruned
    assert torch.allclose(seen[0], dense_outs[0], atol=1e-6)
    first_pass = seen[1 : 1 + ids.shape[0]]
    for got, pruned, dense in zip(first_pass, pruned_outs, dense_outs, strict=True):
        torch.testing.assert_close(got, pruned, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, dense, atol=1e-3)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_report_sparsity_masks_and_untouched_modules(method):
    model, ids = tiny_model("llama"), calib_ids()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = prune_model(model, method, 0.5, ids, exclude="*.1.mlp.down_proj", progress=False)
    params = dict(model.named_parameters())
    assert len(report.layers) == 13 and "model.layers.1.mlp.down_proj.weight" not in report.masks
    for layer in report.layers:
        W = params[f"{layer.name}.weight"]
        mask = report.masks[f"{layer.name}.weight"]
        assert layer.sparsity == 0.5 and layer.rel_error is not None and 0 < layer.rel_error < 1
        assert torch.equal(W == 0, ~mask)
    assert report.total_sparsity == 0.5
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                 "model.layers.1.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(params[name], before[name]), name


def test_recorded_error_matches_recomputation_on_captured_inputs():
    model, ids = tiny_model("opt"), calib_ids()
    dense = copy.deepcopy(model)
    xs = []
    dense.model.decoder.layers[0].fc1.register_forward_hook(lambda _m, inp, _o: xs.append(inp[0].reshape(-1, 32)))
    with torch.no_grad():
        for j in range(ids.shape[0]):
            dense(input_ids=ids[j : j + 1])
    report = prune_model(model, "wanda", 0.5, ids, progress=False)
    X = torch.cat(xs).T  # fc1 of block 0 sees the same inputs in both models: nothing before it is pruned
    W, W_new = dense.model.decoder.layers[0].fc1.weight, model.model.decoder.layers[0].fc1.weight
    W, W_new = W.detach(), W_new.detach()
    expected = float(((W - W_new) @ X).norm() / (W @ X).norm())
    (layer,) = [r for r in report.layers if r.name == "model.decoder.layers.0.fc1"]
    assert layer.rel_error == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_two_four_over_whole_model(family):
    model = tiny_model(family)
    report = prune_model(model, "wanda", 0.0, calib_ids(), n=2, m=4, progress=False)
    assert report.nm_valid is True and report.total_sparsity == 0.5
    path, blocks = find_blocks(model)
    for i, block in enumerate(blocks):
        for layer in find_layers(block, f"{path}.{i}").values():
            assert check_nm(get_weight(layer), 2, 4)  # Conv1D checked in [out, in] layout


def test_true_sequential_recollects_statistics_between_groups():
    ids = calib_ids()
    plain = prune_model(tiny_model("llama"), "sparsegpt", 0.5, ids, progress=False)
    seq = prune_model(tiny_model("llama"), "sparsegpt", 0.5, ids, true_sequential=True, progress=False)
    by_name = {r.name: r.rel_error for r in plain.layers}
    for r in seq.layers[:3]:  # q/k/v: first group, same inputs either way
        assert r.rel_error == pytest.approx(by_name[r.name], rel=1e-6)
    o_proj = "model.layers.0.self_attn.o_proj"
    assert dict((r.name, r.rel_error) for r in seq.layers)[o_proj] != pytest.approx(by_name[o_proj], rel=1e-6)


def test_magnitude_needs_no_calibration():
    report = prune_model(tiny_model("gpt2"), "magnitude", 0.3, progress=False)
    assert report.layers and all(r.rel_error is None for r in report.layers)
    assert all(r.pruned == int(r.numel * 0.3) for r in report.layers)


def test_driver_bad_input():
    model, ids = tiny_model("llama"), calib_ids()
    with pytest.raises(ValueError, match="sparsity must be in"):
        prune_model(model, "wanda", 1.0, ids)
    with pytest.raises(ValueError, match="unknown pruning method"):
        prune_model(model, "obd", 0.5, ids)
    with pytest.raises(ValueError, match="needs calibration data"):
        prune_model(model, "sparsegpt", 0.5)
    with pytest.raises(ValueError, match="divisible by m=3"):
        prune_model(model, "wanda", 0.5, ids, n=2, m=3, progress=False)
