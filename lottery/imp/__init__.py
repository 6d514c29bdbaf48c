"""Iterative magnitude pruning: the job, one level's training, and the summary report."""

from lottery.imp.level import LevelSpec, early_stop, train_level
from lottery.imp.report import format_summary, summary_row

__all__ = ["LevelSpec", "early_stop", "format_summary", "summary_row", "train_level"]
