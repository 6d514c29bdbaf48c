"""`python -m lottery.bench width_speed`: how much faster is a structurally narrowed LLaMA-7B-shaped model?

The dense model and its narrowed copies (MLP neurons removed; MLP neurons and attention heads removed, LLaMA-7B
has no grouped-query attention so a key/value group is one head) share embedding, norms, rotary tables and
lm_head; each narrowed block holds a slice of the dense block's weights (the first kept units), so it computes
exactly what the dense block computes with the removed units zeroed. Phases: prefill of `--prefill` tokens and
one decode step with `--prefill` tokens cached, at each of `--batches`. On a GPU every call is captured as a CUDA
graph and the models are timed interleaved (lottery.bench.timing, median of reps); on a CPU (`--shape tiny` smoke
runs) a Python loop with perf_counter. Prints a table and writes width_speed.csv and env.json under --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from lottery.bench.llama import Block, DenseLinear, LlamaDims, TinyLlama, llama7b_dims, shared_parts

__all__ = ["NARROWINGS", "WidthRow", "bench_width", "build_width_models", "main", "narrowed_dims", "tiny_dims"]

log = logging.getLogger("lottery.bench")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# variant -> (fraction of MLP neurons removed, fraction of attention heads / KV groups removed)
NARROWINGS: dict[str, tuple[float, float]] = {"dense": (0.0, 0.0), "mlp25": (0.25, 0.0), "mlp50": (0.5, 0.0),
                                              "mlp+heads25": (0.25, 0.25), "mlp+heads50": (0.5, 0.5)}


def tiny_dims(layers: int = 2) -> LlamaDims:
    """A CPU-sized model of the same structure (hidden 64, MLP 160, 8 heads over 4 KV groups)."""
    return LlamaDims(64, 160, layers, 8, 4, 256, 1e-6, 1e4)


def narrowed_dims(d: LlamaDims, mlp_removed: float, heads_removed: float) -> LlamaDims:
    """The dims after removing `mlp_removed` of the MLP neurons and `heads_removed` of the KV groups (with the
    query heads that read them); counts are rounded, at least one unit is kept, head_dim is written out."""
    rep = d.heads // d.kv_heads
    kv = max(1, round((1 - heads_removed) * d.kv_heads))
    return replace(d, intermediate=max(1, round((1 - mlp_removed) * d.intermediate)), kv_heads=kv, heads=kv * rep,
                   head_dim=d.hd)


def _block_weights(d: LlamaDims, rand: Callable[..., Tensor]) -> dict[str, Tensor]:
    hd, q = d.hd, d.heads * d.hd
    shapes = {"q": (q, d.hidden), "k": (d.kv_heads * hd, d.hidden), "v": (d.kv_heads * hd, d.hidden),
              "o": (d.hidden, q), "gate": (d.intermediate, d.hidden), "up": (d.intermediate, d.hidden),
              "down": (d.hidden, d.intermediate)}
    return {name: rand(n, k, std=k ** -0.5) for name, (n, k) in shapes.items()}


def _slice(w: dict[str, Tensor], n: LlamaDims) -> dict[str, Tensor]:
    """The narrowed block's weights: the first kept neurons (rows of gate/up, columns of down) and the first kept
    KV groups with their query heads (rows of q/k/v, columns of o)."""
    q, kv = n.heads * n.hd, n.kv_heads * n.hd
    return {"q": w["q"][:q].contiguous(), "k": w["k"][:kv].contiguous(), "v": w["v"][:kv].contiguous(),
            "o": w["o"][:, :q].contiguous(), "gate": w["gate"][: n.intermediate].contiguous(),
            "up": w["up"][: n.intermediate].contiguous(), "down": w["down"][:, : n.intermediate].contiguous()}


def build_width_models(d: LlamaDims, variants: dict[str, tuple[float, float]], dtype: torch.dtype,
                       max_batch: int, max_len: int, device: str, seed: int = 0) -> dict[str, TinyLlama]:
    """The dense model and each narrowed copy (keys of `variants`), sharing everything outside the blocks."""
    rand, embed, head, norm, rope = shared_parts(d, dtype, max_len, device, seed)
    hd = d.hd
    dense_blocks = [_block_weights(d, rand) for _ in range(d.layers)]
    models = {}
    for name, (mlp, heads) in variants.items():
        n = narrowed_dims(d, mlp, heads)
        blocks = [Block(n, {k: DenseLinear(v) for k, v in _slice(w, n).items()}, norm.clone(), norm.clone())
                  for w in dense_blocks]
        cache = [(rand(max_batch, n.kv_heads, max_len, hd, std=1.0), rand(max_batch, n.kv_heads, max_len, hd, std=1.0))
                 for _ in range(d.layers)]
        models[name] = TinyLlama(n, embed, blocks, norm, head, cache, rope)
    return models


@dataclass
class WidthRow:
    variant: str
    mlp_removed: float
    heads_removed: float
    intermediate: int
    heads: int
    kv_heads: int
    block_params: int  # weights of the seven block linears, all layers
    params_removed: float  # of the block linears
    phase: str
    batch: int
    tokens: int
    dtype: str
    layers: int
    ms: float
    speedup: float  # dense ms / this ms
    reps: int
    mode: str
    device: str


def _cpu_times(calls: dict[str, Callable[[int], object]], reps: int) -> dict[str, list[float]]:
    """Interleaved perf_counter timings (ms) on a CPU, after one warm-up call each."""
    for f in calls.values():
        f(0)
    out: dict[str, list[float]] = {n: [] for n in calls}
    names = list(calls)
    for r in range(reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            calls[n](0)
            out[n].append(1e3 * (time.perf_counter() - t0))
    return out


def _block_params(n: LlamaDims) -> int:
    q, kv = n.heads * n.hd, n.kv_heads * n.hd
    return n.layers * (2 * q * n.hidden + 2 * kv * n.hidden + 3 * n.intermediate * n.hidden)


def bench_width(d: LlamaDims, dtype: torch.dtype, prefill: int, batches: tuple[int, ...], device: str = "cuda",
                variants: dict[str, tuple[float, float]] = NARROWINGS, target_s: float = 0.3,
                cpu_reps: int = 3) -> list[WidthRow]:
    """Prefill and decode time of every variant at every batch; one row per (variant, phase, batch)."""
    models = build_width_models(d, variants, dtype, max(batches), prefill + 1, device)
    g = torch.Generator(device=device).manual_seed(1)
    ids = torch.randint(0, d.vocab, (max(batches), prefill), device=device, generator=g)
    dense_params = _block_params(models["dense"].d) if "dense" in models else _block_params(d)
    rows = []
    for phase, b in [("prefill", b) for b in batches] + [("decode", b) for b in batches]:
        t, pos = (prefill, 0) if phase == "prefill" else (1, prefill)
        inp = ids[:b, :t].contiguous()
        calls = {m: (lambda i, mod=models[m], inp=inp, pos=pos: mod(inp, pos)) for m in models}
        if device.startswith("cuda"):
            from lottery.bench.timing import time_side_by_side

            tm = time_side_by_side(calls, nsets=1, mode="graph", min_reps=5, max_reps=100, target_s=target_s)
            ms, mode = {m: tm[m].ms for m in tm}, {m: tm[m].mode for m in tm}
        else:
            ms = _cpu_times(calls, cpu_reps)
            mode = dict.fromkeys(ms, "eager")
        base = statistics.median(ms["dense"]) if "dense" in ms else float("nan")
        for m, times in ms.items():
            n, (mlp, heads) = models[m].d, variants[m]
            med = statistics.median(times)
            rows.append(WidthRow(m, mlp, heads, n.intermediate, n.heads, n.kv_heads, _block_params(n),
                                 1 - _block_params(n) / dense_params, phase, b, t, str(dtype).removeprefix("torch."),
                                 d.layers, med, base / med, len(times), mode[m], device))
        del calls
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def format_table(rows: list[WidthRow]) -> str:
    """One line per (dtype, phase, batch); a column of ms (speedup over dense) per variant."""
    variants = list(dict.fromkeys(r.variant for r in rows))
    head = f"{'dtype':<8} {'phase':<8} {'batch':>5} {'tokens':>6} " + " ".join(f"{v:>20}" for v in variants)
    lines = [head, "-" * len(head)]
    keys = list(dict.fromkeys((r.dtype, r.phase, r.batch, r.tokens) for r in rows))
    by = {(r.dtype, r.phase, r.batch, r.tokens, r.variant): r for r in rows}
    for key in keys:
        cells = []
        for v in variants:
            r = by.get((*key, v))
            cells.append(f"{r.ms:>10.3f} ms ({r.speedup:4.2f}x)" if r else f"{'-':>20}")
        lines.append(f"{key[0]:<8} {key[1]:<8} {key[2]:>5} {key[3]:>6} " + " ".join(cells))
    return "\n".join(lines)


def write_csv(rows: list[WidthRow], env: dict, path: Path) -> None:
    """The rows, each with the machine (GPU or CPU name) it ran on."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    machine = env.get("gpu") or env.get("cpu") or "unknown"
    with open(path, "w", newline="") as fh:
        fields = [*asdict(rows[0]), "machine"]
        w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(r).items()},
                        "machine": machine})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lottery.bench width_speed", description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=["7b", "tiny"], default="7b", help="LLaMA-7B dims, or a tiny CPU smoke shape")
    p.add_argument("--layers", type=int, default=None, help="decoder blocks (default: 8 for 7b, 2 for tiny)")
    p.add_argument("--prefill", type=int, default=None, help="prompt tokens (default 2048; 32 for tiny)")
    p.add_argument("--batches", default="1,16", help="batch sizes, comma-separated")
    p.add_argument("--dtypes", default=None, help=f"from {sorted(DTYPES)} (default fp16,bf16; fp32 for tiny)")
    p.add_argument("--device", default=None, help="cuda (default for 7b) or cpu (default for tiny)")
    p.add_argument("--target-s", type=float, default=0.3, help="seconds of timed replays per variant and phase")
    p.add_argument("--out", type=Path, default=Path("experiments/width_speed"), help="output folder")
    a = p.parse_args(argv)
    tiny = a.shape == "tiny"
    a.layers = a.layers or (2 if tiny else 8)
    a.prefill = a.prefill or (32 if tiny else 2048)
    a.dtypes = a.dtypes or ("fp32" if tiny else "fp16,bf16")
    a.device = a.device or ("cpu" if tiny else "cuda")
    try:
        a.batch_list = tuple(int(b) for b in a.batches.split(",") if b)
    except ValueError:
        p.error(f"--batches={a.batches!r} takes integers, e.g. 1,16")
    bad = [x for x in a.dtypes.split(",") if x not in DTYPES]
    if bad:
        p.error(f"--dtypes: unknown {bad}; allowed: {sorted(DTYPES)}")
    if a.layers < 1 or a.prefill < 1 or not a.batch_list or min(a.batch_list) < 1:
        p.error("--layers, --prefill and every --batches entry must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (2 when the device cannot run it)."""
    a = parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("width_speed: no CUDA device; use --device cpu (with --shape tiny for a smoke run)", file=sys.stderr)
        return 2
    import platform

    from lottery.bench.env import environment

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    env = {**environment(), "cpu": platform.processor() or platform.machine(), "shape": a.shape,
           "layers": a.layers, "prefill": a.prefill}
    dims = tiny_dims(a.layers) if a.shape == "tiny" else llama7b_dims(a.layers)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "env.json").write_text(json.dumps(env, indent=1) + "\n")
    began, rows = time.time(), []
    for dname in a.dtypes.split(","):
        t0 = time.time()
        rows += bench_width(dims, DTYPES[dname], a.prefill, a.batch_list, a.device, target_s=a.target_s)
        log.info("width_speed %s (%d layers) done in %.1fs", dname, dims.layers, time.time() - t0)
        write_csv(rows, env, a.out / "width_speed.csv")
    print(f"\nnarrowed {a.shape} model ({dims.layers} blocks), time per call and speedup over dense "
          f"({env.get('gpu') or env['cpu']})")
    print(format_table(rows))
    log.info("total %.1fs; results in %s", time.time() - began, a.out)
    return 0
