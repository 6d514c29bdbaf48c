"""Regenerate a paper figure or table from the run store, training the runs it needs that are missing.

    python -m experiments.regenerate --list
    python -m experiments.regenerate lth_lenet                       # 5 seeds, the paper's settings
    python -m experiments.regenerate lth_lenet --set training.iterations=300 --set imp.levels=3 --seeds 2
    python -m experiments.regenerate rewind --no-run                 # only read; name missing runs, exit 1

Writes <out>/<name>/<name>.png, .pdf and .csv (the plotted numbers; the same runs give the same CSV).
Exit codes: 0 done, 1 runs missing with --no-run, 2 a bad option or config value.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.figures import FIGURES, MissingRuns, Options
from experiments.figures.common import DEFAULT_SEEDS
from lottery.errors import LotteryError

EXIT_MISSING, EXIT_BAD_INPUT = 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.regenerate", description=__doc__.split("\n")[0])
    p.add_argument("name", nargs="?", help="figure to regenerate (see --list)")
    p.add_argument("--list", action="store_true", help="list the figures and exit")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="seeds 0..N-1 (default %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override appended to every run of the figure (repeatable)")
    p.add_argument("--out", type=Path, default=Path("figures"), help="output folder (default ./figures)")
    p.add_argument("--no-run", action="store_true", help="only read the store; exit 1 naming missing runs")
    p.add_argument("--only", default="", metavar="SERIES[,SERIES]",
                   help="train only the missing runs of these series (the first part of the figure's run keys, "
                        "e.g. pai: imp or snip,grasp; instability: seeds) and draw nothing: splits one figure's "
                        "training over machines or calls, whose run stores then merge")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list or not args.name:
        for name, fig in FIGURES.items():
            print(f"{name:<10}  {fig.description}")
        return 0 if args.list else EXIT_BAD_INPUT
    if args.name not in FIGURES:
        print(f"error: unknown figure {args.name!r}; choose one of {', '.join(FIGURES)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.seeds < 1:
        print(f"error: --seeds={args.seeds} must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    only = tuple(name for name in args.only.split(",") if name)
    if only and args.no_run:
        print("error: --only trains runs; it cannot go with --no-run", file=sys.stderr)
        return EXIT_BAD_INPUT
    options = Options(seeds=args.seeds, overrides=list(args.overrides), out=args.out, run_missing=not args.no_run,
                      only=only)
    try:
        paths = FIGURES[args.name].render(options)
    except MissingRuns as err:
        print(f"error: {err}\nrun them (or drop --no-run to train them here)", file=sys.stderr)
        return EXIT_MISSING
    except LotteryError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path in paths:
        print(path)
    if only:
        print(f"trained the missing runs of {', '.join(only)}; run without --only to draw {args.name}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
