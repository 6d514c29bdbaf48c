"""Frankle & Carbin (ICLR 2019), Figs. 3-5: winning tickets vs random re-initialisation.

For each network (one row of panels):
  a) test accuracy vs training iterations at several % of weights remaining (the winning ticket);
  b) early-stop iteration (minimum validation loss) vs % of weights remaining, ticket vs random re-init;
  c) test accuracy at the early-stop iteration vs % of weights remaining, ticket vs random re-init.
Lines are the mean over seeds, bands / error bars span min..max (the paper's convention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.figures.common import Figure, Options, Run, RunSpec
from lottery.plots import (
    Stat,
    band,
    errorbars,
    mean_min_max,
    new_figure,
    percent_axis,
    save_figure,
    write_csv,
)

# The random re-init of seed s draws its weights from seed REINIT_SEED + s: never the ticket's own θ0.
REINIT_SEED = 1000
CURVES = 6  # levels shown in panel (a), spread evenly from the dense network to the sparsest
COLUMNS = ["network", "panel", "series", "level", "percent_remaining", "iteration", "mean", "min", "max", "n"]
SERIES = {"ticket": "winning ticket", "reinit": "random reinit"}


def specs(exps: list[str], options: Options) -> list[RunSpec]:
    """One IMP run per network and seed, with its random_reinit branch beside every pruned level."""
    return [RunSpec((exp, seed), (f"+exp={exp}", f"seed={seed}", "+branch=random_reinit",
                                  f"branch.seed={REINIT_SEED + seed}"))
            for exp in exps for seed in range(options.seeds)]


def curve_levels(levels: list[int], k: int = CURVES) -> list[int]:
    """Up to `k` levels spread evenly over `levels` (always the first and the last)."""
    if len(levels) <= k:
        return levels
    return sorted({levels[round(i * (len(levels) - 1) / (k - 1))] for i in range(k)})


def _row(network: str, panel: str, series: str, level: int, percent: float, stat: Stat,
         iteration: int | None = None) -> dict[str, Any]:
    return {"network": network, "panel": panel, "series": series, "level": level, "percent_remaining": percent,
            "iteration": iteration, "mean": stat.mean, "min": stat.min, "max": stat.max, "n": stat.n}


def network_rows(network: str, runs: list[Run]) -> list[dict[str, Any]]:
    """The plotted numbers of one network, from the runs of its seeds (in seed order)."""
    per_seed = [r.levels() for r in runs]
    branches = [r.branch() for r in runs]
    levels = [m["level"] for m in per_seed[0]]
    percent = {m["level"]: m["percent_remaining"] for m in per_seed[0]}  # identical across seeds
    rows = []
    for level in curve_levels(levels):
        by_iteration: dict[int, list[float]] = {}
        for metrics in per_seed:
            for h in metrics[level]["history"]:
                by_iteration.setdefault(h["iteration"], []).append(h["test_acc"])
        for iteration in sorted(by_iteration):
            rows.append(_row(network, "test_acc_vs_iteration", "ticket", level, percent[level],
                             mean_min_max(by_iteration[iteration]), iteration))
    for panel in ("early_stop_iteration", "early_stop_test_acc"):
        for level in levels:
            rows.append(_row(network, panel, "ticket", level, percent[level],
                             mean_min_max([m[level][panel] for m in per_seed])))
        for level in sorted(branches[0]):
            rows.append(_row(network, panel, "reinit", level, branches[0][level]["percent_remaining"],
                             mean_min_max([b[level][panel] for b in branches])))
    return rows


def draw_network(axes: list[Any], network: str, rows: list[dict[str, Any]]) -> None:
    curves = [r for r in rows if r["panel"] == "test_acc_vs_iteration"]
    for level in sorted({r["level"] for r in curves}):
        pts = [r for r in curves if r["level"] == level]
        band(axes[0], [r["iteration"] for r in pts], [Stat(r["mean"], r["min"], r["max"], r["n"]) for r in pts],
             f"{pts[0]['percent_remaining']:.1f}%")
    axes[0].set(xlabel="training iterations", ylabel="test accuracy", title=f"{network}: ticket during training")
    for ax, panel, ylabel in ((axes[1], "early_stop_iteration", "early-stop iteration"),
                              (axes[2], "early_stop_test_acc", "test accuracy at early stop")):
        for series, style in (("ticket", "-"), ("reinit", "--")):
            pts = [r for r in rows if r["panel"] == panel and r["series"] == series]
            if pts:
                errorbars(ax, [r["percent_remaining"] for r in pts],
                          [Stat(r["mean"], r["min"], r["max"], r["n"]) for r in pts], SERIES[series], linestyle=style)
        percent_axis(ax, [r["percent_remaining"] for r in rows if r["panel"] == panel])
        ax.set(xlabel="% of weights remaining", ylabel=ylabel, title=f"{network}: {ylabel}")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def draw(exps: list[str], name: str, runs: dict[tuple[Any, ...], Run], options: Options, out: Path) -> list[Path]:
    fig, axes = new_figure(len(exps), 3)
    rows: list[dict[str, Any]] = []
    for i, exp in enumerate(exps):
        network = runs[(exp, 0)].cfg.model.name
        net_rows = network_rows(network, [runs[(exp, s)] for s in range(options.seeds)])
        draw_network(axes[i], network, net_rows)
        rows += net_rows
    fig.suptitle(f"Winning tickets vs random reinit (mean, min/max over {options.seeds} seed(s))", fontsize=10)
    return [*save_figure(fig, out, name), write_csv(rows, COLUMNS, out / f"{name}.csv")]


def lth_figure(name: str, exps: list[str], description: str) -> Figure:
    return Figure(name, description, lambda options: specs(exps, options),
                  lambda runs, options, out: draw(exps, name, runs, options, out))


LTH_LENET = lth_figure("lth_lenet", ["imp_lenet"],
                       "Frankle & Carbin 2019 Figs. 3-4: LeNet-300-100, ticket vs random reinit")
LTH_CONV = lth_figure("lth_conv", ["imp_conv2", "imp_conv4", "imp_conv6"],
                      "Frankle & Carbin 2019 Fig. 5: Conv-2/4/6 on CIFAR-10, ticket vs random reinit")
