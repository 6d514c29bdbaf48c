"""Frankle, Dziugaite, Roy & Carbin (ICML 2020): instability of the dense network and of IMP tickets vs the
iteration k at which two copies split off to train with different data orders.

  a) error barrier (max test error on the linear path between the copies − mean of the endpoints' errors) vs k,
     one line per level: the dense network (level 0) and tickets at about 21% and 3.6% of weights remaining;
  b) test error along the path (α = 0 .. 1) at a few k, one line per level.
Lines are the mean over seeds, error bars / bands span min..max. Each seed is one IMP run (imp_lenet to level
15) with `+branch=instability` at levels 0, 7 and 15 and every k.

    python -m experiments.regenerate instability --set training.engine=batched --set trainer=gpu
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.figures.common import Figure, Options, Run, RunSpec, run_instability_folders
from lottery.imp.instability_schema import rewind_points
from lottery.imp.schema import IMPRunConfig, resolve_steps
from lottery.plots import Stat, band, errorbars, mean_min_max, new_figure, save_figure, write_csv
from lottery.tracking import load_json

NAME = "instability"
BASE = ("+exp=imp_lenet", "imp.levels=15", "+branch=instability", "branch.levels=[0,7,15]",
        "branch.rewind_to=[0,100,250,500,1000,2000]")
COLUMNS = ["panel", "level", "percent_remaining", "k", "alpha", "mean", "min", "max", "n"]


def specs(options: Options) -> list[RunSpec]:
    return [RunSpec((seed,), (*BASE, f"seed={seed}")) for seed in range(options.seeds)]


def results(run: Run) -> list[dict[str, Any]]:
    """The run's instability results, in the order of its config's levels and k."""
    folders = run_instability_folders(run.cfg)
    return [load_json(run.path / folder / "instability.json") for folder in folders]


def path_ks(ks: list[int]) -> list[int]:
    """The k whose paths are drawn: the first, a middle one and the last."""
    return list(dict.fromkeys([ks[0], ks[len(ks) // 2], ks[-1]]))


def rows_of(runs: dict[tuple[Any, ...], Run], seeds: int) -> list[dict[str, Any]]:
    per_seed = [results(runs[(s,)]) for s in range(seeds)]
    first = per_seed[0]
    ks = list(dict.fromkeys(r["rewind_to"] for r in first))
    rows = []
    for i, r in enumerate(first):
        same = [p[i] for p in per_seed]
        base = {"level": r["level"], "percent_remaining": r["percent_remaining"], "k": r["rewind_to"]}
        for panel, values in (("barrier", [x["barrier"] for x in same]),
                              ("endpoint_error", [sum(x["endpoint_errors"]) / 2 for x in same])):
            stat = mean_min_max(values)
            rows.append({"panel": panel, **base, "alpha": None, "mean": stat.mean, "min": stat.min,
                         "max": stat.max, "n": stat.n})
        if r["rewind_to"] in path_ks(ks):
            for j, alpha in enumerate(r["alphas"]):
                stat = mean_min_max([x["errors"][j] for x in same])
                rows.append({"panel": "path_error", **base, "alpha": alpha, "mean": stat.mean, "min": stat.min,
                             "max": stat.max, "n": stat.n})
    return rows


def _label(row: dict[str, Any]) -> str:
    kind = "dense" if row["level"] == 0 else f"level {row['level']}"
    return f"{kind} ({row['percent_remaining']:.1f}%)"


def draw(runs: dict[tuple[Any, ...], Run], options: Options, out: Path) -> list[Path]:
    rows = rows_of(runs, options.seeds)
    cfg = IMPRunConfig.from_config(runs[(0,)].cfg)
    steps = resolve_steps(cfg)
    ks = rewind_points(cfg.branch, steps.steps_per_epoch)
    shown = path_ks(ks)
    fig, axes = new_figure(1, 1 + len(shown))
    levels = list(dict.fromkeys(r["level"] for r in rows))
    ax = axes[0][0]
    for level in levels:
        pts = [r for r in rows if r["panel"] == "barrier" and r["level"] == level]
        errorbars(ax, [r["k"] for r in pts], [Stat(100 * r["mean"], 100 * r["min"], 100 * r["max"], r["n"])
                                               for r in pts], _label(pts[0]))
    ax.set_xscale("symlog", linthresh=max(min([k for k in ks if k > 0], default=1), 1))
    ax.set(xlabel="k (iteration the copies split off)", ylabel="error barrier (percentage points)",
           title="instability vs k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for ax, k in zip(axes[0][1:], shown, strict=True):
        for level in levels:
            pts = [r for r in rows if r["panel"] == "path_error" and r["level"] == level and r["k"] == k]
            band(ax, [r["alpha"] for r in pts], [Stat(100 * r["mean"], 100 * r["min"], 100 * r["max"], r["n"])
                                                 for r in pts], _label(pts[0]))
        ax.set(xlabel="interpolation α", ylabel="test error (%)", title=f"error on the path, k = {k}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    iterations = steps.iterations
    fig.suptitle(f"{cfg.model.name} on {cfg.data.name}, {iterations} iterations: instability analysis "
                 f"(mean, min/max over {options.seeds} seed(s))", fontsize=10)
    return [*save_figure(fig, out, NAME), write_csv(rows, COLUMNS, out / f"{NAME}.csv")]


INSTABILITY = Figure(NAME, "Error barrier vs rewind iteration k (dense and tickets), error along the path",
                     specs, draw)
