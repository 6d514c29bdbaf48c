"""The per-level summary row and the console table printed at the end of an IMP job."""

from __future__ import annotations

from typing import Any


def summary_row(metrics: dict[str, Any], branch: str = "") -> dict[str, Any]:
    return {
        "level": metrics["level"],
        "branch": branch,
        "percent_remaining": round(metrics["percent_remaining"], 3),
        "early_stop_iteration": metrics["early_stop_iteration"],
        "early_stop_test_acc": metrics["early_stop_test_acc"],
        "final_test_acc": metrics["final_test_acc"],
    }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_summary(rows: list[dict[str, Any]], title: str = "") -> str:
    """A fixed-width table: level, % remaining, early-stop iteration, test accuracy there and at the end."""
    width = max([len(r.get("branch", "")) for r in rows] + [6])
    header = f"{'level':>5}  {'branch':<{width}}  {'% remaining':>11}  {'early-stop it':>13}  {'test acc @ES':>12}  {'final test acc':>14}"
    lines = [title, header, "-" * len(header)] if title else [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['level']:>5}  {r.get('branch') or 'ticket':<{width}}  {_fmt(r['percent_remaining'], '11.2f')}  "
                     f"{_fmt(r['early_stop_iteration'], '13d')}  {_fmt(r['early_stop_test_acc'], '12.4f')}  "
                     f"{_fmt(r['final_test_acc'], '14.4f')}")
    return "\n".join(lines)
