"""Tiny local Hugging Face models and a word-level tokenizer: no network, CPU-only, seconds to build.

A uniquely named module (not conftest) so it cannot clash with tests/conftest.py on sys.path.
"""

from __future__ import annotations

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

WIKITEXT = "/work/shared/data/text/wikitext2_test.txt"
VOCAB = 128


def tiny_config(family: str):
    """A 2-block config of each supported family; hidden sizes divisible by 4 for 2:4 sparsity."""
    common = {"vocab_size": VOCAB, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64}
    if family in ("llama", "mistral", "qwen2"):
        cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}[family]
        return cls(hidden_size=32, intermediate_size=64, num_key_value_heads=2, tie_word_embeddings=False,
                   **common)
    if family == "opt":
        return transformers.OPTConfig(hidden_size=32, ffn_dim=64, word_embed_proj_dim=32, **common)
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                       bos_token_id=0, eos_token_id=0)
    if family == "bert":
        return transformers.BertConfig(hidden_size=32, intermediate_size=64, **common)
    raise KeyError(family)


MODEL_CLASSES = {
    "llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
    "qwen2": transformers.Qwen2ForCausalLM, "opt": transformers.OPTForCausalLM,
    "gpt2": transformers.GPT2LMHeadModel, "bert": transformers.BertForMaskedLM,
}
FAMILIES = tuple(MODEL_CLASSES)


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MODEL_CLASSES[family](tiny_config(family)).eval()


def calib_ids(nsamples: int = 4, seqlen: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))


def make_word_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer over the 127 most frequent words of the first 50k chars of WikiText-2."""
    with open(WIKITEXT, encoding="utf-8") as f:
        words = f.read(50_000).split()
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    vocab = {"[UNK]": 0}
    for w, _ in sorted(counts.items(), key=lambda kv: -kv[1])[: VOCAB - 1]:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", model_max_length=10**9)
