"""The llm_structured figure reads the structured records of the one-shot job's results.json: one row per
(pattern, score, fraction) with the parameter counts, dense first; with only Wanda runs it renders Wanda alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from experiments.figures import Options
from experiments.figures.common import compose_run, run_folder
from experiments.figures.llm_structured import FRACTIONS, METHODS, PATTERNS, specs
from experiments.regenerate import main


def _write_results(options: Options, methods: list[str]) -> dict[tuple[str, str, float], dict]:
    """results.json in lottery/llm/structured_job.py's record format where the figure's runs would write them."""
    records = {}
    for spec in specs(options):
        s = spec.key[1]
        results = []
        for j, pattern in enumerate(PATTERNS):
            for k, method in enumerate(methods):
                after = int(134_515_008 * (1 - 0.6 * s))
                r = {"method": method, "pattern": pattern, "sparsity_target": s, "mlp_removed": s,
                     "kv_removed": (1 / 3 if s >= 0.2 else 0.0) if pattern == "neurons+heads" else 0.0,
                     "intermediate_size": round((1 - s) * 1536), "num_attention_heads": 9, "num_key_value_heads": 3,
                     "params_before": 134_515_008, "params_after": after, "params_removed": 1 - after / 134_515_008,
                     "total_sparsity": s, "nm_valid": None, "perplexity": 30 + 100 * s + 10 * j + k,
                     "prune_seconds": 1.0, "eval_seconds": 2.0}
                results.append(r)
                records[(method, pattern, s)] = r
        path = run_folder(compose_run([*spec.overrides, *options.overrides]))
        path.mkdir(parents=True)
        (path / "results.json").write_text(json.dumps({"dense": {"perplexity": 30.64}, "metric": "perplexity",
                                                       "calibration": "Austen", "results": results}))
    return records


def _rows(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "figures" / "llm_structured" / "llm_structured.csv").open() as f:
        return list(csv.DictReader(f))


def test_llm_structured_renders_every_variant_with_parameter_counts(tmp_path: Path) -> None:
    records = _write_results(Options(), METHODS)
    assert main(["llm_structured", "--no-run"]) == 0
    out = tmp_path / "figures" / "llm_structured"
    assert (out / "llm_structured.png").exists() and (out / "llm_structured.pdf").exists()
    rows = _rows(tmp_path)
    assert len(rows) == 1 + len(PATTERNS) * len(METHODS) * len(FRACTIONS)
    assert rows[0]["method"] == "dense" and float(rows[0]["value"]) == 30.64
    assert rows[0]["params_after"] == "134515008"
    for row in rows[1:]:
        r = records[(row["method"], row["pattern"], float(row["sparsity_target"]))]
        assert float(row["value"]) == r["perplexity"] and int(row["params_after"]) == r["params_after"]
    assert [float(r["sparsity_target"]) for r in rows[1:6]] == FRACTIONS  # ascending within a (pattern, score)
    md = (out / "llm_structured.md").read_text()
    assert md.count("\n| ") == 1 + len(rows) - 1 and "| MLP + KV groups | Wanda | 20% | 20.0% | 33.3% |" in md


def test_llm_structured_with_wanda_runs_only(tmp_path: Path) -> None:
    options = Options(overrides=["prune.method=[wanda]"])
    _write_results(options, ["wanda"])
    assert main(["llm_structured", "--no-run", "--set", "prune.method=[wanda]"]) == 0
    rows = _rows(tmp_path)
    assert {r["method"] for r in rows[1:]} == {"wanda"} and len(rows) == 1 + len(PATTERNS) * len(FRACTIONS)
