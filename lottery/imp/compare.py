"""Compare the masks of two IMP runs level by level (e.g. two seeds): Jaccard overlap per level and layer.

    python -m lottery.imp.compare runs/imp_aaaa runs/imp_bbbb
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lottery.pruning import Mask
from lottery.pruning.analysis import mask_overlap
from lottery.tracking import load_torch


def compare_runs(run_a: Path, run_b: Path) -> list[dict[str, Any]]:
    """One row per level present in both runs: the level, % remaining in each and the masks' overlap."""
    rows = []
    levels = sorted({p.name for p in Path(run_a).glob("level_*")} & {p.name for p in Path(run_b).glob("level_*")})
    for name in levels:
        a, b = (Mask(load_torch(Path(r) / name / "mask.pt")) for r in (run_a, run_b))
        overlap = mask_overlap(a, b)
        rows.append({"level": int(name.split("_")[1]), "percent_remaining_a": 100 * a.total_density(),
                     "percent_remaining_b": 100 * b.total_density(), "jaccard": overlap["overall"],
                     "jaccard_per_layer": overlap["per_layer"]})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args(argv)
    print(f"{'level':>5}  {'% remaining A':>13}  {'% remaining B':>13}  {'jaccard':>7}")
    for r in compare_runs(args.run_a, args.run_b):
        print(f"{r['level']:>5}  {r['percent_remaining_a']:>13.2f}  {r['percent_remaining_b']:>13.2f}  "
              f"{r['jaccard']:>7.4f}")


if __name__ == "__main__":
    main()
