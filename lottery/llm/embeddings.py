"""Sentence-encoder evaluation: mean-pooled embeddings and their cosine similarity to the dense model's.

Used for encoders such as all-MiniLM-L6-v2, which have no language-model head to take a perplexity of.
Sentences come from a plain text file (WikiText-2); evaluation and calibration use disjoint sentences.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lottery.llm.calibration import sample_segments


def split_sentences(text: str, min_chars: int = 30) -> list[str]:
    """Sentences of a WikiText-style file: headings (`= Title =`) dropped, lines split after ' . '."""
    sentences = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for part in re.split(r"(?<= \.) ", line):
            if len(part) >= min_chars:
                sentences.append(part.strip())
    return sentences


def eval_calib_split(sentences: list[str], n_eval: int) -> tuple[list[str], list[str]]:
    """Even-indexed sentences (first ``n_eval``) for evaluation, odd-indexed ones for calibration."""
    return sentences[0::2][:n_eval], sentences[1::2]


def encoder_calibration(tokenizer: Any, sentences: list[str], nsamples: int, seqlen: int, seed: int = 0) -> Tensor:
    """[nsamples, seqlen] windows of the concatenated sentences, each framed as [CLS] ... [SEP].

    Fixed-length rows without padding: the sequential driver replays one attention mask for every row.
    """
    ids = tokenizer(" ".join(sentences), add_special_tokens=False, return_tensors="pt")["input_ids"]
    body = sample_segments(ids, nsamples, seqlen - 2, seed)
    cls = torch.full((nsamples, 1), tokenizer.cls_token_id, dtype=body.dtype)
    sep = torch.full((nsamples, 1), tokenizer.sep_token_id, dtype=body.dtype)
    return torch.cat([cls, body, sep], dim=1)


@torch.no_grad()
def sentence_embeddings(
    model: nn.Module, tokenizer: Any, sentences: list[str], batch_size: int = 32, max_length: int = 128,
    device: torch.device | str | None = None, progress: bool = True,
) -> Tensor:
    """L2-normalised mean-pooled last hidden states (the sentence-transformers recipe), [len(sentences), d]."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        starts = range(0, len(sentences), batch_size)
        for i in tqdm(starts, desc="embeddings", unit="batch", disable=not progress):
            batch = tokenizer(sentences[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(nn.functional.normalize(pooled, dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def mean_cosine(emb: Tensor, reference: Tensor) -> float:
    """Mean over sentences of cos(emb_i, reference_i)."""
    return float(nn.functional.cosine_similarity(emb.double(), reference.double(), dim=-1).mean())
