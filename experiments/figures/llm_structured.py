"""Structured one-shot pruning of SmolLM2-135M: perplexity vs fraction of units removed, for MLP neurons only
(`neurons`) and MLP neurons + key/value groups (`neurons+heads`), scored by Wanda (activation-aware) and by
magnitude; a table (markdown + CSV, with parameter counts) and a plot.

Reads `runs/oneshot_<hash>/results.json` of the one-shot job (lottery/llm/structured_job.py writes each
structured record: perplexity of the narrow model, params_before / params_after, mlp_removed, kv_removed).
One run per fraction removed, each with both scores and both patterns. On a GPU, the papers' protocol
(`model.device=cuda`, the default here); on a CPU, the reduced protocol:
    python -m experiments.regenerate llm_structured --set model.device=cpu --set calibration.nsamples=16 \
        --set calibration.seqlen=256 --set eval.seqlen=512 --set eval.max_chunks=8
SmolLM2-135M has 3 key/value groups per block, so `neurons+heads` removes 0, 1 or 2 of them (the rounding of
round((1 - s) * 3)); the table gives the fractions actually removed. `--set prune.method=[wanda]` renders
the Wanda rows alone (the CPU version committed in experiments/llm_structured/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.figures.common import Figure, Options, Run, RunSpec
from experiments.figures.llm_table import model_label
from lottery.plots import new_figure, save_figure, write_csv
from lottery.tracking import save_text

NAME = "llm_structured"
EXP, EXTRA = "oneshot_smollm2", ("model.device=cuda",)
FRACTIONS = [0.1, 0.2, 0.3, 0.4, 0.5]
METHODS = ["wanda", "magnitude"]
PATTERNS = ["neurons", "neurons+heads"]
LABELS = {"wanda": "Wanda", "magnitude": "Magnitude", "neurons": "MLP neurons", "neurons+heads": "MLP + KV groups"}
COLUMNS = ["model", "method", "pattern", "sparsity_target", "mlp_removed", "kv_removed", "intermediate_size",
           "num_key_value_heads", "params_before", "params_after", "params_removed", "metric", "value",
           "prune_seconds", "eval_seconds"]


def specs(options: Options) -> list[RunSpec]:
    """One run per fraction removed, pruning every (score, pattern) of it."""
    common = (f"+exp={EXP}", *EXTRA, "prune.method=[" + ",".join(METHODS) + "]",
              "prune.pattern=[" + ",".join(PATTERNS) + "]")
    return [RunSpec((EXP, s), (*common, f"prune.sparsity={s}")) for s in FRACTIONS]


def rows_of(runs: dict[tuple[Any, ...], Run]) -> list[dict[str, Any]]:
    """Dense first, then per pattern and score the fractions in order."""
    first = runs[(EXP, FRACTIONS[0])]
    label, results = model_label(first), first.results()
    metric = results["metric"]
    by_key = {}
    for s in FRACTIONS:
        for r in runs[(EXP, s)].results()["results"]:
            by_key[(r["method"], r["pattern"], s)] = r
    some = next(iter(by_key.values()))
    rows = [{"model": label, "method": "dense", "pattern": "dense", "sparsity_target": 0.0, "mlp_removed": 0.0,
             "kv_removed": 0.0, "params_before": some["params_before"], "params_after": some["params_before"],
             "params_removed": 0.0, "metric": metric, "value": results["dense"][metric],
             "eval_seconds": results["dense"].get("eval_seconds"), "calibration": results.get("calibration", "")}]
    present = [m for m in METHODS if any(k[0] == m for k in by_key)]  # e.g. --set prune.method=[wanda] on a CPU
    for pattern in PATTERNS:
        for method in present:
            for s in FRACTIONS:
                r = by_key[(method, pattern, s)]
                rows.append({"model": label, **{k: r.get(k) for k in COLUMNS if k in r}, "metric": metric,
                             "value": r[metric]})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per variant: what was removed, the parameter counts, the perplexity."""
    dense = rows[0]
    lines = [f"{dense['model']}: perplexity on the held-out text (lower is better) of the narrow model after "
             f"structured one-shot pruning; dense {dense['value']:.2f} with {dense['params_before']:,} parameters"
             + (f"; calibration: {dense['calibration']}" if dense.get("calibration") else ""), "",
             "| Removed | Score | Units removed | MLP removed | KV groups removed | intermediate | KV heads "
             "| Parameters | Params removed | Perplexity |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows[1:]:
        lines.append(f"| {LABELS[r['pattern']]} | {LABELS[r['method']]} | {100 * r['sparsity_target']:g}% "
                     f"| {100 * r['mlp_removed']:.1f}% | {100 * r['kv_removed']:.1f}% | {r['intermediate_size']} "
                     f"| {r['num_key_value_heads']} | {r['params_after']:,} | {100 * r['params_removed']:.1f}% "
                     f"| {r['value']:.2f} |")
    return "\n".join(lines) + "\n"


def draw(runs: dict[tuple[Any, ...], Run], options: Options, out: Path) -> list[Path]:
    rows = rows_of(runs)
    dense = rows[0]
    fig, axes = new_figure(1, 2)
    for ax, x_key, x_label in ((axes[0][0], "sparsity_target", "units removed per block (%)"),
                               (axes[0][1], "params_removed", "parameters removed (%)")):
        for pattern, style in zip(PATTERNS, ("-", "--"), strict=True):
            for method, color in zip(METHODS, ("C0", "C3"), strict=True):
                pts = [r for r in rows if r["method"] == method and r["pattern"] == pattern]
                if not pts:
                    continue
                ax.plot([100 * r[x_key] for r in pts], [r["value"] for r in pts], style, color=color, marker="o",
                        label=f"{LABELS[method]}, {LABELS[pattern]}")
        ax.axhline(dense["value"], color="gray", linestyle=":", label="dense")
        ax.set_yscale("log")
        ax.set(xlabel=x_label, ylabel=dense["metric"], title=dense["model"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    paths = [*save_figure(fig, out, NAME), write_csv(rows, COLUMNS, out / f"{NAME}.csv")]
    save_text(markdown(rows), out / f"{NAME}.md")
    return [*paths, out / f"{NAME}.md"]


LLM_STRUCTURED = Figure(NAME, "Structured one-shot pruning of SmolLM2-135M: perplexity vs fraction of MLP neurons "
                        "(and KV groups) removed, table with parameter counts + plot", specs, draw)
