"""Pruned models save, reload and compute the same outputs; bad folders fail clearly."""

import pytest
import torch
from tiny_hf import FAMILIES, calib_ids, tiny_model

from lottery.llm import apply_masks, load_masks, load_pruned, prune_model, save_pruned


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_model_roundtrip_same_outputs(family, tmp_path):
    model, ids = tiny_model(family), calib_ids()
    report = prune_model(model, "sparsegpt", 0.5, ids, progress=False)
    save_pruned(model, tmp_path / "pruned", report.masks, report.to_dict())
    assert (tmp_path / "pruned" / "model.safetensors").is_file()
    loaded, masks = load_pruned(tmp_path / "pruned")
    assert type(loaded) is type(model)
    assert masks.keys() == report.masks.keys()
    assert all(torch.equal(masks[k], report.masks[k]) for k in masks)
    with torch.no_grad():
        expected, got = model(input_ids=ids).logits, loaded.eval()(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    params = dict(loaded.named_parameters())
    assert all(torch.equal(params[k] == 0, ~masks[k]) for k in masks)  # zeros survived serialization


def test_apply_masks_rezeroes_weights(tmp_path):
    model = tiny_model("llama")
    report = prune_model(model, "magnitude", 0.5, progress=False)
    save_pruned(model, tmp_path, report.masks)
    name = "model.layers.0.mlp.up_proj.weight"
    with torch.no_grad():
        dict(model.named_parameters())[name].add_(1.0)  # e.g. a dense update after pruning
    apply_masks(model, load_masks(tmp_path))
    assert torch.equal(dict(model.named_parameters())[name] == 0, ~report.masks[name])
    with pytest.raises(KeyError, match="matches no parameter"):
        apply_masks(model, {"nope.weight": torch.ones(1, dtype=torch.bool)})


def test_model_folder_without_weights_is_a_clear_error(tmp_path):
    tiny_model("llama").config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights in model folder"):
        load_pruned(tmp_path)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_pruned(tmp_path / "missing")
