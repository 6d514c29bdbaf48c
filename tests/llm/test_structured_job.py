"""Structured pruning through the one-shot job: `prune.pattern=neurons | neurons+heads`, the narrow model in
the variant folder (reloaded with plain from_pretrained), and the one-line config errors before any run folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from helpers import REPO, make_config
from tiny_hf import make_word_tokenizer, tiny_model

from lottery.errors import ConfigError
from lottery.llm.job import build_subject, run
from lottery.llm.perplexity import perplexity
from lottery.llm.schema import validate_oneshot
from lottery.llm.structured import calibration_norms, plan_structured
from lottery.tracking import RunStore, load_json

FAST = ["calibration.corpus=file", "calibration.text=${lottery_text_root:}/wikitext2_test.txt",
        "calibration.nsamples=4", "calibration.seqlen=32", "eval.seqlen=32", "eval.max_chunks=3", "progress_bar=false",
        "logger=none"]


def _save(tmp_path: Path, family: str) -> Path:
    folder = tmp_path / f"tiny-{family}"
    tiny_model(family).save_pretrained(folder)
    make_word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_llama(tmp_path: Path) -> Path:
    """2 blocks, hidden 32, MLP 64, 4 query heads over 2 key/value groups."""
    return _save(tmp_path, "llama")


def _cfg(*overrides: str):
    return make_config(["+exp=oneshot_llm", *FAST, *overrides])


def _no_run_folder(cfg) -> bool:
    return not RunStore(cfg.store.root, cfg, prefix="oneshot").path.exists()


def test_structured_variants_store_a_narrow_model_that_reloads(tiny_llama: Path) -> None:
    overrides = [f"model.name_or_path={tiny_llama}", "prune.method=[wanda,magnitude]",
                 "prune.pattern=[neurons,neurons+heads]", "prune.sparsity=0.5"]
    cfg = _cfg(*overrides)
    rows = run(cfg)
    path = RunStore(cfg.store.root, cfg, prefix="oneshot").path
    assert [(r["method"], r["pattern"]) for r in rows] == [
        ("wanda", "neurons"), ("magnitude", "neurons"), ("wanda", "neurons+heads"), ("magnitude", "neurons+heads")]
    subject = build_subject(cfg)
    dense = subject.load()
    mlp_params = 3 * 32 * 64  # gate, up, down of one block
    attn_params = 2 * (32 * 32) + 2 * (32 * 16)  # q, o: 4 heads x 8; k, v: 2 groups x 8
    for r in rows:
        folder = path / f"{r['method']}_{r['pattern'].replace('+', '_')}"
        small = transformers.AutoModelForCausalLM.from_pretrained(folder / "model").eval()
        assert small.config.intermediate_size == 32 and r["mlp_removed"] == 0.5
        heads = r["pattern"] == "neurons+heads"
        assert small.config.num_key_value_heads == (1 if heads else 2) and r["kv_removed"] == (0.5 if heads else 0)
        assert small.config.num_attention_heads == 2 * small.config.num_key_value_heads
        # Parameter counts by hand: every block loses half its MLP, and half its attention with heads.
        removed = 2 * (mlp_params // 2 + (attn_params // 2 if heads else 0))
        assert r["params_before"] == sum(p.numel() for p in dense.parameters())
        assert r["params_after"] == sum(p.numel() for p in small.parameters()) == r["params_before"] - removed
        assert r["total_sparsity"] == pytest.approx(removed / (2 * (mlp_params + attn_params)))
        assert r["narrow_vs_masked_max_logit_diff"] < 1e-5
        # The stored perplexity is the reloaded narrow model's own.
        eval_ids = transformers.AutoTokenizer.from_pretrained(folder / "model")(
            Path(cfg.eval.text).read_text(encoding="utf-8"), return_tensors="pt").input_ids.reshape(-1)[: 3 * 32]
        assert r["perplexity"] == pytest.approx(perplexity(small, eval_ids, 32, progress=False), rel=1e-5)
        assert load_json(folder / "result.json")["perplexity"] == r["perplexity"]
    # Wanda keeps the neurons the library's planner picks from the job's own calibration windows.
    want = plan_structured(dense, calibration_norms(dense, subject.calib_ids.split(1)), 0.5).mlp_keep[0]
    small = transformers.AutoModelForCausalLM.from_pretrained(path / "wanda_neurons" / "model")
    assert torch.equal(small.model.layers[0].mlp.up_proj.weight, dense.model.layers[0].mlp.up_proj.weight[want])
    assert set(load_json(path / "results.json")["results"][0]) >= {"params_before", "params_after", "perplexity"}
    again = run(cfg)  # every variant done: read back, not recomputed
    assert [r["perplexity"] for r in again] == [r["perplexity"] for r in rows]


@pytest.mark.parametrize("override,message", [
    ("prune.method=sparsegpt", "prune.method='sparsegpt' has no structured solver"),
    ("prune.include=[mlp]", "prune.include / prune.exclude must be empty with prune.pattern=neurons"),
    ("prune.sparsity=1.0", "prune.sparsity=1.0 is out of range"),
])
def test_bad_structured_options_fail_validation(tiny_llama: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")) as err:
        validate_oneshot(_cfg(f"model.name_or_path={tiny_llama}", "prune.method=wanda", "prune.pattern=neurons",
                              override))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("pattern,sparsity,message", [
    ("neurons+heads", 0.8, r"removes every key/value group of model\.layers\.0\.self_attn \(2\)"),
    ("neurons", 0.995, r"removes every neuron of model\.layers\.0\.mlp \(64\)"),
])
def test_emptying_a_block_fails_before_any_run_folder(tiny_llama: Path, pattern: str, sparsity: float,
                                                      message: str) -> None:
    cfg = _cfg(f"model.name_or_path={tiny_llama}", "prune.method=wanda", f"prune.pattern={pattern}",
               f"prune.sparsity={sparsity}")
    with pytest.raises(ConfigError, match=message):
        run(cfg)
    assert _no_run_folder(cfg)


def test_unresolvable_architecture_names_the_layer(tmp_path: Path) -> None:
    cfg = _cfg(f"model.name_or_path={_save(tmp_path, 'gpt2')}", "prune.method=wanda", "prune.pattern=neurons")
    with pytest.raises(ConfigError, match="GPT2LMHeadModel has no model.layers"):
        run(cfg)
    assert _no_run_folder(cfg)


@pytest.mark.slow
def test_cli_exits_2_with_one_line_for_an_emptied_block(tmp_path: Path, tiny_llama: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "lottery.run", "+exp=oneshot_llm", f"model.name_or_path={tiny_llama}",
                           *FAST, "prune.method=wanda", "prune.pattern=neurons+heads", "prune.sparsity=0.8"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    # transformers' own weight-loading bars also write to stderr; the error itself is one line
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "it/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: prune.sparsity=0.8 (prune.pattern=neurons+heads) removes "
                                                   "every key/value group of model.layers.0.self_attn"), proc.stderr
    assert not list((tmp_path).rglob("oneshot_*"))
