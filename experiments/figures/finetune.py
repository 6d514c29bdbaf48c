"""Sparse fine-tuning after one-shot pruning: dense, pruned and fine-tuned perplexity, and the gap closed.

Reads every finished fine-tune under the store, `oneshot_<hash>/<method>_<pattern>/finetune_<hash>/result.json`
(lottery/llm/finetune.py), and writes finetune.md and finetune.csv. It runs nothing: a fine-tune needs its source
variant, so make them with `python -m lottery.run +exp=oneshot_finetune finetune.source=...` (README, "Sparse
fine-tuning"). The store is `--set store.root=PATH`, else the default store ($LOTTERY_RUNS or ./runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.figures.common import Figure, Options, Run, RunSpec
from lottery.config import default_store_root
from lottery.errors import ConfigError
from lottery.plots import write_csv
from lottery.tracking import load_json, save_text

NAME = "finetune"
COLUMNS = ["source", "method", "pattern", "mode", "loss", "steps", "tokens_seen", "train_seconds", "dense_ppl", "source_ppl",
           "finetuned_ppl", "gap_closed", "lora_unmerged_ppl", "sparsity", "masks_hold", "lr", "seqlen", "batch_size",
           "precision", "device", "folder"]
PATTERN_ORDER = {"unstructured": 0}


def store_root(options: Options) -> Path:
    """The last `store.root=` of --set, else the default store."""
    roots = [o.split("=", 1)[1] for o in options.overrides if o.startswith("store.root=")]
    return Path(roots[-1] if roots else default_store_root())


def collect(root: Path) -> list[dict[str, Any]]:
    """One row per finished fine-tune under `root`, ordered by pattern, method, mode, then folder."""
    rows = []
    for file in sorted(root.glob("oneshot_*/*/finetune_*/result.json")):
        rows.append({**load_json(file), "folder": str(file.parent.relative_to(root))})
    return sorted(rows, key=lambda r: (PATTERN_ORDER.get(r["pattern"], 1), r["pattern"], r["method"], r["mode"],
                                       r.get("loss", "lm"), r["folder"]))


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: dense, pruned and fine-tuned perplexity and the fraction of the pruning gap closed."""
    lines = ["| Method | Sparsity | Mode | Loss | Steps | LR | Tokens | Train s | Dense | Pruned | Fine-tuned | Gap closed |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sparsity = "50%" if r["pattern"] == "unstructured" and abs(r["sparsity"] - 0.5) < 0.01 else (
            r["pattern"] if r["pattern"] != "unstructured" else f"{100 * r['sparsity']:.1f}%")
        lines.append(f"| {r['method']} | {sparsity} | {r['mode']} | {r.get('loss', 'lm')} | {r['steps']} | {r['lr']:g} | "
                     f"{r['tokens_seen']:,} | "
                     f"{r['train_seconds']:.1f} | {r['dense_ppl']:.2f} | {r['source_ppl']:.2f} | "
                     f"{r['finetuned_ppl']:.2f} | {100 * r['gap_closed']:.1f}% |")
    calibrated = sorted({r["calibration"] for r in rows if r.get("calibration")})
    caption = ("perplexity on the source runs' evaluation text (lower is better); gap closed = (pruned − fine-tuned)"
               " / (pruned − dense); every fine-tuned model keeps its masks exactly")
    if calibrated:
        caption += "; pruning calibration: " + "; ".join(calibrated)
    return caption + "\n\n" + "\n".join(lines) + "\n"


def draw(runs: dict[tuple[Any, ...], Run], options: Options, out: Path) -> list[Path]:
    root = store_root(options)
    rows = collect(root)
    if not rows:
        raise ConfigError(f"store.root={root}: no finished fine-tune (oneshot_*/*/finetune_*/result.json); run "
                          "python -m lottery.run +exp=oneshot_finetune finetune.source=... first")
    csv = write_csv(rows, COLUMNS, out / f"{NAME}.csv")
    save_text(markdown(rows), out / f"{NAME}.md")
    return [csv, out / f"{NAME}.md"]


def specs(options: Options) -> list[RunSpec]:
    return []  # reads what is stored; see the module docstring


FINETUNE = Figure(NAME, "Sparse fine-tuning: dense / pruned / fine-tuned perplexity and gap closed (md + csv)",
                  specs, draw)
