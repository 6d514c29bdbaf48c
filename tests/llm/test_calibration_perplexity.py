"""Calibration sampling from a local text file, and WikiText-2-style perplexity."""

import importlib.util
import math

import pytest
import torch
from tiny_hf import VOCAB, WIKITEXT, calib_ids, tiny_model

from lottery.llm import calibration_from_file, calibration_from_hub, perplexity, sample_segments
from lottery.llm.calibration import load_text, tokenize_text


def test_calibration_segments_are_seeded_windows_of_the_text(word_tokenizer):
    model = tiny_model("llama")
    ids = calibration_from_file(WIKITEXT, word_tokenizer, nsamples=6, seqlen=32, seed=1, model=model)
    assert ids.shape == (6, 32) and ids.dtype == torch.long
    again = calibration_from_file(WIKITEXT, word_tokenizer, nsamples=6, seqlen=32, seed=1, model=model)
    other = calibration_from_file(WIKITEXT, word_tokenizer, nsamples=6, seqlen=32, seed=2, model=model)
    assert torch.equal(ids, again) and not torch.equal(ids, other)
    full = tokenize_text(word_tokenizer, load_text(WIKITEXT))[0]
    windows = full.unfold(0, 32, 1)  # every contiguous 32-token window
    for row in ids:
        assert (windows == row).all(dim=1).any()


def test_seqlen_capped_to_model_max_length(word_tokenizer):
    model = tiny_model("gpt2")  # n_positions = 64
    ids = calibration_from_file(WIKITEXT, word_tokenizer, nsamples=2, seqlen=2048, model=model)
    assert ids.shape == (2, 64)


def test_sample_segments_errors(tmp_path):
    with pytest.raises(ValueError, match="fewer than seqlen"):
        sample_segments(torch.arange(10), 2, 10)
    with pytest.raises(FileNotFoundError, match="calibration text file not found"):
        load_text(tmp_path / "none.txt")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_hub_calibration_without_datasets_is_a_clear_error(word_tokenizer):
    with pytest.raises(ImportError, match="needs the `datasets` package"):
        calibration_from_hub("wikitext2", word_tokenizer)


def test_perplexity_of_uniform_predictor_is_vocab_size():
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.zero_()  # logits all zero: every token has probability 1/V
    ppl = perplexity(model, calib_ids(3, 40).reshape(-1), seqlen=16, progress=False)
    assert ppl == pytest.approx(VOCAB, rel=1e-5)


def test_perplexity_matches_mean_of_chunk_losses():
    model, ids = tiny_model("opt"), calib_ids(1, 70).reshape(-1)
    losses = []
    with torch.no_grad():
        for i in range(70 // 16):  # the 6-token tail is dropped
            chunk = ids[i * 16 : (i + 1) * 16].unsqueeze(0)
            losses.append(model(input_ids=chunk, labels=chunk).loss.item())
    expected = math.exp(sum(losses) / len(losses))
    assert perplexity(model, ids, seqlen=16, progress=False) == pytest.approx(expected, rel=1e-5)


def test_perplexity_rejects_non_causal_models_and_short_text():
    with pytest.raises(ValueError, match="causal language model"):
        perplexity(tiny_model("bert"), calib_ids(1, 32), seqlen=16)
    with pytest.raises(ValueError, match="at least one full chunk"):
        perplexity(tiny_model("llama"), calib_ids(1, 8), seqlen=16)
