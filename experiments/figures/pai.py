"""Pruning at initialisation against IMP (Frankle et al., ICLR 2021, "Pruning Neural Networks at Initialization:
Why Are We Missing the Mark?"), on LeNet-300-100 / MNIST.

Test accuracy at early stop and at the end vs % of weights remaining, mean with min/max over seeds, for
  IMP       the winning ticket: iterative layerwise magnitude pruning, reset to θ0 (imp_lenet)
  snip, grasp, synflow, magnitude, random
            one-shot pruning of θ0 to the target before any training (pruning.score=..., imp.oneshot=true,
            global allocation as the methods define it), then training from θ0 ⊙ mask
at 51, 21, 7, 3.6 and 1.5% remaining (IMP levels 3, 7, 12, 15, 19; one-shot targets 0.8^L of the weights).
Beside each (dashed), the paper's ablation: every layer's mask shuffled at random within the layer (the
`random_prune` control branch: same per-layer sparsity, same start weights) and trained again.

At-init runs with training.engine=batched that are missing are trained together, as one batched job (they share
the model, data and schedule, so every ticket and shuffle of every method, level and seed is one replicate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from experiments.figures.common import (
    Figure,
    MissingRuns,
    Options,
    Run,
    RunSpec,
    compose_run,
    execute,
    is_complete,
    lockstep,
    run_folder,
    select_series,
)
from lottery.imp.batched import run_batched
from lottery.imp.schema import IMPRunConfig
from lottery.imp.scoring import at_init
from lottery.plots import Stat, errorbars, mean_min_max, new_figure, percent_axis, save_figure, write_csv
from lottery.run import validate

NAME = "pai"
BASE = "imp_lenet"
LEVELS = (3, 7, 12, 15, 19)  # 51.3, 21.1, 6.95, 3.58, 1.49 % remaining for IMP; 0.8^L for the one-shot methods
SHUFFLE_SEED = 1000  # the shuffled mask of seed s is drawn from SHUFFLE_SEED + s
METHODS = {  # series -> (legend, overrides)
    "imp": ("IMP ticket (reset to θ0)", ()),
    "snip": ("SNIP", ("pruning=global", "pruning.score=snip", "imp.oneshot=true")),
    "grasp": ("GraSP", ("pruning=global", "pruning.score=grasp", "imp.oneshot=true")),
    "synflow": ("SynFlow", ("pruning=global", "pruning.score=synflow", "imp.oneshot=true")),
    "magnitude": ("magnitude at init", ("pruning=global", "pruning.prune_at=init", "imp.oneshot=true")),
    "random": ("random at init", ("pruning=global", "pruning.score=random", "pruning.prune_at=init",
                                  "imp.oneshot=true")),
}
PANELS = {"early_stop_test_acc": "test accuracy at early stop", "final_test_acc": "test accuracy at the end"}
COLUMNS = ["panel", "series", "variant", "level", "percent_remaining", "mean", "min", "max", "n"]


def specs(options: Options) -> list[RunSpec]:
    """IMP: one run per seed (shuffle branch at LEVELS); the others: one run per method, level and seed."""
    out = []
    for seed in range(options.seeds):
        shuffle = ("+branch=random_prune", f"branch.seed={SHUFFLE_SEED + seed}")
        out.append(RunSpec(("imp", None, seed), (f"+exp={BASE}", f"seed={seed}", *shuffle,
                                                 f"branch.levels=[{','.join(map(str, LEVELS))}]")))
        for method, (_, overrides) in METHODS.items():
            if method != "imp":
                out += [RunSpec((method, level, seed), (f"+exp={BASE}", f"seed={seed}", *overrides,
                                                        f"imp.levels={level}", *shuffle))
                        for level in LEVELS]
    return out


def _prunes_at_init(cfg: DictConfig) -> bool:
    config = IMPRunConfig.from_config(cfg)
    return at_init(config.pruning, config.imp.oneshot)


def train_missing(configs: list[DictConfig]) -> None:
    """Train incomplete runs: every batched at-init run in one job, the rest as `gather` would."""
    for cfg in configs:  # every run's input is checked before the first one trains
        validate(cfg)
    together = [c for c in configs if c.training.engine == "batched" and _prunes_at_init(c)]
    if together:
        run_batched(together)
    for cfg in lockstep([c for c in configs if not any(c is t for t in together)]):
        execute(cfg)


def _metric(runs: dict[tuple[Any, ...], Run], method: str, level: int, seed: int, variant: str) -> dict[str, Any]:
    if method == "imp":
        run = runs[("imp", None, seed)]
        return run.level(level) if variant == "original" else run.branch()[level]
    run = runs[(method, level, seed)]
    return run.level(1) if variant == "original" else run.branch()[1]


def rows_of(runs: dict[tuple[Any, ...], Run], seeds: int) -> list[dict[str, Any]]:
    """The plotted numbers: one row per panel, method, variant (original / shuffled) and level."""
    rows = []
    for panel in PANELS:
        for method in METHODS:
            for variant in ("original", "shuffled"):
                for level in LEVELS:
                    per_seed = [_metric(runs, method, level, s, variant) for s in range(seeds)]
                    stat = mean_min_max([m[panel] for m in per_seed])
                    rows.append({"panel": panel, "series": method, "variant": variant, "level": level,
                                 "percent_remaining": per_seed[0]["percent_remaining"], "mean": stat.mean,
                                 "min": stat.min, "max": stat.max, "n": stat.n})
    return rows


def draw(runs: dict[tuple[Any, ...], Run], options: Options, out: Path) -> list[Path]:
    rows = rows_of(runs, options.seeds)
    fig, axes = new_figure(1, len(PANELS), width=5.2, height=3.8)
    colors = dict(zip(METHODS, ("black", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:gray"), strict=True))
    for ax, (panel, ylabel) in zip(axes[0], PANELS.items(), strict=True):
        for method, (legend, _) in METHODS.items():
            for variant, style, suffix in (("original", "-", ""), ("shuffled", ":", " (layer-shuffled)")):
                pts = [r for r in rows if r["panel"] == panel and r["series"] == method and r["variant"] == variant]
                errorbars(ax, [r["percent_remaining"] for r in pts],
                          [Stat(r["mean"], r["min"], r["max"], r["n"]) for r in pts], legend + suffix,
                          color=colors[method], marker="o" if variant == "original" else "x", linestyle=style)
        percent_axis(ax, [r["percent_remaining"] for r in rows if r["panel"] == panel and r["series"] == "imp"])
        ax.set(xlabel="% of weights remaining", ylabel=ylabel, title=ylabel)
        ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=6, ncol=2)
    cfg: DictConfig = runs[("imp", None, 0)].cfg
    fig.suptitle(f"Pruning at init vs IMP: {cfg.model.name} on {cfg.data.name}, {cfg.training.iterations} "
                 f"iterations (mean, min/max over {options.seeds} seed(s))", fontsize=9)
    return [*save_figure(fig, out, NAME), write_csv(rows, COLUMNS, out / f"{NAME}.csv")]


class PaiFigure(Figure):
    """The figure, with its own trainer for missing runs (one batched job for all at-init runs)."""

    def render(self, options: Options) -> list[Path]:
        runs, missing = {}, []
        for spec in select_series(self.runs(options), options.only):  # each config composed once: 130 at 5 seeds
            cfg = compose_run([*spec.overrides, *options.overrides])
            runs[spec.key] = Run(spec, cfg, run_folder(cfg))
            if not is_complete(cfg, runs[spec.key].path):
                missing.append((spec, runs[spec.key].path))
        if missing and not options.run_missing:
            raise MissingRuns(missing, options.overrides)
        train_missing([runs[spec.key].cfg for spec, _ in missing])
        if options.only:  # only a part of the figure's training
            return []
        out = options.out / self.name
        out.mkdir(parents=True, exist_ok=True)
        return self.draw(runs, options, out)


PAI = PaiFigure(NAME, "Frankle et al. 2021: SNIP, GraSP, SynFlow, magnitude, random at init vs IMP; layer shuffle",
                specs, draw)
