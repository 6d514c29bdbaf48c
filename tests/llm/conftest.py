"""Fixtures for the one-shot LLM pruning tests."""

import pytest
import transformers
from tiny_hf import make_word_tokenizer


@pytest.fixture(scope="session")
def word_tokenizer() -> transformers.PreTrainedTokenizerFast:
    return make_word_tokenizer()
