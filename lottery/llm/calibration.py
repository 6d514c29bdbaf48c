"""Calibration data: random fixed-length token segments, as in the SparseGPT/Wanda reference code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lottery.errors import ConfigError
from lottery.llm.corpora import CORPORA, janeausten_text


def model_max_length(model_or_config: Any) -> int | None:
    """The longest sequence the model accepts (``max_position_embeddings`` or GPT-2's ``n_positions``)."""
    config = getattr(model_or_config, "config", model_or_config)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def tokenize_text(tokenizer: Any, text: str) -> Tensor:
    """The whole text as one row of token ids, [1, L]."""
    return tokenizer(text, return_tensors="pt")["input_ids"]


def load_text(path: str | Path) -> str:
    """Read a UTF-8 text file, with a clear error when it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration text file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"calibration text file is empty: {path}")
    return text


def calibration_text(corpus: str, path: str | Path | None = None) -> tuple[str, str]:
    """(text, a line saying which text it is) of calibration corpus `corpus`; `path` is corpus "file"'s file."""
    if corpus == "janeausten":
        return janeausten_text()
    if corpus != "file" or path is None:
        raise ConfigError(f"calibration.corpus={corpus!r} (text={path!r}) is not allowed; choose one of "
                          f"{', '.join(CORPORA)} (file needs calibration.text)")
    text = load_text(path)
    return text, f"{path} ({len(text):,} characters)"


def sample_segments(ids: Tensor, nsamples: int, seqlen: int, seed: int = 0) -> Tensor:
    """``nsamples`` windows of ``seqlen`` tokens at uniformly random starts of ``ids`` [1, L] -> [nsamples, seqlen]."""
    if nsamples <= 0 or seqlen <= 0:
        raise ValueError(f"nsamples and seqlen must be positive, got nsamples={nsamples}, seqlen={seqlen}")
    ids = ids.reshape(-1)
    if ids.numel() <= seqlen:
        raise ValueError(f"text has {ids.numel()} tokens, fewer than seqlen + 1 = {seqlen + 1}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=generator)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def _cap_seqlen(seqlen: int, model: Any | None) -> int:
    limit = model_max_length(model) if model is not None else None
    return min(seqlen, limit) if limit else seqlen


def calibration_from_file(
    path: str | Path, tokenizer: Any, nsamples: int = 128, seqlen: int = 2048, seed: int = 0,
    model: Any | None = None,
) -> Tensor:
    """Calibration token ids [nsamples, seqlen] from a local text file; seqlen is capped to ``model``'s limit."""
    ids = tokenize_text(tokenizer, load_text(path))
    return sample_segments(ids, nsamples, _cap_seqlen(seqlen, model), seed)


def _load_dataset(*args: Any, **kwargs: Any) -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "loading WikiText-2 / C4 needs the `datasets` package (pip install datasets) and network access; "
            "or use calibration_from_file with a local text file"
        ) from e
    return datasets.load_dataset(*args, **kwargs)


def load_wikitext2_text(split: str = "train") -> str:
    """WikiText-2 (raw) split as one string, joined the way the papers do ("\\n\\n")."""
    data = _load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    return "\n\n".join(data["text"])


def calibration_from_hub(
    name: str, tokenizer: Any, nsamples: int = 128, seqlen: int = 2048, seed: int = 0,
    model: Any | None = None,
) -> Tensor:
    """Calibration ids from the Hub: ``"wikitext2"`` (train split) or ``"c4"`` (first en shard).

    For C4, as in the reference code, each sample is a random window of a random document longer than seqlen.
    """
    seqlen = _cap_seqlen(seqlen, model)
    if name == "wikitext2":
        return sample_segments(tokenize_text(tokenizer, load_wikitext2_text("train")), nsamples, seqlen, seed)
    if name != "c4":
        raise ValueError(f"unknown calibration dataset {name!r}; choose 'wikitext2' or 'c4'")
    data = _load_dataset(
        "allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"}, split="train"
    )
    generator = torch.Generator().manual_seed(seed)
    samples = []
    while len(samples) < nsamples:
        doc = data[int(torch.randint(0, len(data), (1,), generator=generator))]["text"]
        ids = tokenize_text(tokenizer, doc).reshape(-1)
        if ids.numel() <= seqlen:
            continue
        start = int(torch.randint(0, ids.numel() - seqlen, (1,), generator=generator))
        samples.append(ids[start : start + seqlen])
    return torch.stack(samples)
