"""The generic driver across decoder-only families transformers builds from a tiny config (no network).

For each family: the driver's block-by-block forward of the dense model (block 0's captured inputs, every
block called with its own captured arguments, fused experts unfolded) reproduces the model's own logits;
every method at 50% and 2:4 gives exact sparsity and valid 2:4 groups on the weights themselves; the pruned
model saves, reloads and gives the same logits.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
import transformers as tf

from lottery.llm import find_blocks, find_layers, get_weight, load_pruned, prune_model, save_pruned
from lottery.llm.capture import call_block, capture
from lottery.llm.checkpoint import REPORT_FILE
from lottery.llm.experts import unfused_experts
from lottery.pruning.nm import check_nm

VOCAB = 96
COMMON = {"vocab_size": VOCAB, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64}
LLAMA_LIKE = {**COMMON, "hidden_size": 32, "intermediate_size": 64, "num_key_value_heads": 2,
              "tie_word_embeddings": False}
SLIDING = {"sliding_window": 4}  # shorter than the 16-token rows: sliding and global masks differ

FAMILIES = {  # name: (model class, config)
    "llama": (tf.LlamaForCausalLM, lambda: tf.LlamaConfig(**LLAMA_LIKE)),
    "mistral": (tf.MistralForCausalLM, lambda: tf.MistralConfig(**LLAMA_LIKE, **SLIDING)),
    "qwen2": (tf.Qwen2ForCausalLM, lambda: tf.Qwen2Config(**LLAMA_LIKE, use_sliding_window=True, max_window_layers=1,
                                                           **SLIDING)),
    "qwen3": (tf.Qwen3ForCausalLM, lambda: tf.Qwen3Config(**LLAMA_LIKE, head_dim=8)),
    "gemma": (tf.GemmaForCausalLM, lambda: tf.GemmaConfig(**LLAMA_LIKE, head_dim=8)),
    "gemma2": (tf.Gemma2ForCausalLM, lambda: tf.Gemma2Config(**LLAMA_LIKE, head_dim=8, **SLIDING)),
    "gemma3_text": (tf.Gemma3ForCausalLM, lambda: tf.Gemma3TextConfig(
        **LLAMA_LIKE, head_dim=8, layer_types=["sliding_attention", "full_attention"], **SLIDING)),
    "phi3": (tf.Phi3ForCausalLM, lambda: tf.Phi3Config(**LLAMA_LIKE, pad_token_id=0)),
    "opt": (tf.OPTForCausalLM, lambda: tf.OPTConfig(**COMMON, hidden_size=32, ffn_dim=64, word_embed_proj_dim=32)),
    "gpt2": (tf.GPT2LMHeadModel, lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                       n_positions=64)),
    "gpt_neox": (tf.GPTNeoXForCausalLM, lambda: tf.GPTNeoXConfig(**COMMON, hidden_size=32, intermediate_size=64)),
    "falcon": (tf.FalconForCausalLM, lambda: tf.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                             num_attention_heads=4)),
    "stablelm": (tf.StableLmForCausalLM, lambda: tf.StableLmConfig(**LLAMA_LIKE)),
    "olmo2": (tf.Olmo2ForCausalLM, lambda: tf.Olmo2Config(**LLAMA_LIKE)),
    "mixtral": (tf.MixtralForCausalLM, lambda: tf.MixtralConfig(**LLAMA_LIKE, num_local_experts=4,
                                                                num_experts_per_tok=2)),
    "qwen2_moe": (tf.Qwen2MoeForCausalLM, lambda: tf.Qwen2MoeConfig(
        **LLAMA_LIKE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=64)),
}
METHODS = ("magnitude", "wanda", "sparsegpt")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: one thread is several times faster than an intra-op pool on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(family: str, seed: int = 0) -> torch.nn.Module:
    cls, config = FAMILIES[family]
    torch.manual_seed(seed)
    model = cls(config()).eval()
    with torch.no_grad():  # some families initialise norms/biases to constants; random ones test more
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def ids(nsamples: int = 3, seqlen: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits_with_last_block_output(model: torch.nn.Module, row: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits for ``row`` with the last block's output replaced by ``hidden``."""
    _, blocks = find_blocks(model)

    def replace(_m, _a, out):
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    handle = blocks[-1].register_forward_hook(replace)
    try:
        return model(input_ids=row).logits
    finally:
        handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_block_by_block_forward_reproduces_logits(family: str) -> None:
    model, x = tiny(family), ids()
    path, blocks = find_blocks(model)
    captured = capture(model, path, blocks, x, torch.device("cpu"))
    if family in ("gemma2", "gemma3_text", "qwen2"):  # sliding and global layers alternate: different masks
        a, b = (c.kwargs.get("attention_mask") for c in captured.calls)  # None = plain causal (SDPA is_causal)
        assert (a is None) != (b is None) or (a is not None and not torch.equal(a, b))
    if family == "gemma3_text":  # local and global rotary tables
        cos0, cos1 = (c.kwargs["position_embeddings"][0] for c in captured.calls)
        assert not torch.allclose(cos0, cos1)
    for j in range(x.shape[0]):
        h = captured.inputs[j]
        for i, block in enumerate(blocks):
            with unfused_experts(block, f"{path}.{i}"):
                h = call_block(block, h, captured.calls[i])
        want = model(input_ids=x[j : j + 1]).logits
        got = logits_with_last_block_output(model, x[j : j + 1], h)
        assert want.abs().max() > 0.1
        assert (got - want).abs().max() <= 1e-5


def _check_pruned(model: torch.nn.Module, report, before: dict[str, torch.Tensor], nm: bool) -> None:
    params = dict(model.named_parameters())
    assert report.layers and report.total_sparsity == 0.5
    for layer in report.layers:
        assert layer.pruned * 2 == layer.numel, layer.name
    pruned_params = set(report.masks)
    for name, mask in report.masks.items():
        W = params[name].detach()
        # pruned weights are zero; a kept one may be zero too (SparseGPT zeroes columns no input reaches)
        assert W.shape == mask.shape and bool((W[~mask] == 0).all()) and int((~mask).sum()) * 2 == mask.numel(), name
        if nm:  # groups run along d_in: fused experts are [E, d_out, d_in]; get_weight turns Conv1D to [d_out, d_in]
            views = list(W) if W.dim() == 3 else [get_weight(model.get_submodule(name.rsplit(".", 1)[0]))]
            assert all(check_nm(v, 2, 4) for v in views), name
    for name, value in before.items():  # embeddings, norms, heads, routers: untouched
        if name not in pruned_params:
            assert torch.equal(params[name].detach(), value), name


DEFAULT_VARIANTS = {("sparsegpt", "2:4"), ("wanda", "50%")}  # the other four are marked slow
VARIANTS = [pytest.param(method, pattern, marks=() if (method, pattern) in DEFAULT_VARIANTS else pytest.mark.slow)
            for method in METHODS for pattern in ("50%", "2:4")]


@functools.cache
def _pruned(family: str, method: str, pattern: str):
    """(model, report, dense parameters): one prune per variant, shared by the tests that read it."""
    model = tiny(family)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    n, m = (2, 4) if pattern == "2:4" else (0, 0)
    report = prune_model(model, method, 0.5, ids(), n=n, m=m, true_sequential=method == "sparsegpt",
                         progress=False)
    return model, report, before


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("method", "pattern"), VARIANTS)
def test_exact_sparsity_and_valid_groups(family: str, method: str, pattern: str) -> None:
    model, report, before = _pruned(family, method, pattern)
    m = 4 if pattern == "2:4" else 0
    _check_pruned(model, report, before, nm=bool(m))
    if m:
        assert report.nm_valid is True
    assert all(r.fallback is None for r in report.layers)  # every layer (expert) saw calibration tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_model_saves_and_reloads(family: str, tmp_path) -> None:
    model, report, _ = _pruned(family, "sparsegpt", "2:4")
    save_pruned(model, tmp_path, report.masks, report.to_dict())
    reloaded, masks = load_pruned(tmp_path)
    assert masks.keys() == report.masks.keys()
    row = ids(1, 12, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids=row).logits, model(input_ids=row).logits,
                                   atol=1e-6, rtol=0)
    params = dict(reloaded.named_parameters())
    assert all(bool((params[k][~v] == 0).all()) for k, v in masks.items())


def test_moe_experts_counted_routers_dense() -> None:
    """Every expert is pruned separately (its own mask slice); Qwen2-MoE's shared_expert_gate router stays dense."""
    model = tiny("qwen2_moe")
    report = prune_model(model, "wanda", 0.5, ids(), progress=False)
    names = [r.name for r in report.layers]
    assert sum(".mlp.experts.gate_up_proj." in n for n in names) == 2 * 4  # 2 blocks x 4 experts
    assert sum(".mlp.experts.down_proj." in n for n in names) == 2 * 4
    assert not any(n.endswith("shared_expert_gate") for n in names)
    assert any(n.endswith("shared_expert.down_proj") for n in names)
    assert report.masks["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 64, 32)
    with_routers = prune_model(tiny("qwen2_moe"), "wanda", 0.5, ids(), prune_routers=True, progress=False)
    assert any(r.name.endswith("shared_expert_gate") for r in with_routers.layers)


def test_expert_without_tokens_falls_back_to_magnitude_and_is_reported(tmp_path) -> None:
    cls, config = FAMILIES["mixtral"]
    cfg = config()
    cfg.num_local_experts, cfg.num_experts_per_tok = 8, 1
    torch.manual_seed(0)
    model = cls(cfg).eval()
    x = ids(1, 3)  # 3 tokens, top-1 routing: at most 3 of 8 experts per block see a token
    report = prune_model(model, "sparsegpt", 0.5, x, progress=False)
    fallback = [r for r in report.layers if r.fallback]
    assert len(fallback) >= 2 * 2 * 5  # blocks x (gate_up, down) x experts without tokens
    assert all(r.rel_error is None and r.pruned * 2 == r.numel for r in fallback)
    calibrated = [r for r in report.layers if ".experts." in r.name and not r.fallback]
    assert calibrated and all(r.rel_error is not None for r in calibrated)
    gate_up = model.model.layers[0].mlp.experts.gate_up_proj.detach()
    for r in fallback:  # magnitude: the kept half is exactly the larger half of |W| of that expert
        if r.name.startswith("model.layers.0.mlp.experts.gate_up_proj."):
            e = int(r.name.rsplit(".", 1)[1])
            W0 = tiny_mixtral_dense(cfg).model.layers[0].mlp.experts.gate_up_proj.detach()[e]
            kept = gate_up[e] != 0
            assert W0.abs()[kept].min() >= W0.abs()[~kept].max()
    save_pruned(model, tmp_path, report.masks, report.to_dict())
    saved = json.loads((tmp_path / REPORT_FILE).read_text())
    assert sum(1 for lr in saved["layers"] if lr["fallback"]) == len(fallback)


def tiny_mixtral_dense(cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    return tf.MixtralForCausalLM(cfg).eval()


def test_every_block_linear_is_found() -> None:
    """The generic search finds the decoder stack and all of its linears (Phi-3's fused qkv, Falcon's fused qkv)."""
    expected = {"llama": 7, "phi3": 4, "falcon": 4, "gpt_neox": 4, "gpt2": 4, "opt": 6}
    for family, count in expected.items():
        path, blocks = find_blocks(tiny(family))
        assert len(blocks) == 2
        assert len(find_layers(blocks[0], f"{path}.0")) == count, family
        assert all(get_weight(m).dim() == 2 for m in find_layers(blocks[0], f"{path}.0").values())


def test_moe_with_two_replicas_prunes_like_one_device() -> None:
    """Data-parallel calibration (two CPU replicas of each block) through the unfolded experts."""
    x = ids(nsamples=4)
    one, two = tiny("mixtral"), tiny("mixtral")
    a = prune_model(one, "wanda", 0.5, x, n=2, m=4, progress=False)
    b = prune_model(two, "wanda", 0.5, x, n=2, m=4, devices=["cpu", "cpu"], progress=False)
    assert a.masks.keys() == b.masks.keys() and "model.layers.1.mlp.experts.down_proj" in a.masks
    agree = sum(int((a.masks[k] == b.masks[k]).sum()) for k in a.masks) / sum(v.numel() for v in a.masks.values())
    assert agree > 0.999  # only float summation order differs
    if agree == 1:  # same masks: wanda changes no kept weight, so the fused parameters are equal
        for p, q in zip(one.parameters(), two.parameters(), strict=True):
            assert torch.equal(p, q)
