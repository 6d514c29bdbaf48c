"""Markdown tables and the figure of `python -m lottery.bench nm_e2e` (plain rows in, text/PNG out; no GPU).

Every number in the output comes from the rows given; the target lines compare them against issue 16's
targets (prefill >= 1.2x over dense, decode >= 1.0x) and say "met" or "NOT met".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lottery.bench.report import _dicts

__all__ = ["e2e_table", "format_nm", "plot_nm", "target_lines"]

SPARSE_E2E = ("sparse_copy", "sparse_tt", "sparse_tok", "sparse_fm")
E2E_COLS = ("sparse_copy", "sparse_tt", "dense_tok", "sparse_tok", "dense_fm", "sparse_fm")
PREFILL_TARGET, DECODE_TARGET = 1.2, 1.0


def _x(v: float, ok: bool = True) -> str:
    if not isinstance(v, float) or not math.isfinite(v):
        return "—"
    return f"{v:.2f}x" + ("" if ok else " ✗")


def _ms(v: float) -> str:
    return f"{v:.3f}" if isinstance(v, float) and math.isfinite(v) else "—"


def _groups(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple, dict[str, dict[str, Any]]]:
    out: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), {})[r["variant"]] = r
    return out


def e2e_table(rows: Sequence[Any]) -> str:
    """Speedup of every variant over the standard dense model (✗: failed its correctness check)."""
    data = _dicts(rows)
    head = ("| dtype | phase | batch | dense ms | " + " | ".join(E2E_COLS) +
            " | sparse_fm vs dense_fm | f (fm) | Amdahl s=2 (fm) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (dt, phase, b), g in _groups(data, ("dtype", "phase", "batch")).items():
        dense = g.get("dense", {}).get("ms", math.nan)
        cells = [_x(g[v]["speedup_vs_dense"], g[v]["ok"]) if v in g else "—" for v in E2E_COLS]
        fm = g.get("sparse_fm", {})
        lines.append(f"| {dt} | {phase} | {b} | {_ms(dense)} | " + " | ".join(cells) +
                     f" | {_x(fm.get('speedup_vs_same_glue', math.nan), fm.get('ok', True))} |"
                     f" {fm.get('f_linear', math.nan):.2f} | {_x(fm.get('amdahl_2x', math.nan))} |")
    return "\n".join(lines)


def check_table(rows: Sequence[Any]) -> str:
    data = [r for r in _dicts(rows) if not r["variant"].startswith("stub")]
    lines = ["| dtype | phase | batch | variant | rel err vs fp32 | rel err vs dense | tolerance | ok |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data:
        e32 = f"{r['rel_err_ref32']:.2e}" if math.isfinite(r["rel_err_ref32"]) else "—"
        ed = f"{r['rel_err_dense']:.2e}" if math.isfinite(r["rel_err_dense"]) else "—"
        lines.append(f"| {r['dtype']} | {r['phase']} | {r['batch']} | {r['variant']} | {e32} | {ed} | "
                     f"{r['tol']:.1e} | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def target_lines(rows: Sequence[Any]) -> list[str]:
    """One line per (dtype, phase, batch): the best correct 2:4 variant against the issue's target."""
    out = []
    for (dt, phase, b), g in _groups(_dicts(rows), ("dtype", "phase", "batch")).items():
        cands = [(r["speedup_vs_dense"], v) for v, r in g.items()
                 if v in SPARSE_E2E and r["ok"] and isinstance(r["speedup_vs_dense"], float)
                 and math.isfinite(r["speedup_vs_dense"])]
        target = PREFILL_TARGET if phase == "prefill" else DECODE_TARGET
        if not cands:
            out.append(f"- {dt} {phase} b={b}: no correct 2:4 variant was timed (target >= {target}x: NOT met)")
            continue
        s, v = max(cands)
        fm = g.get("sparse_fm", {})
        out.append(f"- {dt} {phase} b={b}: best 2:4 `{v}` {s:.2f}x over dense (target >= {target}x: "
                   f"{'met' if s >= target else 'NOT met'}); `sparse_fm` {_x(fm.get('speedup_vs_dense', math.nan))}"
                   f" over dense, {_x(fm.get('speedup_vs_same_glue', math.nan))} over `dense_fm`")
    return out


def kernels_table(rows: Sequence[Any]) -> str:
    lines = ["| op | variant | dtype | features x tokens | µs | GB/s | speedup over torch |", "|---|---|---|---|---|---|---|"]
    for r in _dicts(rows):
        us = r["ms"] * 1e3 if math.isfinite(r["ms"]) else math.nan
        lines.append(f"| {r['op']} | {r['variant']} | {r['dtype']} | {r['features']}x{r['tokens']} | "
                     f"{us:.1f} | {r['gbps']:.0f} | {_x(r['speedup'])} |" + (f" {r['note']}" if r["note"] else ""))
    return "\n".join(lines)


def dispatch_table(rows: Sequence[Any]) -> str:
    lines = ["| out x in | tokens | dtype | layout | dense ms | 2:4 ms | 2:4 speedup | choice |",
             "|---|---|---|---|---|---|---|---|"]
    for r in _dicts(rows):
        lines.append(f"| {r['out_features']}x{r['in_features']} | {r['tokens']} | {r['dtype']} | {r['layout']} | "
                     f"{_ms(r['dense_ms'])} | {_ms(r['sparse_ms'])} | {_x(r['speedup'])} | {r['choice']} |")
    return "\n".join(lines)


def layers_table(rows: Sequence[Any]) -> str:
    """Speedup over the dtype's dense baseline per shape/tokens: one table for fp16/bf16, one for int8 (over
    torch._int_mm, plus int8 2:4 with fp16 output against fp16 dense)."""
    data = _dicts(rows)
    out = []
    for kind in ("float", "int8"):
        part = [r for r in data if (r["dtype"] == "int8") == (kind == "int8")]
        if not part:
            continue
        variants = list(dict.fromkeys(r["variant"] for r in part if r["variant"] != "dense"))
        extra = kind == "int8" and "cslt_i8_f16" in variants and "dense_fp16" in variants
        head = "| out x in | tokens | dtype | dense ms | " + " | ".join(variants) + (
            " | int8 2:4 (fp16 out) vs fp16 dense |" if extra else " |")
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for (n, k, t, dt), g in _groups(part, ("out_features", "in_features", "tokens", "dtype")).items():
            dense = g.get("dense", {}).get("ms", math.nan)
            cells = [_x(g[v]["speedup"]) if v in g and g[v]["ok"] else "—" for v in variants]
            row = f"| {n}x{k} | {t} | {dt} | {_ms(dense)} | " + " | ".join(cells) + " |"
            if extra:
                a, b = g.get("dense_fp16", {}), g.get("cslt_i8_f16", {})
                ok = a.get("ok") and b.get("ok")
                row += f" {_x(a['ms'] / b['ms']) if ok else '—'} |"
            lines.append(row)
        out.append("\n".join(lines))
    return "\n\n".join(out)


def format_nm(env: dict, command: str, kernels: Sequence[Any], dispatch: Sequence[Any], e2e: Sequence[Any],
              layers: Sequence[Any], stages: list[str]) -> str:
    """The whole TABLES.md."""
    parts = ["# nm_e2e results (issue 16)", "",
             f"Machine: {env.get('gpu', '?')} (sm {env.get('compute_capability', '?')}), driver "
             f"{env.get('driver', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda_runtime', '?')}, "
             f"cuSPARSELt {env.get('cusparselt_torch', '?')}, triton {env.get('triton', '?')}; {env.get('date_utc', '')}.",
             f"Command: `{command}`", "", "Stages: " + "; ".join(stages), ""]
    if e2e:
        parts += ["## End to end: speedup over the standard dense model", "", e2e_table(e2e), "",
                  "Against the targets:", "", *target_lines(e2e), "", "### Correctness (checked before timing)", "",
                  check_table(e2e), ""]
    if kernels:
        parts += ["## Glue kernels", "", kernels_table(kernels), ""]
    if dispatch:
        parts += ["## Dispatch table (dense vs 2:4, Yᵀ out)", "", dispatch_table(dispatch), ""]
    if layers:
        parts += ["## Per layer (CUDA graphs; speedup over the dtype's dense baseline)", "", layers_table(layers), ""]
    return "\n".join(parts) + "\n"


def plot_nm(layers: Sequence[Any], e2e: Sequence[Any], path: Path) -> None:
    """Per-layer speedup vs tokens (best 2:4 Yᵀ path and 2:4 → Y via the Triton transpose, per dtype) with the
    2x line and the e2e Amdahl ceiling (feature-major f, prefill); then the e2e speedups per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ld = [r for r in _dicts(layers) if r["ok"] and isinstance(r["speedup"], float) and math.isfinite(r["speedup"])]
    ed = _dicts(e2e)
    shapes = list(dict.fromkeys((r["out_features"], r["in_features"]) for r in ld))
    panels = len(shapes) + (1 if ed else 0)
    cols = min(3, max(panels, 1))
    nrows = max(1, math.ceil(panels / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.9 * nrows), squeeze=False)
    pre = [r for r in ed if r["phase"] == "prefill" and r["variant"] == "sparse_fm" and math.isfinite(r["amdahl_2x"])]
    styles = {"float16": "-", "bfloat16": "--", "int8": ":"}
    series = {"cslt_tuned_xT": ("2:4 Yᵀ (feature-major in)", "C0"), "cslt_tuned": ("2:4 Yᵀ (Xᵀ view in)", "C4"),
              "cslt_Y_triton": ("2:4 → Y, Triton transpose", "C1"), "cslt_Y_copy": ("2:4 → Y, .contiguous()", "C3"),
              "cslt_i8_f16": ("int8 2:4, fp16 out (vs int8 dense)", "C5")}
    for ax, (n, k) in zip(axes.flat, shapes, strict=False):
        for dt in dict.fromkeys(r["dtype"] for r in ld):
            for v, (label, color) in series.items():
                pts = sorted((r["tokens"], r["speedup"]) for r in ld
                             if (r["out_features"], r["in_features"], r["dtype"], r["variant"]) == (n, k, dt, v))
                if pts:
                    ax.plot(*zip(*pts, strict=True), "o" + styles.get(dt, "-"), color=color, ms=3,
                            label=f"{label} ({dt})")
        ax.axhline(2.0, color="k", lw=1, ls="-.", label="2x ceiling")
        ax.axhline(1.0, color="grey", lw=0.8)
        for r in pre[:2]:
            ax.axhline(r["amdahl_2x"], color="C2", lw=1, ls=":", label=f"e2e Amdahl s=2 ({r['dtype']}) "
                                                                         f"{r['amdahl_2x']:.2f}x")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{n} x {k} (out x in)")
        ax.set_xlabel("tokens")
        ax.set_ylabel("speedup over dense")
        ax.grid(alpha=0.3)
    if shapes:
        axes.flat[0].legend(fontsize=5)
    if ed:
        ax = axes.flat[len(shapes)]
        groups = list(dict.fromkeys((r["dtype"], r["phase"], r["batch"]) for r in ed))
        vs = [v for v in E2E_COLS if any(r["variant"] == v for r in ed)]
        width = 0.8 / max(1, len(vs))
        for j, v in enumerate(vs):
            ys = []
            for gk in groups:
                r = next((r for r in ed if (r["dtype"], r["phase"], r["batch"]) == gk and r["variant"] == v), None)
                ys.append(r["speedup_vs_dense"] if r and r["ok"] and math.isfinite(r["speedup_vs_dense"]) else 0.0)
            ax.bar([i + (j - (len(vs) - 1) / 2) * width for i in range(len(groups))], ys, width, label=v)
        am = [next((r["amdahl_2x"] for r in ed if (r["dtype"], r["phase"], r["batch"]) == gk
                    and r["variant"] == "sparse_fm"), math.nan) for gk in groups]
        ax.plot(range(len(groups)), am, "k_", ms=20, mew=2, label="Amdahl s=2 (fm)")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axhline(PREFILL_TARGET, color="C3", lw=0.8, ls="--", label="prefill target 1.2x")
        short = {"float16": "fp16", "bfloat16": "bf16"}
        ax.set_xticks(range(len(groups)), [f"{p}\nb={b} {short.get(dt, dt)}" for dt, p, b in groups], fontsize=7)
        ax.set_title("LLaMA-7B-shaped model, end to end")
        ax.set_ylabel("speedup over dense")
        ax.legend(fontsize=5, ncol=2)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
