"""Rewinding (Frankle et al. 2020; Renda et al. 2020): accuracy vs % of weights remaining when each pruned
network restarts from θ0 (rewind to init), from θk (rewind to iteration k), or keeps its trained weights and
restarts only the learning-rate schedule (learning-rate rewinding). Mean with min/max over seeds.

The base experiment is imp_lenet with k = 500 iterations; change either with --set (e.g. --set exp=imp_resnet20,
--set imp.rewind_to=...): --set overrides come after the variant's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.figures.common import Figure, Options, Run, RunSpec
from lottery.plots import Stat, errorbars, mean_min_max, new_figure, percent_axis, save_figure, write_csv

NAME = "rewind"
BASE = "imp_lenet"
VARIANTS = {  # series -> (legend, overrides)
    "init": ("rewind to init (θ0)", ("imp.rewind=init",)),
    "iteration": ("rewind to iteration k (θk)", ("imp.rewind=iteration", "imp.rewind_to=500")),
    "lr": ("learning-rate rewinding", ("imp.rewind=lr",)),
}
PANELS = {"early_stop_test_acc": "test accuracy at early stop", "final_test_acc": "test accuracy at the end"}
COLUMNS = ["panel", "series", "level", "percent_remaining", "mean", "min", "max", "n"]


def specs(options: Options) -> list[RunSpec]:
    return [RunSpec((series, seed), (f"+exp={BASE}", f"seed={seed}", *overrides))
            for series, (_, overrides) in VARIANTS.items() for seed in range(options.seeds)]


def rows_of(runs: dict[tuple[Any, ...], Run], seeds: int) -> list[dict[str, Any]]:
    rows = []
    for panel in PANELS:
        for series in VARIANTS:
            per_seed = [runs[(series, s)].levels() for s in range(seeds)]
            for i, metrics in enumerate(per_seed[0]):
                stat = mean_min_max([m[i][panel] for m in per_seed])
                rows.append({"panel": panel, "series": series, "level": metrics["level"],
                             "percent_remaining": metrics["percent_remaining"], "mean": stat.mean, "min": stat.min,
                             "max": stat.max, "n": stat.n})
    return rows


def draw(runs: dict[tuple[Any, ...], Run], options: Options, out: Path) -> list[Path]:
    rows = rows_of(runs, options.seeds)
    fig, axes = new_figure(1, len(PANELS))
    k = runs[("iteration", 0)].cfg.imp.rewind_to
    for ax, (panel, ylabel) in zip(axes[0], PANELS.items(), strict=True):
        for series, (legend, _) in VARIANTS.items():
            pts = [r for r in rows if r["panel"] == panel and r["series"] == series]
            errorbars(ax, [r["percent_remaining"] for r in pts],
                      [Stat(r["mean"], r["min"], r["max"], r["n"]) for r in pts],
                      legend.replace("iteration k", f"iteration {k}"))
        percent_axis(ax, [r["percent_remaining"] for r in rows if r["panel"] == panel])
        ax.set(xlabel="% of weights remaining", ylabel=ylabel, title=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    network = runs[("init", 0)].cfg.model.name
    fig.suptitle(f"{network}: rewinding variants (mean, min/max over {options.seeds} seed(s))", fontsize=10)
    return [*save_figure(fig, out, NAME), write_csv(rows, COLUMNS, out / f"{NAME}.csv")]


REWIND = Figure(NAME, "Accuracy vs % weights remaining: rewind to init, to iteration k, learning-rate rewinding",
                specs, draw)
