"""`python -m lottery.bench sparse_speed`: does 2:4 sparsity make LLaMA-shaped inference faster on this GPU?

Per-layer matmul times (dense cuBLAS vs every 2:4 path vs half-width dense) for LLaMA-7B/13B/70B linear
shapes, then end-to-end latency of a LLaMA-7B-shaped model, dense vs 2:4 in every block linear, beside
the Amdahl ceiling from the measured fraction of time in those matmuls. Writes layers.csv, e2e.csv,
sparse_speed.png and env.json under --out, and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

__all__ = ["DEFAULT_SHAPES", "DEFAULT_TOKENS", "main", "parse_args"]

DEFAULT_SHAPES = ("4096x4096", "11008x4096", "4096x11008", "8192x8192", "28672x8192")  # out x in
DEFAULT_TOKENS = (1, 16, 128, 2048, 8192)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}
log = logging.getLogger("lottery.bench")


def _csv(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from lottery.bench.layers import FLOAT_VARIANTS

    p = argparse.ArgumentParser(prog="python -m lottery.bench sparse_speed", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help="OUTxIN,... (default: LLaMA-7B/13B/70B)")
    p.add_argument("--tokens", default=",".join(map(str, DEFAULT_TOKENS)), help="token counts, comma-separated")
    p.add_argument("--dtypes", default="fp16,bf16", help=f"comma-separated from {sorted(DTYPES)}")
    p.add_argument("--variants", default=",".join(FLOAT_VARIANTS), help="per-layer variants (see layers.py)")
    p.add_argument("--modes", default="graph,eager", help="graph (kernel time, CUDA-graph replay) and/or eager")
    p.add_argument("--eager-variants", default="dense,torch_semi,torch_cslt", help="variants timed in eager mode")
    p.add_argument("--target-s", type=float, default=0.25, help="seconds of timed replays per variant and point")
    p.add_argument("--layers", type=int, default=32, help="decoder layers in the end-to-end model (7B has 32)")
    p.add_argument("--prefill", type=int, default=2048, help="prefill tokens; decode steps attend to this many")
    p.add_argument("--decode-batches", default="1,16")
    p.add_argument("--e2e-dtypes", default="fp16,bf16")
    p.add_argument("--e2e-backend", default="cslt", choices=["cslt", "torch", "ctypes"],
                   help="2:4 backend of the end-to-end model (lottery.export.SemiStructuredLinear)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end model")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    p.add_argument("--quick", action="store_true", help="2 shapes, 2 token counts, fp16, 2 layers end to end")
    p.add_argument("--out", type=Path, default=Path("experiments/sparse_speed"), help="output folder")
    a = p.parse_args(argv)
    if a.quick:
        a.shapes, a.tokens, a.dtypes, a.layers, a.e2e_dtypes = "11008x4096,4096x11008", "16,2048", "fp16", 2, "fp16"
        a.decode_batches, a.modes = "1", "graph"
    try:
        a.shape_list = [tuple(int(v) for v in s.lower().split("x")) for s in _csv(a.shapes)]
        a.token_list = [int(t) for t in _csv(a.tokens)]
        a.decode_list = tuple(int(b) for b in _csv(a.decode_batches))
        if any(len(s) != 2 for s in a.shape_list):
            raise ValueError
    except ValueError:
        p.error("--shapes takes OUTxIN,... and --tokens/--decode-batches take integers")
    for name in ("dtypes", "e2e_dtypes"):
        bad = [d for d in _csv(getattr(a, name)) if d not in DTYPES]
        if bad:
            p.error(f"--{name.replace('_', '-')}: unknown {bad}; allowed: {sorted(DTYPES)}")
    return a


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (2 when no CUDA GPU can run it)."""
    a = parse_args(argv)
    from lottery.export.semi import SemiStructuredUnavailable, require_semi_structured_gpu

    try:
        require_semi_structured_gpu()
    except SemiStructuredUnavailable as e:
        print(f"sparse_speed: {e}", file=sys.stderr)
        return 2
    from lottery.bench import report
    from lottery.bench.env import environment
    from lottery.bench.layers import INT8_VARIANTS, bench_layer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    a.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    log.info("environment: %s", env)
    (a.out / "env.json").write_text(json.dumps(env, indent=1) + "\n")
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = True  # cuBLAS default; stated for record
    t_start = time.time()
    layer_rows: list = []
    if not a.no_layers:
        for mode in _csv(a.modes):
            variants = tuple(_csv(a.eager_variants if mode == "eager" else a.variants))
            for dname in _csv(a.dtypes):
                dt = DTYPES[dname]
                vs = tuple(v for v in variants if v in INT8_VARIANTS) if dt == torch.int8 else variants
                for n, k in a.shape_list:
                    t0 = time.time()
                    rows = bench_layer(n, k, a.token_list, dt, vs, mode=mode, target_s=a.target_s)
                    layer_rows += rows
                    log.info("%s %s %dx%d done in %.1fs", mode, dname, n, k, time.time() - t0)
                    report.write_csv(layer_rows, a.out / "layers.csv")
        for mode in _csv(a.modes):
            print(f"\nper-layer speedup over dense cuBLAS, {mode} mode (median of interleaved reps)")
            print(report.format_layers([r for r in layer_rows if r.mode == mode]))
    e2e_rows: list = []
    if not a.no_e2e:
        from lottery.bench.e2e import bench_e2e
        from lottery.bench.llama import llama7b_dims

        dims = llama7b_dims(a.layers)
        for dname in _csv(a.e2e_dtypes):
            t0 = time.time()
            e2e_rows += bench_e2e(dims, DTYPES[dname], prefill=a.prefill, decode_batches=a.decode_list,
                                  backend=a.e2e_backend)
            log.info("e2e %s (%d layers) done in %.1fs", dname, dims.layers, time.time() - t0)
            report.write_csv(e2e_rows, a.out / "e2e.csv")
        print(report.format_e2e(e2e_rows))
    if layer_rows or e2e_rows:
        report.plot(layer_rows, e2e_rows, a.out / "sparse_speed.png")
    log.info("total %.1fs; results in %s", time.time() - t_start, a.out)
    return 0
