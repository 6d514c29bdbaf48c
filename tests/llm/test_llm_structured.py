"""Structured LLM pruning: Wanda scores summed over MLP neurons and key/value groups; the narrower model saved
with save_pretrained reloads with plain AutoModelForCausalLM and gives the masked model's logits."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from tiny_hf import VOCAB, calib_ids, tiny_model

from lottery.errors import ConfigError, LotteryError
from lottery.llm.structured import apply_mask_, calibration_norms, export_narrow, plan_structured

TOL = 1e-5


def tiny_llama(heads: int = 4, kv_heads: int = 2) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=heads, num_key_value_heads=kv_heads,
                                   max_position_embeddings=64, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_calibration_norms_match_a_direct_computation() -> None:
    model = tiny_llama()
    ids = calib_ids(2, 8)
    norms = calibration_norms(model, [ids])
    captured = {}

    def grab(_module, args, _out) -> None:
        captured["x"] = args[0].detach().double()

    hook = model.model.layers[1].mlp.down_proj.register_forward_hook(grab)
    with torch.no_grad():
        model(input_ids=ids)
    hook.remove()
    want = captured["x"].reshape(-1, 64).norm(dim=0)
    assert torch.allclose(norms[1]["down_proj"], want, rtol=1e-10)


def test_mlp_score_is_wanda_summed_over_the_neuron() -> None:
    """Brute force: the plan keeps exactly the neurons with the largest summed |W| * ||X||, computed here
    weight by weight from the three member matrices."""
    model = tiny_llama()
    norms = calibration_norms(model, [calib_ids(2, 8)])
    plan = plan_structured(model, norms, mlp_ratio=0.5)
    mlp, x = model.model.layers[0].mlp, norms[0]
    scores = []
    for j in range(64):
        s = sum(abs(mlp.gate_proj.weight[j, i].item()) * x["gate_proj"][i].item() for i in range(32))
        s += sum(abs(mlp.up_proj.weight[j, i].item()) * x["gate_proj"][i].item() for i in range(32))
        s += sum(abs(mlp.down_proj.weight[o, j].item()) * x["down_proj"][j].item() for o in range(32))
        scores.append(s)
    want = sorted(sorted(range(64), key=lambda j: -scores[j])[:32])
    assert plan.mlp_keep[0].tolist() == want


@pytest.mark.parametrize("heads,kv_heads,mlp_ratio,kv_ratio",
                         [(4, 2, 0.5, 0.5), (4, 4, 0.25, 0.5), (4, 2, 0.3, 0.0), (4, 1, 0.1, 0.0)])
def test_exported_model_reloads_with_the_masked_logits(tmp_path, heads, kv_heads, mlp_ratio, kv_ratio) -> None:
    model = tiny_llama(heads, kv_heads)
    plan = plan_structured(model, calibration_norms(model, [calib_ids(4, 16)]), mlp_ratio, kv_ratio)
    masked = copy.deepcopy(model)
    apply_mask_(masked, plan)
    export_narrow(model, plan, tmp_path / "narrow")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "narrow").eval()
    cfg = reloaded.config
    assert cfg.intermediate_size == round((1 - mlp_ratio) * 64)
    assert cfg.num_key_value_heads == round((1 - kv_ratio) * kv_heads)
    assert cfg.num_attention_heads == cfg.num_key_value_heads * (heads // kv_heads)
    assert reloaded.model.layers[0].mlp.up_proj.weight.shape == (cfg.intermediate_size, 32)
    assert reloaded.model.layers[1].self_attn.o_proj.weight.shape[1] == cfg.num_attention_heads * 8
    ids = calib_ids(3, 20, seed=7)
    with torch.no_grad():
        diff = (masked(input_ids=ids).logits - reloaded(input_ids=ids).logits).abs().max().item()
    assert diff <= TOL
    n_small = sum(p.numel() for p in reloaded.parameters())
    assert n_small < sum(p.numel() for p in model.parameters()) or (mlp_ratio == 0 and kv_ratio == 0)


@pytest.mark.parametrize("key,kwargs", [("mlp_ratio", {"mlp_ratio": 1.0}), ("mlp_ratio", {"mlp_ratio": -0.2}),
                                        ("kv_ratio", {"mlp_ratio": 0.5, "kv_ratio": 1.5})])
def test_ratio_outside_range_names_the_key(key, kwargs) -> None:
    model = tiny_llama()
    with pytest.raises(ConfigError, match=rf"{key}=.*\[0, 1\)"):
        plan_structured(model, calibration_norms(model, [calib_ids(1, 4)]), **kwargs)


def test_removing_every_group_names_the_layer() -> None:
    model = tiny_llama(4, 1)
    with pytest.raises(ConfigError, match=r"every key/value group of model.layers.0.self_attn"):
        plan_structured(model, calibration_norms(model, [calib_ids(1, 4)]), 0.5, 0.6)


def test_unresolvable_model_names_the_layer() -> None:
    with pytest.raises(LotteryError, match="no model.layers"):
        calibration_norms(tiny_model("gpt2"), [calib_ids(1, 4)])
    model = tiny_llama()
    model.model.layers[1].mlp.down_proj = torch.nn.Identity()
    with pytest.raises(LotteryError, match=r"model.layers.1.mlp has no nn.Linear down_proj"):
        calibration_norms(model, [calib_ids(1, 4)])
