"""The one-shot job end to end through Hydra: store files, sparsity, resume, and one-line config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, make_config
from tiny_hf import make_word_tokenizer, tiny_model

from lottery.errors import ConfigError
from lottery.llm.job import run
from lottery.llm.schema import validate_oneshot
from lottery.tracking import RunStore

EXPS = ["oneshot_llm", "oneshot_charlm", "oneshot_minilm", "oneshot_smollm2"]
# corpus=file: the tiny word tokenizer knows WikiText's words (oneshot_llm's default corpus is Jane Austen).
FAST = ["calibration.corpus=file", "calibration.text=${lottery_text_root:}/wikitext2_test.txt",
        "calibration.nsamples=4", "calibration.seqlen=32", "eval.seqlen=32", "eval.max_chunks=3", "progress_bar=false"]


@pytest.fixture
def tiny_llama(tmp_path: Path) -> Path:
    """A 2-block Llama (hidden 32) and a word tokenizer, saved like a downloaded model."""
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    make_word_tokenizer().save_pretrained(folder)
    return folder


def _cfg(*overrides: str):
    return make_config(["+exp=oneshot_llm", *FAST, *overrides])


@pytest.mark.parametrize("exp", EXPS)
def test_every_oneshot_exp_composes(exp: str) -> None:
    cfg = make_config([f"+exp={exp}", "model.name_or_path=x"] if exp == "oneshot_llm" else [f"+exp={exp}"])
    assert cfg.job == "oneshot" and cfg.prune.method and cfg.training is None and cfg.imp is None


def test_imp_configs_are_unchanged() -> None:
    cfg = make_config(["+exp=imp_lenet"])
    assert "prune" not in cfg and cfg.model.name == "lenet_300_100"


def test_prune_end_to_end_and_rerun_skips(tmp_path: Path, tiny_llama: Path, monkeypatch, capsys) -> None:
    overrides = [f"model.name_or_path={tiny_llama}", "prune.method=[magnitude,sparsegpt]",
                 "prune.pattern=[unstructured,'2:4']", "prune.sparsity=0.5"]
    rows = run(_cfg(*overrides))
    out = capsys.readouterr().out
    assert "ppl dense" in out and "sparsegpt" in out
    path = RunStore(_cfg(*overrides).store.root, _cfg(*overrides), prefix="oneshot").path
    assert [(r["method"], r["pattern"]) for r in rows] == [("magnitude", "unstructured"), ("sparsegpt", "unstructured"),
                                                           ("magnitude", "2:4"), ("sparsegpt", "2:4")]
    for r in rows:
        assert r["total_sparsity"] == pytest.approx(0.5)
        assert r["nm_valid"] is (True if r["pattern"] == "2:4" else None)
        assert len(r["layers"]) == 14 and all(lr["rel_error"] is not None for lr in r["layers"])
        folder = path / f"{r['method']}_{r['pattern'].replace(':', 'of')}"
        assert {"model.safetensors", "masks.safetensors", "prune_report.json", "config.json"} <= {
            p.name for p in (folder / "model").iterdir()}
        assert (folder / "result.json").exists()
    from lottery.llm import load_pruned

    model, masks = load_pruned(path / "sparsegpt_2of4" / "model")
    weight = model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(weight != 0, masks["model.layers.0.mlp.down_proj.weight"] & (weight != 0))
    assert float((weight == 0).float().mean()) >= 0.5
    results = json.loads((path / "results.json").read_text())
    assert results["dense"]["perplexity"] > 1 and len(results["results"]) == 4
    # A random tiny model's perplexity says little; its layer reconstruction errors do: SparseGPT's are lower.
    err = {(r["method"], r["pattern"]): sum(lr["rel_error"] for lr in r["layers"]) for r in rows}
    assert err[("sparsegpt", "unstructured")] < err[("magnitude", "unstructured")]
    assert err[("sparsegpt", "2:4")] < err[("magnitude", "2:4")]

    assert list((path / "wandb").glob("offline-run-*/run-*.wandb"))  # offline W&B mirror

    def no_work(*args, **kwargs):
        raise AssertionError("finished work was done again")

    monkeypatch.setattr("lottery.llm.job.prune_model", no_work)
    monkeypatch.setattr("lottery.llm.job.perplexity", no_work)
    again = run(_cfg(*overrides))
    assert [r["perplexity"] for r in again] == [r["perplexity"] for r in rows]


@pytest.mark.parametrize(("override", "message"), [
    ("prune.sparsity=1.0", "prune.sparsity=1.0 is out of range"),
    ("prune.pattern='5:4'", "prune.pattern='5:4'"),
    ("prune.pattern=2-4", "malformed"),
    ("prune.method=obs", "prune.method='obs' is not allowed; choose one of magnitude, wanda, sparsegpt"),
    ("calibration.text=/nope.txt", "calibration.text='/nope.txt'"),
])
def test_bad_values_raise_one_line(tiny_llama: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")) as err:
        validate_oneshot(_cfg(f"model.name_or_path={tiny_llama}", override))
    assert "\n" not in str(err.value)


def test_folder_without_weights(tmp_path: Path, tiny_llama: Path) -> None:
    (tiny_llama / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no config.json or no weights"):
        validate_oneshot(_cfg(f"model.name_or_path={tiny_llama}"))


def test_width_not_divisible_by_m_is_a_config_error(tmp_path: Path, tiny_llama: Path) -> None:
    cfg = _cfg(f"model.name_or_path={tiny_llama}", "prune.pattern='3:7'", "prune.blocksize=7", "logger=none")
    with pytest.raises(ConfigError, match="divisible by M=7"):
        run(cfg)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("oneshot_*"))


@pytest.mark.parametrize("args", [
    ["prune.sparsity=1.5"],  # caught by the pre-check, before Hydra starts
    pytest.param(["prune.pattern='3:7'", "prune.blocksize=7", "logger=none"], marks=pytest.mark.slow),  # in the job
])
def test_cli_exits_2_with_one_line(tmp_path: Path, tiny_llama: Path, args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "lottery.run", "+exp=oneshot_llm", f"model.name_or_path={tiny_llama}",
                           *FAST, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: prune."), proc.stderr
