"""Per-block sparsity allocation (uniform, OWL, linear): the arithmetic, OWL's outlier ratios, the driver, the job."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from helpers import REPO, make_config
from safetensors.torch import load_file
from tiny_hf import calib_ids, make_word_tokenizer

from lottery.errors import ConfigError
from lottery.llm.allocation import allocate, check_range, linear_sparsities, owl_sparsities, weighted_mean
from lottery.llm.job import run
from lottery.llm.outliers import block_sizes, outlier_ratios, pooled_outlier_ratio
from lottery.llm.schema import validate_oneshot
from lottery.llm.sequential import prune_model
from lottery.tracking import RunStore
from lottery.tracking.store import config_hash

FAST = ["calibration.corpus=file", "calibration.text=${lottery_text_root:}/wikitext2_test.txt",
        "calibration.nsamples=4", "calibration.seqlen=32", "eval.seqlen=32", "eval.max_chunks=2", "progress_bar=false",
        "logger=none"]


def tiny_llama(layers: int = 4, seed: int = 0) -> transformers.LlamaForCausalLM:
    """A 4-block Llama (hidden 64, MLP 128): wide enough rows that per-row rounding stays under 1/64."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg).eval()


# ---------------------------------------------------------------- the arithmetic (pure)


@pytest.mark.parametrize("sizes", [[10, 10, 10, 10, 10], [5, 40, 7, 100, 13]])
@pytest.mark.parametrize("allocation", ["owl", "linear"])
def test_weighted_mean_is_the_target(sizes: list[int], allocation: str) -> None:
    ratios = [0.01, 0.07, 0.02, 0.03, 0.05]
    s = allocate(allocation, 0.7, 0.08, sizes, ratios)
    # An independent check: total pruned weights over total weights, with exact fractions.
    assert sum(n * x for n, x in zip(sizes, s, strict=True)) / sum(sizes) == pytest.approx(0.7, abs=1e-12)
    assert weighted_mean(s, sizes) == pytest.approx(0.7, abs=1e-12)
    assert len(set(s)) > 1


def test_owl_gives_more_sparsity_to_fewer_outliers_and_spreads_2_lambda() -> None:
    ratios, sizes = [0.04, 0.01, 0.09, 0.02, 0.05, 0.03], [1] * 6
    s = owl_sparsities(0.6, 0.08, ratios, sizes)
    by_ratio = sorted(range(6), key=lambda b: ratios[b])
    assert [s[b] for b in by_ratio] == sorted(s, reverse=True)  # strictly fewer outliers -> more sparsity
    assert max(s) - min(s) == pytest.approx(2 * 0.08)  # min-max normalised to [0, 2 lambda]
    # OWL's worked example: density = q - mean(q) + (1 - s), q = (D - min) / (max - min) * 2 lambda.
    q = [(r - 0.01) / 0.08 * 0.16 for r in ratios]
    assert s == pytest.approx([1 - (x - sum(q) / 6 + 0.4) for x in q], abs=1e-12)


def test_lambda_zero_and_equal_ratios_are_uniform_exactly() -> None:
    sizes = [3, 5, 8]
    assert owl_sparsities(0.7, 0.0, [0.1, 0.5, 0.2], sizes) == [0.7, 0.7, 0.7]
    assert owl_sparsities(0.7, 0.08, [0.2, 0.2, 0.2], sizes) == [0.7, 0.7, 0.7]
    assert linear_sparsities(0.7, 0.0, sizes) == [0.7, 0.7, 0.7]


def test_linear_ramp_endpoints() -> None:
    s = linear_sparsities(0.6, 0.1, [7] * 5)
    assert s[0] == pytest.approx(0.5) and s[-1] == pytest.approx(0.7) and s[2] == pytest.approx(0.6)
    assert all(a < b for a, b in zip(s, s[1:], strict=False))  # earlier blocks pruned less


def test_a_skewed_owl_allocation_outside_0_1_is_refused_not_clipped() -> None:
    s = owl_sparsities(0.7, 0.29, [1.0, 1.0, 1.0, 0.0], [1] * 4)  # lambda < 1 - s, but the spread is 2 lambda
    assert s[3] == pytest.approx(0.7 + 2 * 0.29 * 3 / 4) and s[3] > 1
    with pytest.raises(ValueError, match="outside \\[0, 1\\)"):
        check_range(s, "owl", 0.29)


# ---------------------------------------------------------------- OWL's outlier ratios


def test_pooled_outlier_ratio_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(8, 16, generator=g) ** 6, torch.rand(4, 32, generator=g) ** 3]
    pooled = torch.cat([x.flatten() for x in scores])
    assert pooled_outlier_ratio(scores, 2.0) == pytest.approx(float((pooled > 2.0 * pooled.mean()).float().mean()))


def test_outlier_ratios_match_a_full_model_forward() -> None:
    model, ids = tiny_llama(), calib_ids(4, 16)
    found = outlier_ratios(model, ids, 2.0, progress=False)
    # Independent: hooks on every linear during the model's own dense forward of each row.
    sq: dict[str, torch.Tensor] = {}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}

    def hook(name: str):
        def fn(_m, inp, _o):
            x = inp[0].reshape(-1, inp[0].shape[-1]).double()
            sq[name] = sq.get(name, 0) + (x**2).sum(0)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    with torch.no_grad():
        for row in ids:
            model(input_ids=row[None])
    for h in handles:
        h.remove()
    expected = []
    for b in range(4):
        scores = torch.cat([(m.weight.abs().double() * sq[n].sqrt()).flatten() for n, m in linears.items()
                            if n.startswith(f"model.layers.{b}.")])
        expected.append(float((scores > 2.0 * scores.mean()).double().mean()))
    assert found.ratios == pytest.approx(expected, abs=1e-6)
    assert found.sizes == block_sizes(model) == [2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128] * 4  # q o, k v, MLP


# ---------------------------------------------------------------- the driver


def test_lambda_zero_masks_equal_uniform_bit_for_bit() -> None:
    ids = calib_ids(4, 16)
    uniform = prune_model(tiny_llama(), "wanda", 0.6, ids, progress=False)
    ratios = outlier_ratios(tiny_llama(), ids, 5.0, progress=False)
    per_block = allocate("owl", 0.6, 0.0, ratios.sizes, ratios.ratios)
    owl = prune_model(tiny_llama(), "wanda", per_block, ids, progress=False)
    assert uniform.masks.keys() == owl.masks.keys()
    assert all(torch.equal(uniform.masks[k], owl.masks[k]) for k in uniform.masks)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_pruned_model_sparsity_is_the_target(method: str) -> None:
    ids, model = calib_ids(4, 16), tiny_llama()
    ratios = outlier_ratios(model, ids, 2.0, progress=False)
    per_block = allocate("owl", 0.6, 0.15, ratios.sizes, ratios.ratios)
    assert len(set(per_block)) == 4
    report = prune_model(model, method, per_block, ids, progress=False)
    zeros = total = 0
    for b, block in enumerate(model.model.layers):
        w = [m.weight for m in block.modules() if isinstance(m, torch.nn.Linear)]
        z, n = sum(int((x == 0).sum()) for x in w), sum(x.numel() for x in w)
        assert z / n == pytest.approx(per_block[b], abs=1 / 64)  # each row (slice) rounds down by < 1 weight
        zeros, total = zeros + z, total + n
    assert zeros / total == pytest.approx(0.6, abs=1 / 64)
    assert report.sparsity == pytest.approx(0.6, abs=1e-12) and report.block_sparsity == per_block


def test_nm_with_unequal_block_sparsities_is_refused() -> None:
    with pytest.raises(ValueError, match="uniform by definition"):
        prune_model(tiny_llama(2), "magnitude", [0.4, 0.6], n=2, m=4, progress=False)


# ---------------------------------------------------------------- the job


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(folder)
    make_word_tokenizer().save_pretrained(folder)
    return folder


def _cfg(*overrides: str):
    return make_config(["+exp=oneshot_llm", *FAST, *overrides])


def test_job_runs_every_allocation_and_nm_only_uniform(tiny_folder: Path, capsys) -> None:
    overrides = [f"model.name_or_path={tiny_folder}", "prune.method=[wanda]", "prune.pattern=[unstructured,'2:4']",
                 "prune.sparsity=0.6", "prune.allocation=[uniform,linear,owl]", "prune.owl_m=2"]
    rows = run(_cfg(*overrides))
    out = capsys.readouterr().out
    assert out.count("structured patterns are uniform by definition") == 1 and "allocation" in out
    assert [(r["pattern"], r["allocation"]) for r in rows] == [
        ("unstructured", "uniform"), ("unstructured", "linear"), ("unstructured", "owl"), ("2:4", "uniform")]
    path = RunStore(_cfg(*overrides).store.root, _cfg(*overrides), prefix="oneshot").path
    assert sorted(p.name for p in path.iterdir() if p.is_dir() and p.name.startswith("wanda")) == [
        "wanda_2of4", "wanda_unstructured", "wanda_unstructured_linear", "wanda_unstructured_owl"]
    sizes = block_sizes(tiny_llama())
    for r in rows:
        saved = json.loads((path / f"wanda_{r['pattern'].replace(':', 'of')}"
                            f"{'' if r['allocation'] == 'uniform' else '_' + r['allocation']}" / "result.json").read_text())
        assert saved["allocation"] == r["allocation"] and len(saved["block_sparsity"]) == 4
        assert weighted_mean(saved["block_sparsity"], sizes) == pytest.approx(r["sparsity_target"], abs=1e-12)
        assert r["total_sparsity"] == pytest.approx(r["sparsity_target"], abs=1 / 64)
    linear, owl = rows[1]["block_sparsity"], rows[2]["block_sparsity"]
    assert linear == pytest.approx([0.52, 0.5733333, 0.6266667, 0.68])
    assert rows[2]["outlier_ratios"] and max(owl) - min(owl) == pytest.approx(0.16)


def test_job_lambda_zero_owl_masks_equal_uniform(tiny_folder: Path) -> None:
    overrides = [f"model.name_or_path={tiny_folder}", "prune.method=[sparsegpt]", "prune.pattern=[unstructured]",
                 "prune.allocation=[uniform,owl]", "prune.owl_lambda=0"]
    run(_cfg(*overrides))
    path = RunStore(_cfg(*overrides).store.root, _cfg(*overrides), prefix="oneshot").path
    a = load_file(path / "sparsegpt_unstructured" / "model" / "masks.safetensors")
    b = load_file(path / "sparsegpt_unstructured_owl" / "model" / "masks.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_new_keys_leave_hashes_alone() -> None:
    base = make_config(["+exp=oneshot_smollm2"])
    same = make_config(["+exp=oneshot_smollm2", "prune.allocation=uniform", "prune.owl_m=5", "prune.owl_lambda=0.08"])
    assert config_hash(base) == config_hash(same)
    assert config_hash(base) != config_hash(make_config(["+exp=oneshot_smollm2", "prune.allocation=owl"]))


@pytest.mark.parametrize(("override", "message"), [
    ("prune.allocation=owlish", "prune.allocation='owlish' is not allowed; choose one of uniform, owl, linear"),
    ("prune.owl_m=0", "prune.owl_m=0.0 must be > 0"),
    ("prune.owl_lambda=0.55", "prune.owl_lambda=0.55 is out of range"),  # > 1 - s at s = 0.5
    ("prune.owl_lambda=-0.1", "prune.owl_lambda=-0.1 is out of range"),
])
def test_bad_allocation_values(tiny_folder: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")) as err:
        validate_oneshot(_cfg(f"model.name_or_path={tiny_folder}", "prune.pattern=unstructured",
                              "prune.allocation=owl", override))
    assert "\n" not in str(err.value)


def test_nm_with_only_owl_is_a_config_error(tiny_folder: Path) -> None:
    with pytest.raises(ConfigError, match="N:M or structured, which are uniform by definition"):
        validate_oneshot(_cfg(f"model.name_or_path={tiny_folder}", "prune.pattern=[unstructured,'2:4']",
                              "prune.allocation=[owl]"))
    # Uniform runs keep working at a sparsity below the default lambda (lambda only matters for owl and linear).
    validate_oneshot(_cfg(f"model.name_or_path={tiny_folder}", "prune.sparsity=0.05"))


@pytest.mark.parametrize("args", [
    ["prune.allocation=owlish"],
    pytest.param(["prune.allocation=owl", "prune.owl_lambda=0.6"], marks=pytest.mark.slow),  # ~20 s a subprocess
])
def test_cli_exits_2_with_one_line(tmp_path: Path, tiny_folder: Path, args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "lottery.run", "+exp=oneshot_llm",
                           f"model.name_or_path={tiny_folder}", "prune.pattern=unstructured", *FAST, *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: prune."), proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # 6 tiny variants and the figure: ~17 s on the loaded 2-core machine
def test_owl_figure_renders_the_stored_runs(tmp_path: Path, tiny_folder: Path) -> None:
    """`python -m experiments.regenerate owl` end to end, on the tiny Llama instead of SmolLM2 (Wanda only)."""
    from experiments.regenerate import main

    sets = [f"model.name_or_path={tiny_folder}", "model.gguf_file=null", "model.device=cpu", "prune.method=[wanda]",
            "prune.owl_m=2", *FAST]
    assert main(["owl", *[a for s in sets for a in ("--set", s)]]) == 0
    out = tmp_path / "figures" / "owl"
    assert (out / "owl.png").stat().st_size > 0 and (out / "owl.pdf").exists()
    rows = list(csv.DictReader((out / "owl.csv").open()))
    assert [(r["method"], r["sparsity_target"], r["allocation"]) for r in rows] == [("dense", "0.0", "-")] + [
        ("wanda", s, a) for s in ("0.6", "0.7") for a in ("uniform", "linear", "owl")]
    blocks = list(csv.DictReader((out / "owl_blocks.csv").open()))
    assert len(blocks) == 2 * 2 * 4 and all(b["outlier_ratio"] for b in blocks if b["allocation"] == "owl")
    for s in (0.6, 0.7):  # each plotted allocation keeps its target on average (the blocks are the same size)
        for a in ("linear", "owl"):
            mine = [float(b["block_sparsity"]) for b in blocks if float(b["sparsity_target"]) == s and b["allocation"] == a]
            assert sum(mine) / 4 == pytest.approx(s, abs=1e-9)
    table = (out / "owl.md").read_text()
    assert "| Wanda | 60% |" in table and "| Wanda | 70% |" in table and "OWL − uniform" in table
    assert main(["owl", "--no-run", *[a for s in sets for a in ("--set", s)]]) == 0  # read-only re-render
