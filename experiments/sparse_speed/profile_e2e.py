"""Where does the per-layer 2:4 gain go inside the model? GPU kernel times of one prefill, dense vs 2:4.

    python experiments/sparse_speed/profile_e2e.py --layers 4 --out DIR [--variants dense,sparse_fm]

Builds LLaMA-7B-shaped models of `lottery.bench.variants` over the same 2:4-masked weights (default: ``dense``
and ``sparse_copy``, the standard block with `SemiStructuredLinear`; issue 16's Yᵀ-consuming ``sparse_fm``,
``dense_fm``, ``sparse_tok``, ``sparse_tt`` likewise), runs eager prefills of `--tokens` tokens under
`torch.profiler`, and sums the GPU
time of every kernel by name and by kind (dense GEMM, sparse GEMM, attention, copies/transposes, other
elementwise). The same block-0 linears are also profiled alone, so a kernel's in-model duration can be set
beside its isolated one. Eager on purpose: kernel durations do not depend on how they were launched, and the
profiler names every kernel. Writes kernels.csv and PROFILE.md in --out.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from lottery.bench.llama import llama7b_dims  # noqa: E402
from lottery.bench.variants import build_variants  # noqa: E402

KINDS = [("triton glue", ("_transpose", "_add_transposed", "_rope_heads", "_col_sumsq", "_rms_cols", "_silu_mul")),
         ("sparse GEMM", ("sparse", "cusparselt", "sp_gemm")), ("attention", ("flash", "fmha", "attention", "sdpa")),
         ("dense GEMM", ("gemm", "nvjet", "cutlass", "xmma", "cublas")),
         ("copy / transpose", ("copy", "transpose", "cat"))]


def kind(name: str) -> str:
    low = name.lower()
    for label, keys in KINDS:
        if any(k in low for k in keys):
            return label
    return "elementwise / reduce"


def kernel_times(fn, reps: int) -> dict[str, tuple[float, int]]:
    """name -> (GPU microseconds per call of fn, kernel launches per call of fn)."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            out[event.name][0] += event.time_range.elapsed_us() / reps
            out[event.name][1] += 1 / reps
    return {k: (v[0], round(v[1])) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variants", default="dense,sparse_copy", help="two (or more) names from lottery.bench.variants")
    a = p.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    d = llama7b_dims(a.layers)
    names = tuple(v for v in a.variants.split(",") if v)
    models = build_variants(d, dtype, 1, a.tokens + 1, names)
    ids = torch.randint(0, d.vocab, (1, a.tokens), device="cuda")
    rows = []
    totals: dict[str, dict[str, float]] = {}
    for model in names:
        times = kernel_times(lambda m=models[model]: m(ids, 0), a.reps)
        totals[model] = defaultdict(float)
        for name, (us, calls) in times.items():
            totals[model][kind(name)] += us
            rows.append({"where": "model", "model": model, "kind": kind(name), "kernel": name[:160],
                         "us_per_forward": round(us, 2), "calls_per_forward": calls})
    # The same linears alone, on an input of the model's shape.
    x = torch.randn(a.tokens, d.hidden, device="cuda", dtype=dtype)
    xi = torch.randn(a.tokens, d.intermediate, device="cuda", dtype=dtype)
    alone: dict[str, dict[str, float]] = {}
    for name in ("q", "gate", "down"):
        inp = xi if name == "down" else x
        alone[name] = {}
        for model in names:
            layer = models[model].blocks[0].lin[name]
            # Glue models' linears take B = Xᵀ (in, T); the standard ones X (T, in).
            arg = inp.t().contiguous() if hasattr(models[model], "layout") else inp
            times = kernel_times(lambda layer=layer, arg=arg: layer(arg), a.reps * 4)
            alone[name][model] = sum(us for _, (us, _) in times.items())
            for kname, (us, calls) in times.items():
                rows.append({"where": f"alone {name}", "model": model, "kind": kind(kname), "kernel": kname[:160],
                             "us_per_forward": round(us, 2), "calls_per_forward": calls})
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "kernels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["where"], r["model"], -r["us_per_forward"])))
    kinds = sorted({k for t in totals.values() for k in t})
    base, other = names[0], names[1] if len(names) > 1 else names[0]
    lines = [f"# GPU kernel time of one eager prefill ({a.tokens} tokens, batch 1, {a.dtype}, {a.layers} LLaMA-7B "
             f"layers), {torch.cuda.get_device_name()}, torch {torch.__version__}", "",
             "| kind | " + " | ".join(f"{m} µs" for m in names) + f" | {other} − {base} µs |",
             "|" + "---|" * (len(names) + 2)]
    for k in kinds:
        vals = [totals[m].get(k, 0.0) for m in names]
        lines.append(f"| {k} | " + " | ".join(f"{v:.0f}" for v in vals) +
                     f" | {totals[other].get(k, 0.0) - totals[base].get(k, 0.0):+.0f} |")
    sums = {m: sum(totals[m].values()) for m in names}
    lines += ["| **all kernels** | " + " | ".join(f"{sums[m]:.0f}" for m in names) +
              f" | {sums[other] - sums[base]:+.0f} ({sums[base] / sums[other]:.2f}x) |", "",
              "Block-0 linears alone (GPU µs per call, all kernels of the call):", "",
              "| linear | " + " | ".join(names) + f" | {base} / {other} |", "|" + "---|" * (len(names) + 2)]
    for name, t in alone.items():
        lines.append(f"| {name} | " + " | ".join(f"{t[m]:.1f}" for m in names) + f" | {t[base] / t[other]:.2f}x |")
    lines += ["", "Top kernels per model (µs per forward, launches):", ""]
    for model in names:
        top = sorted((r for r in rows if r["where"] == "model" and r["model"] == model),
                     key=lambda r: -r["us_per_forward"])[:12]
        lines += [f"**{model}**", ""] + [f"- {r['us_per_forward']:.0f} µs ×{r['calls_per_forward']} [{r['kind']}] "
                                         f"`{r['kernel'][:110]}`" for r in top] + [""]
    (a.out / "PROFILE.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
