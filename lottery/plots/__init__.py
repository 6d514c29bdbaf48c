"""Plotting helpers shared by the paper figures: bands over seeds, deterministic PNG/PDF/CSV output.

Figures read the run store (never the W&B cloud), so everything here takes plain numbers.
"""

from lottery.plots.aggregate import Stat, fmt, mean_min_max, write_csv
from lottery.plots.draw import band, errorbars, new_figure, percent_axis, save_figure

__all__ = ["Stat", "band", "errorbars", "fmt", "mean_min_max", "new_figure", "percent_axis", "save_figure", "write_csv"]
