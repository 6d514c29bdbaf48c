"""Model adapters (blocks, layers, Conv1D layout, globs) and the running input statistics."""

import pytest
import torch
from tiny_hf import FAMILIES, tiny_model
from transformers import T5Config, T5ForConditionalGeneration
from transformers.pytorch_utils import Conv1D

from lottery.errors import ConfigError
from lottery.llm import InputStats, find_blocks, find_layers, get_weight, set_weight
from lottery.llm.capture import capture, layer_groups

EXPECTED = {  # family: (block path, prunable layers per block)
    "llama": ("model.layers", 7), "mistral": ("model.layers", 7), "qwen2": ("model.layers", 7),
    "opt": ("model.decoder.layers", 6), "gpt2": ("transformer.h", 4), "bert": ("bert.encoder.layer", 6),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_and_layers_found_without_embeddings_or_head(family):
    model = tiny_model(family)
    path, blocks = find_blocks(model)
    assert (path, len(blocks)) == (EXPECTED[family][0], 2)
    layers = find_layers(blocks[0], f"{path}.0")
    assert len(layers) == EXPECTED[family][1]
    assert all(name.startswith(f"{path}.0.") for name in layers)
    assert not any("embed" in name or "head" in name or "wte" in name for name in layers)


def test_include_exclude_globs():
    model = tiny_model("llama")
    block = model.model.layers[1]
    mlp = find_layers(block, "model.layers.1", include="*mlp*")
    assert sorted(n.rsplit(".", 1)[1] for n in mlp) == ["down_proj", "gate_proj", "up_proj"]
    attn = find_layers(block, "model.layers.1", exclude=["*mlp*", "*o_proj"])
    assert sorted(n.rsplit(".", 1)[1] for n in attn) == ["k_proj", "q_proj", "v_proj"]


TRUE_SEQUENTIAL = {  # the groups of the SparseGPT/Wanda reference code, per family
    "llama": [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]],
    "opt": [["k_proj", "v_proj", "q_proj"], ["out_proj"], ["fc1"], ["fc2"]],
    "gpt2": [["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]],
    "bert": [["self.query", "self.key", "self.value"], ["output.dense"], ["intermediate.dense"], ["output.dense"]],
}


@pytest.mark.parametrize("family", list(TRUE_SEQUENTIAL))
def test_true_sequential_groups_derived_from_the_forward(family):
    """Layers reading the same input tensor form a group, in call order: the reference codes' family tables."""
    model = tiny_model(family)
    path, blocks = find_blocks(model)
    captured = capture(model, path, blocks, torch.randint(0, 100, (1, 8)), torch.device("cpu"))
    layers = find_layers(blocks[0], f"{path}.0")
    groups = layer_groups(blocks[0], layers, captured.inputs[0], captured.calls[0])
    short = [[".".join(n.split(".")[-2:]) if family in ("gpt2", "bert") else n.rsplit(".", 1)[1] for n in g]
             for g in groups]
    assert short == TRUE_SEQUENTIAL[family]


def test_conv1d_weight_is_seen_as_out_by_in():
    conv = Conv1D(nf=6, nx=4)  # 4 inputs -> 6 outputs, weight stored [4, 6]
    x = torch.randn(3, 4)
    W = get_weight(conv)
    assert W.shape == (6, 4)
    torch.testing.assert_close(x @ W.T + conv.bias, conv(x))  # W acts as y = W x
    W_new = torch.zeros_like(W)
    W_new[0, 0] = 1.0
    set_weight(conv, W_new)
    assert conv.weight.shape == (4, 6) and conv.weight[0, 0] == 1.0 and conv.weight.abs().sum() == 1.0


def test_encoder_decoder_is_a_clear_error():
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2))
    with pytest.raises(ConfigError, match=r"several block lists \(encoder.block, decoder.block\)"):
        find_blocks(t5)


def test_model_without_blocks_names_what_was_searched():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="no decoder blocks found in Sequential.*_no_split_modules.*ModuleLists "
                                          "present: none"):
        find_blocks(model)


def test_input_stats_running_average_equals_batch_formula():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 5, 8, generator=g), torch.randn(1, 5, 8, generator=g), torch.randn(3, 5, 8, generator=g)]
    stats = InputStats(8)
    for b in batches:
        stats.add_batch(b)
    X = torch.cat([b.reshape(-1, 8) for b in batches]).T.double()  # [d_in, tokens]
    N = 6  # sequences, not tokens
    assert stats.nsamples == N
    torch.testing.assert_close(stats.H.double(), 2 / N * X @ X.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats.sq_norm.double(), (X**2).sum(1) / N, atol=1e-5, rtol=1e-5)
