"""The one-shot job on families the hand-written table did not know (Gemma 3 text, Mixtral), and on no blocks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_config
from test_families import tiny
from tiny_hf import VOCAB, make_word_tokenizer

from lottery.errors import ConfigError
from lottery.llm.job import check_nm_widths, run

FAST = ["calibration.nsamples=4", "calibration.seqlen=32", "eval.seqlen=32", "eval.max_chunks=2", "progress_bar=false"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family", ["gemma3_text", "mixtral"])
def test_job_prunes_a_family_outside_the_old_table(family: str, tmp_path: Path) -> None:
    folder = tmp_path / family
    model = tiny(family)
    model.resize_token_embeddings(VOCAB)  # the word tokenizer's vocabulary
    model.save_pretrained(folder)
    make_word_tokenizer().save_pretrained(folder)
    cfg = make_config(["+exp=oneshot_llm", *FAST, f"model.name_or_path={folder}", "prune.method=wanda",
                       "prune.pattern=2:4", "logger=none", f"store.root={tmp_path / 'runs'}"])
    (row,) = run(cfg)
    assert row["total_sparsity"] == 0.5 and row["nm_valid"] is True
    assert row["perplexity"] > 1 and torch.isfinite(torch.tensor(row["perplexity"]))


def test_model_without_blocks_is_a_config_error() -> None:
    flat = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 8))
    with pytest.raises(ConfigError, match="no decoder blocks found in Sequential"):
        check_nm_widths(flat, ["2:4"], [], [])
