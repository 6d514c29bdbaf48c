"""Mean with min/max over seeds, and a CSV writer whose output is byte-identical for the same inputs."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lottery.tracking import save_text


@dataclass(frozen=True)
class Stat:
    """Mean, min and max of the values of one plotted point (one value per seed)."""

    mean: float
    min: float
    max: float
    n: int


def mean_min_max(values: Sequence[float]) -> Stat:
    """Summarise `values`. The sum is `math.fsum` (correctly rounded): the built-in `sum` of floats rounds
    differently from Python 3.12 on, and the CSV must not depend on the Python that renders it."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return Stat(math.nan, math.nan, math.nan, 0)
    return Stat(math.fsum(vals) / len(vals), min(vals), max(vals), len(vals))


def fmt(value: Any) -> str:
    """One canonical text form per value: floats by repr (round-trips exactly), None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str], path: Path) -> Path:
    """Write `rows` (in the order given) with `columns`, LF line endings, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([fmt(row.get(c)) for c in columns])
    save_text(buffer.getvalue(), path)
    return path
