"""Training-time points written as steps or epochs: "500", "500it", "2ep"."""

from __future__ import annotations

import re

_STEP = re.compile(r"^\s*(\d+)\s*(it|ep)?\s*$")


def parse_step(text: str | int, steps_per_epoch: int) -> int:
    """Convert "N", "Nit" (iterations) or "Nep" (epochs) to an iteration count."""
    match = _STEP.match(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not a step; write an iteration count like '500' or '500it', or epochs like '2ep'")
    value, unit = int(match.group(1)), match.group(2)
    return value * steps_per_epoch if unit == "ep" else value
