"""Matplotlib (Agg) drawing helpers: mean lines with min/max bands or error bars, and reproducible saving."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window (and work on machines without a display)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lottery.plots.aggregate import Stat  # noqa: E402


def new_figure(rows: int, cols: int, width: float = 4.2, height: float = 3.2) -> tuple[Figure, list[list[Axes]]]:
    """A grid of axes, always indexed [row][col]."""
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return fig, [list(r) for r in axes]


def band(ax: Axes, x: Sequence[float], stats: Sequence[Stat], label: str, color: str | None = None,
         marker: str | None = None) -> None:
    """The mean as a line, min..max as a shaded band (Frankle & Carbin's style of showing seeds)."""
    (line,) = ax.plot(x, [s.mean for s in stats], label=label, color=color, marker=marker, markersize=3)
    if any(s.n > 1 for s in stats):
        ax.fill_between(x, [s.min for s in stats], [s.max for s in stats], color=line.get_color(), alpha=0.2,
                        linewidth=0)


def errorbars(ax: Axes, x: Sequence[float], stats: Sequence[Stat], label: str, color: str | None = None,
              marker: str = "o", linestyle: str = "-") -> None:
    """The mean with min/max error bars."""
    mean = [s.mean for s in stats]
    lower = [s.mean - s.min for s in stats]
    upper = [s.max - s.mean for s in stats]
    ax.errorbar(x, mean, yerr=[lower, upper], label=label, color=color, marker=marker, markersize=4,
                linestyle=linestyle, capsize=2)


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write `name`.png and `name`.pdf; without dates in the metadata, so reruns give the same files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, metadata={"Software": None})
    fig.savefig(paths[1], metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})
    plt.close(fig)
    return paths


def percent_axis(ax: Axes, percents: Sequence[float], max_ticks: int = 8) -> None:
    """Log-scaled % of weights remaining, decreasing left to right, ticks at the plotted levels (as the paper)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log")
    ticks = sorted(set(percents), reverse=True)
    if len(ticks) > max_ticks:
        ticks = [ticks[round(i * (len(ticks) - 1) / (max_ticks - 1))] for i in range(max_ticks)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:.3g}" for t in ticks], fontsize=7)
    if ticks and ax.get_xlim()[0] < ax.get_xlim()[1]:
        ax.invert_xaxis()
