"""OWL (Yin et al. 2024) against uniform and linear layerwise sparsity: one-shot perplexity of SmolLM2-135M.

Rows are method × unstructured sparsity, columns the allocations (uniform, linear, OWL), plus a plot of the
per-block sparsities that OWL and the linear ramp chose and of the outlier ratios OWL read. Everything is
rendered from the runs' `results.json` (lottery/llm/job.py), whose records carry `allocation`,
`block_sparsity` and, for OWL, `outlier_ratios`.

The papers' protocol needs a GPU (`model.device=cuda`, the default here). On a CPU, the reduced protocol:
    python -m experiments.regenerate owl --set model.device=cpu --set calibration.nsamples=16 \\
        --set calibration.seqlen=256 --set eval.seqlen=512 --set eval.max_chunks=8
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.figures.common import Figure, Options, Run, RunSpec
from experiments.figures.llm_table import model_label
from lottery.plots import new_figure, save_figure, write_csv
from lottery.tracking import save_text

NAME = "owl"
EXP = ("+exp=oneshot_smollm2", "model.device=cuda")
METHODS = ["wanda", "sparsegpt"]  # magnitude works too, but is off the scale at 60% and 70% (4266, 83382)
LABELS = {"magnitude": "Magnitude", "sparsegpt": "SparseGPT", "wanda": "Wanda"}
ALLOCATIONS = ["uniform", "linear", "owl"]
ALLOCATION_LABELS = {"uniform": "uniform", "linear": "linear", "owl": "OWL"}
SPARSITIES = [0.6, 0.7]
COLUMNS = ["model", "method", "sparsity_target", "allocation", "total_sparsity", "metric", "value", "prune_seconds"]
BLOCK_COLUMNS = ["sparsity_target", "allocation", "block", "block_sparsity", "outlier_ratio"]


def specs(options: Options) -> list[RunSpec]:
    """One run per sparsity, with every method and every allocation."""
    return [RunSpec((s,), (*EXP, "prune.method=[" + ",".join(METHODS) + "]", "prune.pattern=[unstructured]",
                           f"prune.sparsity={s}", "prune.allocation=[" + ",".join(ALLOCATIONS) + "]"))
            for s in SPARSITIES]


def rows_of(runs: dict[tuple[Any, ...], Run]) -> list[dict[str, Any]]:
    """Dense first, then per sparsity every (method, allocation) the run stored, in METHODS x ALLOCATIONS order."""
    first = runs[(SPARSITIES[0],)]
    label, results = model_label(first), first.results()
    metric = results["metric"]
    rows = [{"model": label, "method": "dense", "sparsity_target": 0.0, "allocation": "-", "total_sparsity": 0.0,
             "metric": metric, "value": results["dense"][metric], "prune_seconds": None,
             "calibration": results.get("calibration", "")}]
    for s in SPARSITIES:
        by_key = {(r["method"], r.get("allocation", "uniform")): r for r in runs[(s,)].results()["results"]}
        for method in METHODS:
            for allocation in ALLOCATIONS:
                if (r := by_key.get((method, allocation))) is None:
                    continue
                rows.append({"model": label, "method": method, "sparsity_target": r["sparsity_target"],
                             "allocation": allocation, "total_sparsity": r["total_sparsity"], "metric": metric,
                             "value": r[metric], "prune_seconds": r.get("prune_seconds"),
                             "block_sparsity": r.get("block_sparsity"), "outlier_ratios": r.get("outlier_ratios")})
    return rows


def markdown(rows: list[dict[str, Any]], settings: str = "") -> str:
    """Method | Sparsity | uniform | linear | OWL | OWL - uniform; `settings` names owl_m and owl_lambda."""
    dense = rows[0]
    value = {(r["method"], r["sparsity_target"], r["allocation"]): r["value"] for r in rows[1:]}
    head = " | ".join(ALLOCATION_LABELS[a] for a in ALLOCATIONS)
    lines = [f"| Method | Sparsity | {head} | OWL − uniform |", "|---|---|" + "---:|" * (len(ALLOCATIONS) + 1),
             f"| Dense | 0% | {dense['value']:.2f} | | | |"]
    for method in METHODS:
        for s in SPARSITIES:
            cells = [value.get((method, s, a)) for a in ALLOCATIONS]
            if all(c is None for c in cells):
                continue
            owl, uniform = value.get((method, s, "owl")), value.get((method, s, "uniform"))
            gain = f"{owl - uniform:+.2f}" if owl is not None and uniform is not None else "-"
            shown = " | ".join("-" if c is None else f"{c:.2f}" for c in cells)
            lines.append(f"| {LABELS[method]} | {100 * s:g}% | {shown} | {gain} |")
    caption = f"{dense['model']}: {dense['metric']} after one-shot unstructured pruning (lower is better)"
    if settings:
        caption += f"; {settings}"
    if dense.get("calibration"):
        caption += "; calibration: " + dense["calibration"]
    return caption + "\n\n" + "\n".join(lines) + "\n"


def block_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per sparsity and non-uniform allocation, the block sparsities (one method's: the allocation is the same
    for every method, as OWL's ratios come from the dense model) and OWL's outlier ratios."""
    out, seen = [], set()
    for r in rows[1:]:
        key = (r["sparsity_target"], r["allocation"])
        if r["allocation"] == "uniform" or key in seen or not r.get("block_sparsity"):
            continue
        seen.add(key)
        ratios = r.get("outlier_ratios") or [None] * len(r["block_sparsity"])
        out += [{"sparsity_target": key[0], "allocation": key[1], "block": b, "block_sparsity": s,
                 "outlier_ratio": d} for b, (s, d) in enumerate(zip(r["block_sparsity"], ratios, strict=True))]
    return out


def draw(runs: dict[tuple[Any, ...], Run], options: Options, out: Path) -> list[Path]:
    rows = rows_of(runs)
    blocks = block_rows(rows)
    fig, axes = new_figure(1, 2)
    left, right = axes[0]
    owl_ratios = next((b for b in blocks if b["allocation"] == "owl"), None)
    if owl_ratios is not None:
        first = [b for b in blocks if b["allocation"] == "owl" and b["sparsity_target"] == owl_ratios["sparsity_target"]]
        left.bar([b["block"] for b in first], [100 * b["outlier_ratio"] for b in first], color="tab:purple")
    left.set(xlabel="block", ylabel="outlier ratio D (%)", title="OWL's outlier ratio per block (dense model)")
    left.grid(alpha=0.3)
    for k, s in enumerate(SPARSITIES):  # one colour per target: OWL solid, linear dashed
        for allocation, style in (("owl", "-o"), ("linear", "--")):
            mine = [b for b in blocks if b["sparsity_target"] == s and b["allocation"] == allocation]
            if mine:
                right.plot([b["block"] for b in mine], [100 * b["block_sparsity"] for b in mine], style, color=f"C{k}",
                           markersize=3, label=f"{ALLOCATION_LABELS[allocation]}, target {100 * s:g}%")
    for s in SPARSITIES:
        right.axhline(100 * s, color="gray", linewidth=0.8, linestyle=":")
    right.set(xlabel="block", ylabel="block sparsity (%)", title="per-block sparsity chosen")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    paths = [*save_figure(fig, out, NAME), write_csv(rows, COLUMNS, out / f"{NAME}.csv"),
             write_csv(blocks, BLOCK_COLUMNS, out / f"{NAME}_blocks.csv")]
    settings = sorted({f"owl_m={r.cfg.prune.owl_m:g}, owl_lambda={r.cfg.prune.owl_lambda:g}" for r in runs.values()})
    save_text(markdown(rows, " / ".join(settings)), out / f"{NAME}.md")
    return [*paths, out / f"{NAME}.md"]


OWL = Figure(NAME, "OWL vs uniform vs linear layerwise sparsity: SmolLM2-135M perplexity table + per-block plot",
             specs, draw)
