"""`python -m lottery.bench nm_e2e`: issue 16 in one run — 2:4 end to end without the transpose copies.

Stages, in this order, each guarded (a failure is logged and recorded, the next stage runs) and each skipped
once the ``--budget-s`` wall-clock budget is spent (rows then say so):

1. ``kernels``: the Triton glue kernels vs torch's ops (transpose tiles, fused residual add, RoPE into heads,
   RMSNorm over dim 0, SiLU·mul) → kernels.csv; the fastest transpose tile is used from then on.
2. per e2e dtype: ``dispatch`` (dense vs 2:4 for the model's shapes at its token counts, both operand layouts)
   → dispatch.csv, then ``e2e``: every variant of `lottery.bench.variants`, correctness-checked, then timed
   (prefill and decode b=1/16) → e2e.csv.
3. ``layers``: per-layer dense vs 2:4 (Yᵀ, Y via copy or Triton transpose, split-K-searched configs) in fp16/bf16,
   and int8 2:4 vs int8 dense vs fp16 dense → layers.csv (with whatever budget is left).
4. TABLES.md (every table, the targets met or not) and nm_e2e.png; env.json first of all.

Every CSV is rewritten after each unit of work, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path

import torch

__all__ = ["main", "parse_args"]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}
SHAPES_7B = "4096x4096,11008x4096,4096x11008"
log = logging.getLogger("lottery.bench")


def _csv(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from lottery.bench.layers import INT8_NM_VARIANTS, NM_VARIANTS
    from lottery.bench.variants import VARIANTS

    p = argparse.ArgumentParser(prog="python -m lottery.bench nm_e2e", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("experiments/sparse_speed/nm_e2e"), help="output folder")
    p.add_argument("--budget-s", type=float, default=360.0,
                   help="wall-clock budget of the measurements (s); a stage already running finishes its unit")
    p.add_argument("--layers", type=int, default=32, help="decoder layers end to end (LLaMA-7B: 32)")
    p.add_argument("--prefill", type=int, default=2048, help="prefill tokens; decode steps attend to this many")
    p.add_argument("--decode-batches", default="1,16")
    p.add_argument("--e2e-dtypes", default="fp16,bf16")
    p.add_argument("--variants", default=",".join(VARIANTS), help="end-to-end variants (lottery.bench.variants)")
    p.add_argument("--no-dispatch", action="store_true", help="glue models always run 2:4 (no dense fallback)")
    p.add_argument("--layer-shapes", default=SHAPES_7B, help="OUTxIN,... for the per-layer table")
    p.add_argument("--layer-tokens", default="1,16,128,2048,8192")
    p.add_argument("--layer-dtypes", default="fp16,bf16,int8")
    p.add_argument("--layer-variants", default=",".join(NM_VARIANTS), help="fp16/bf16 per-layer variants")
    p.add_argument("--int8-variants", default=",".join(INT8_NM_VARIANTS))
    p.add_argument("--target-s", type=float, default=0.3, help="seconds of timed replays per e2e variant and phase")
    p.add_argument("--layer-target-s", type=float, default=0.08, help="the same per layer point")
    p.add_argument("--skip", default="", help="stages to skip: kernels,dispatch,e2e,layers")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 layers, one dtype, few points (~1 min)")
    a = p.parse_args(argv)
    if a.quick:
        a.layers, a.e2e_dtypes, a.layer_dtypes, a.layer_tokens = 2, "fp16", "fp16,int8", "16,2048"
        a.layer_shapes, a.decode_batches, a.target_s = "11008x4096", "1", 0.1
    try:
        a.decode_list = tuple(int(b) for b in _csv(a.decode_batches))
        a.token_list = [int(t) for t in _csv(a.layer_tokens)]
        a.shape_list = [tuple(int(v) for v in s.lower().split("x")) for s in _csv(a.layer_shapes)]
        if any(len(s) != 2 for s in a.shape_list) or a.layers < 1 or a.prefill < 1:
            raise ValueError
    except ValueError:
        p.error("--layer-shapes takes OUTxIN,...; --layer-tokens/--decode-batches integers; --layers/--prefill >= 1")
    for name in ("e2e_dtypes", "layer_dtypes"):
        allowed = DTYPES if name == "layer_dtypes" else {k: v for k, v in DTYPES.items() if k != "int8"}
        bad = [d for d in _csv(getattr(a, name)) if d not in allowed]
        if bad:
            p.error(f"--{name.replace('_', '-')}: unknown {bad}; allowed: {sorted(allowed)}")
    bad = [v for v in _csv(a.variants) if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad}; allowed: {list(VARIANTS)}")
    bad = [s for s in _csv(a.skip) if s not in ("kernels", "dispatch", "e2e", "layers")]
    if bad:
        p.error(f"--skip: unknown stages {bad}")
    return a


class _Run:
    """Budget, stage log and incremental outputs of one run."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.t0, self.budget = out, time.time(), budget_s
        self.stages: list[str] = []

    @property
    def deadline(self) -> float:
        return self.t0 + self.budget

    def left(self) -> float:
        return self.deadline - time.time()

    def stage(self, name: str, fn) -> object:
        """Run fn() unless the budget is spent; log and record how it went."""
        if self.left() <= 0:
            self.stages.append(f"{name}: skipped (time budget)")
            log.warning("stage %s skipped: time budget spent", name)
            return None
        t = time.time()
        log.info("stage %s: start (%.0fs of budget left)", name, self.left())
        try:
            res = fn()
            self.stages.append(f"{name}: done in {time.time() - t:.0f}s")
            return res
        except Exception as e:  # noqa: BLE001 - one broken stage must not lose the others
            self.stages.append(f"{name}: FAILED after {time.time() - t:.0f}s ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:160] if str(e) else ''})")
            log.error("stage %s failed:\n%s", name, traceback.format_exc())
            try:
                torch.cuda.synchronize()
            except Exception:  # noqa: BLE001 - a sticky CUDA error: later stages will fail and say so
                pass
            return None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (2 when no CUDA GPU can run it)."""
    a = parse_args(argv)
    from lottery.export.semi import SemiStructuredUnavailable, require_semi_structured_gpu

    try:
        require_semi_structured_gpu()
    except SemiStructuredUnavailable as e:
        print(f"nm_e2e: {e}", file=sys.stderr)
        return 2
    from lottery.bench import report, report_nm
    from lottery.bench.env import environment
    from lottery.bench.llama import llama7b_dims
    from lottery.bench.variants import block_shapes
    from lottery.export import fused, triton_kernels

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    a.out.mkdir(parents=True, exist_ok=True)
    run = _Run(a.out, a.budget_s)
    env = environment()
    env["triton"] = getattr(triton_kernels.triton, "__version__", "absent")
    (a.out / "env.json").write_text(json.dumps(env, indent=1) + "\n")
    log.info("environment: %s", env)
    command = "python -m lottery.bench nm_e2e " + " ".join(sys.argv[1:] if argv is None else argv)
    skip = set(_csv(a.skip))
    kernels: list = []
    dispatch_rows: list = []
    e2e_rows: list = []
    layer_rows: list = []

    if "kernels" not in skip:
        def do_kernels() -> None:
            from lottery.bench.kernels import bench_kernels, best_tile

            kernels.extend(bench_kernels(tuple(DTYPES[d] for d in _csv(a.e2e_dtypes))))
            report.write_csv(kernels, a.out / "kernels.csv")
            tile = best_tile(kernels)
            if tile:
                fused.TRANSPOSE_TILE, fused.TRANSPOSE_WARPS = tile[:2], tile[2]
                log.info("transpose tile from now on: %s (%d warps measured)", tile[:2], tile[2])

        run.stage("kernels", do_kernels)

    dims = llama7b_dims(a.layers)
    shapes = list(dict.fromkeys(block_shapes(dims).values()))
    pad = 8  # GlueLlama pads its token columns to a multiple of 8 (decode b=1 runs 8): those are the counts used
    model_tokens = sorted({-(-x // pad) * pad for x in (a.prefill, *a.decode_list)})
    for dname in _csv(a.e2e_dtypes):
        dt = DTYPES[dname]
        table = None
        if "dispatch" not in skip and not a.no_dispatch:
            def do_dispatch(dt=dt) -> object:
                from lottery.bench.dispatch import measure_dispatch

                # Dispatch gets at most a fifth of what is left, so the models still run.
                tbl, rows = measure_dispatch(shapes, dt, model_tokens, deadline=time.time() + run.left() / 5)
                dispatch_rows.extend(rows)
                report.write_csv(dispatch_rows, a.out / "dispatch.csv")
                return tbl

            table = run.stage(f"dispatch {dname}", do_dispatch)
        if "e2e" not in skip:
            def do_e2e(dt=dt, table=table, dname=dname) -> None:
                from lottery.bench.e2e_nm import bench_e2e_variants

                # Leave the bf16 run its share: each dtype's phases stop at its slice of the budget.
                n_left = len(_csv(a.e2e_dtypes)) - _csv(a.e2e_dtypes).index(dname)
                rows, _ = bench_e2e_variants(dims, dt, tuple(_csv(a.variants)), a.prefill, a.decode_list,
                                             dispatch=table, target_s=a.target_s,
                                             deadline=time.time() + run.left() / n_left * 0.9)
                e2e_rows.extend(rows)
                report.write_csv(e2e_rows, a.out / "e2e.csv")
                print(report_nm.e2e_table([r for r in rows if r.dtype == str(dt).removeprefix("torch.")]),
                      flush=True)

            run.stage(f"e2e {dname}", do_e2e)
            torch.cuda.empty_cache()

    if "layers" not in skip:
        def do_layers() -> None:
            from lottery.bench.layers import bench_layer

            for dname in _csv(a.layer_dtypes):
                dt = DTYPES[dname]
                vs = tuple(_csv(a.int8_variants if dt == torch.int8 else a.layer_variants))
                for n, k in a.shape_list:
                    if run.left() <= 0:
                        log.warning("layers: time budget spent before %s %dx%d", dname, n, k)
                        run.stages.append(f"layers {dname} {n}x{k}: skipped (time budget)")
                        continue
                    t = time.time()
                    layer_rows.extend(bench_layer(n, k, a.token_list, dt, vs, mode="graph",
                                                  target_s=a.layer_target_s))
                    report.write_csv(layer_rows, a.out / "layers.csv")
                    log.info("layers %s %dx%d done in %.1fs", dname, n, k, time.time() - t)

        run.stage("layers", do_layers)

    tables = report_nm.format_nm(env, command, kernels, dispatch_rows, e2e_rows, layer_rows, run.stages)
    (a.out / "TABLES.md").write_text(tables)
    try:
        if layer_rows or e2e_rows:
            report_nm.plot_nm(layer_rows, e2e_rows, a.out / "nm_e2e.png")
    except Exception:  # noqa: BLE001 - a plotting error must not hide the tables
        log.error("plot failed:\n%s", traceback.format_exc())
    print(tables, flush=True)
    spent = time.time() - run.t0
    log.info("total %.0fs (budget %.0fs); results in %s", spent, a.budget_s, a.out)
    return 0 if not any("FAILED" in s for s in run.stages) else 1


if __name__ == "__main__":
    sys.exit(main())
