"""`python -m lottery.bench NAME [options]`: run one of the benchmarks (`sparse_speed`, `width_speed`, `nm_e2e`)."""

from __future__ import annotations

import sys

BENCHMARKS = ("sparse_speed", "width_speed", "nm_e2e")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m lottery.bench {{{','.join(BENCHMARKS)}}} [options]  (-h for a benchmark's help)",
              file=sys.stderr)
        return 2
    if argv[0] == "nm_e2e":
        from lottery.bench.nm_e2e import main as nm_e2e

        return nm_e2e(argv[1:])
    if argv[0] == "width_speed":
        from lottery.bench.width_speed import main as width_speed

        return width_speed(argv[1:])
    from lottery.bench.sparse_speed import main as sparse_speed

    return sparse_speed(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
