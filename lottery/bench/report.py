"""CSV, console table and plot for the sparse-speed benchmark (plain data in, files out; no GPU needed)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

__all__ = ["best_sparse", "format_e2e", "format_layers", "plot", "read_csv", "write_csv"]

SPARSE_VARIANTS = ("torch_semi", "torch_cslt", "lt_A", "lt_A_rowD", "lt_A_rowD_xT", "lt_B")


def _dicts(rows: Sequence[Any]) -> list[dict[str, Any]]:
    return [asdict(r) if is_dataclass(r) else dict(r) for r in rows]


def write_csv(rows: Sequence[Any], path: Path) -> None:
    """One row per measurement; columns are the dataclass fields."""
    data = _dicts(rows)
    if not data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(rows[0])] if is_dataclass(rows[0]) else list(data[0])
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=names)
        w.writeheader()
        for r in data:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def _parse(v: str) -> Any:
    if v in ("True", "False"):
        return v == "True"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows written by `write_csv`, numbers and booleans parsed back (so plots can be redrawn offline)."""
    with open(path, newline="") as fh:
        return [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def best_sparse(rows: Sequence[Any], variants: Sequence[str] = SPARSE_VARIANTS) -> dict[tuple, dict[str, Any]]:
    """Fastest correct 2:4 variant per (out, in, tokens, dtype, mode)."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in _dicts(rows):
        if r["variant"] not in variants or not r["ok"] or not math.isfinite(r["speedup"]):
            continue
        key = (r["out_features"], r["in_features"], r["tokens"], r["dtype"], r["mode"])
        if key not in best or r["speedup"] > best[key]["speedup"]:
            best[key] = r
    return best


def format_layers(rows: Sequence[Any]) -> str:
    """Speedup over dense per shape/tokens/dtype, one column per variant."""
    data = _dicts(rows)
    variants = list(dict.fromkeys(r["variant"] for r in data if r["variant"] != "dense"))
    head = f"{'out x in':>13} {'tok':>5} {'dtype':>8} {'dense ms':>9} " + " ".join(f"{v:>10}" for v in variants)
    lines = [head, "-" * len(head)]
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in data:
        groups.setdefault((r["out_features"], r["in_features"], r["tokens"], r["dtype"]), {})[r["variant"]] = r
    for (n, k, t, dt), g in groups.items():
        dense = g.get("dense", {}).get("ms", float("nan"))
        cells = []
        for v in variants:
            r = g.get(v)
            cells.append(f"{r['speedup']:>9.2f}x" if r and r["ok"] else f"{'-':>10}")
        lines.append(f"{f'{n}x{k}':>13} {t:>5} {dt:>8} {dense:>9.4f} " + " ".join(cells))
    return "\n".join(lines)


def format_e2e(rows: Sequence[Any]) -> str:
    data = _dicts(rows)
    head = (f"{'phase':>8} {'batch':>5} {'tok':>5} {'dtype':>8} {'dense ms':>9} {'2:4 ms':>9} {'speedup':>8} "
            f"{'f':>6} {'lin s':>6} {'Amdahl(2x)':>10}")
    lines = [head, "-" * len(head)]
    for r in data:
        lines.append(f"{r['phase']:>8} {r['batch']:>5} {r['tokens']:>5} {r['dtype']:>8} {r['dense_ms']:>9.3f} "
                     f"{r['sparse_ms']:>9.3f} {r['speedup']:>7.3f}x {r['f_linear']:>6.3f} "
                     f"{r['linear_speedup']:>5.2f}x {r['amdahl_2x']:>9.3f}x")
    return "\n".join(lines)


def plot(layer_rows: Sequence[Any], e2e_rows: Sequence[Any], path: Path, mode: str = "graph") -> None:
    """Speedup vs tokens, one panel per shape: best 2:4 path and half-width per dtype, the 2x ceiling, and
    the end-to-end Amdahl ceiling (from the measured f of prefill) beside the measured end-to-end speedups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [r for r in _dicts(layer_rows) if r["ok"]]
    shapes = list(dict.fromkeys((r["out_features"], r["in_features"]) for r in data))
    e2e = _dicts(e2e_rows)
    panels = len(shapes) + (1 if e2e else 0)
    cols = min(3, max(panels, 1))
    nrows = max(1, math.ceil(panels / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False)
    prefill = [r for r in e2e if r["phase"] == "prefill"]
    ceiling = prefill[0]["amdahl_2x"] if prefill else None
    best = best_sparse(layer_rows)
    styles = {"float16": "-", "bfloat16": "--", "int8": ":"}
    for ax, (n, k) in zip(axes.flat, shapes, strict=False):
        for dt in dict.fromkeys(r["dtype"] for r in data):
            pts = sorted((key[2], r["speedup"]) for key, r in best.items()
                         if key[0] == n and key[1] == k and key[3] == dt and key[4] == mode)
            if pts:
                ax.plot(*zip(*pts, strict=True), "o" + styles.get(dt, "-"), color="C0", label=f"2:4 best ({dt})")
            half = sorted((r["tokens"], r["speedup"]) for r in data
                          if (r["out_features"], r["in_features"], r["dtype"]) == (n, k, dt) and r["variant"] == "half"
                          and r["mode"] == mode)
            if half:
                ax.plot(*zip(*half, strict=True), "s" + styles.get(dt, "-"), color="C2", label=f"half width ({dt})")
            semi = sorted((r["tokens"], r["speedup"]) for r in data
                          if (r["out_features"], r["in_features"], r["dtype"]) == (n, k, dt)
                          and r["variant"] == "torch_semi" and r["mode"] == "eager")
            if semi:
                ax.plot(*zip(*semi, strict=True), "x" + styles.get(dt, "-"), color="C3",
                        label=f"torch F.linear eager ({dt})")
        ax.axhline(2.0, color="k", lw=1, ls="-.", label="2x ceiling")
        ax.axhline(1.0, color="grey", lw=0.8)
        if ceiling:
            ax.axhline(ceiling, color="C1", lw=1, ls=":", label=f"Amdahl e2e ceiling {ceiling:.2f}x")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{n} x {k} (out x in)")
        ax.set_xlabel("tokens")
        ax.set_ylabel("speedup over dense cuBLAS")
        ax.grid(alpha=0.3)
    if shapes:
        axes.flat[0].legend(fontsize=6)
    if e2e:
        ax = axes.flat[len(shapes)]
        labels = [f"{r['phase']}\nb={r['batch']} {r['dtype'][:4]}" for r in e2e]
        xs = range(len(e2e))
        ax.bar([x - 0.2 for x in xs], [r["speedup"] for r in e2e], 0.4, label="measured 2:4")
        ax.bar([x + 0.2 for x in xs], [r["amdahl_2x"] for r in e2e], 0.4, label="Amdahl ceiling (s=2)")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_title("LLaMA-7B-shaped model, end to end")
        ax.set_ylabel("speedup over dense")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
