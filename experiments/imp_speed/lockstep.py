"""The lockstep (batched-engine) training step on one GPU: how its variants compare, and where its time goes.

    python experiments/imp_speed/lockstep.py --out experiments/imp_speed/h200_lockstep
    python experiments/imp_speed/lockstep.py --resnet --out ...     # also ResNet-20 / VGG-16 at batch 128

LeNet-300-100 on MNIST-shaped random data held on the GPU (55,000 / 5,000 / 10,000 images), batch 60, Adam
1.2e-3, ~49%-pruned masks, K = 1 and K = 10 replicates (10 = one lth_lenet level: 5 seeds × ticket and
re-init), evaluation on val and test every 100 iterations as the job does. Step variants, all replayed as a
CUDA graph through `train_replicates`:

- `foreach`: the step before issue 18 (torch's foreach Adam, the eager forward/backward);
- `fused`: torch's fused Adam (one kernel for the whole update);
- `fused+compiled`: fused Adam and the forward/loss through `torch.compile` (the default since issue 18).

Repeats are interleaved and the median is reported; each variant is warmed up first (compilation, cuBLAS
handles), so the times are steady-state. `steps only` rows time the same step without evaluation: the
CUDA-graph replay the default main command is compared against. `--profile` adds a kernel table
(torch.profiler) of 300 iterations of K = 10 for `foreach` and the default. Writes results.csv, RESULTS.md,
profile_*.txt to --out.

`--resnet`: ResNet-20 and VGG-16 on CIFAR-shaped data, batch 128, SGD (momentum 0.9, weight decay 1e-4), with
the job's crop-and-flip augmentation, K = 1 and 5: today's settings (deterministic algorithms, no TF32, the
foreach step) against the compiled step, with cuDNN benchmark mode and TF32, and in bf16-mixed.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from experiments.imp_speed.bench import make_data, pruned  # noqa: E402
from lottery.models import create_model  # noqa: E402
from lottery.pruning import Mask  # noqa: E402
from lottery.training.replicates import (  # noqa: E402
    CropFlip,
    ReplicateData,
    Replicates,
    StepOptions,
    train_replicates,
)
from lottery.training.spec import LevelSpec  # noqa: E402

VARIANTS: dict[str, dict[str, bool]] = {
    "foreach": {"fused_optimizer": False, "compile_loss": False},
    "fused": {"fused_optimizer": True, "compile_loss": False},
    "fused+compiled": {"fused_optimizer": True, "compile_loss": True},
}
ROWS: list[dict[str, Any]] = []


def level_spec(iterations: int, *, batch_size: int, optimizer: str, lr: float, eval_every: int,
               momentum: float = 0.0, weight_decay: float = 0.0, precision: str = "32-true") -> LevelSpec:
    """A level from iteration 0 without milestones or checkpoints, its step replayed as a CUDA graph."""
    return LevelSpec(start_step=0, iterations=iterations, optimizer=optimizer, lr=lr, momentum=momentum,
                     weight_decay=weight_decay, milestones=(), gamma=0.1, eval_every=eval_every,
                     checkpoint_every=1000, precision=precision, batch_size=batch_size, cuda_graph=True)


def say(text: str) -> None:
    print(text, flush=True)


def record(**row: Any) -> None:
    ROWS.append(row)
    say("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


def replicate_inputs(model_name: str, shape: tuple[int, ...], k: int) -> tuple[list[dict], list[Mask]]:
    """K seeds' θ0 and ~49%-pruned masks, as bench.py builds one."""
    inits, masks = zip(*(pruned(model_name, shape, seed) for seed in range(k)), strict=True)
    return list(inits), list(masks)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> float:
    sync()
    began = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - began


def lenet(args: argparse.Namespace, device: torch.device) -> None:
    shape = (1, 28, 28)
    data = make_data(shape, *args.lenet_sizes, device)
    evals = {"val": data["val"], "test": data["test"]}
    for k in (1, 10):
        inits, masks = replicate_inputs("lenet_300_100", shape, k)

        def run(variant: str, iterations: int, eval_every: int = 100, inits=inits, masks=masks, k=k) -> list:
            spec = level_spec(iterations, batch_size=60, optimizer="adam", lr=1.2e-3, eval_every=eval_every)
            return train_replicates(spec, Replicates(lambda: create_model("lenet_300_100", seed=0), inits, masks,
                                                     list(range(k))),
                                    ReplicateData(data["train"], evals), device=device,
                                    options=StepOptions(**VARIANTS[variant]))

        for variant in VARIANTS:  # warm-up: compilation and first-call costs out of the timing
            say(f"K={k} {variant}: warm-up {timed(lambda v=variant: run(v, 200)):.1f} s")
        modes = [("eval every 100", 100), ("steps only", 10 ** 9)]
        times: dict[tuple[str, str], list[float]] = {(v, m): [] for v in VARIANTS for m, _ in modes}
        keys = list(times)
        for rep in range(args.repeats):
            for key in keys[rep % len(keys):] + keys[:rep % len(keys)]:
                every = dict(modes)[key[1]]
                times[key].append(timed(lambda v=key[0], e=every: run(v, args.iterations, e)))
            say(f"  K={k} repeat {rep + 1}: " + ", ".join(f"{v} [{m}] {1e3 * t[-1] / args.iterations:.3f}"
                                                          for (v, m), t in times.items()))
        base = {m: statistics.median(times[("foreach", m)]) for m, _ in modes}
        for (variant, mode), t in times.items():
            med = statistics.median(t)
            record(kind="lenet", model="lenet_300_100", k=k, variant=variant, mode=mode,
                   iterations=args.iterations, seconds=med, ms_per_it=1e3 * med / args.iterations,
                   ms_per_replicate_it=1e3 * med / args.iterations / k, x_foreach=med / base[mode])
        if args.profile and k == 10:
            for variant in ("foreach", "fused+compiled"):
                profile(args.out / f"profile_lenet_k10_{variant.replace('+', '_')}.txt", lambda v=variant: run(v, 300), 300)


def profile(path: Path, fn: Callable[[], Any], iterations: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events)
    launches = sum(e.count for e in events)
    lines = [f"# {path.stem}: {iterations} iterations (evaluation every 100 included)",
             f"# GPU kernel time {total / 1e3:.1f} ms = {total / iterations:.1f} us per iteration; "
             f"{launches} kernels = {launches / iterations:.1f} per iteration", ""]
    lines.append(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=90))
    path.write_text("\n".join(lines))
    say(f"  profile: {path.name}: {total / iterations:.1f} us of kernels and {launches / iterations:.1f} kernels "
        "per iteration")


def resnet(args: argparse.Namespace, device: torch.device) -> None:
    shape = (3, 32, 32)
    data = make_data(shape, *args.cifar_sizes, device)
    evals = {"test": data["test"]}
    fill = torch.zeros(3)
    settings = [  # (label, variant, deterministic, tf32, precision)
        ("today: deterministic, fp32, foreach", "foreach", True, False, "32-true"),
        ("deterministic, fp32, compiled", "fused+compiled", True, False, "32-true"),
        ("benchmark, tf32, compiled", "fused+compiled", False, True, "32-true"),
        ("benchmark, bf16-mixed, compiled", "fused+compiled", False, True, "bf16-mixed"),
    ]
    deadline = time.monotonic() + args.resnet_budget_s
    for model_name in ("resnet20", "vgg16"):
        for k in (1, 5):
            inits, masks = replicate_inputs(model_name, shape, k)
            for label, variant, deterministic, tf32, precision in settings:
                if time.monotonic() > deadline:
                    say(f"{model_name} K={k} {label}: SKIPPED (budget)")
                    record(kind="cifar", model=model_name, k=k, variant=label, error="skipped: budget")
                    continue
                torch.use_deterministic_algorithms(deterministic, warn_only=True)
                torch.backends.cudnn.deterministic = deterministic
                torch.backends.cudnn.benchmark = not deterministic
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32

                def run(iterations: int, inits=inits, masks=masks, k=k, variant=variant, precision=precision,
                        model_name=model_name) -> list:
                    spec = level_spec(iterations, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
                                      weight_decay=1e-4, eval_every=10 ** 9, precision=precision)
                    return train_replicates(
                        spec, Replicates(lambda: create_model(model_name, seed=0, input_shape=shape, num_classes=10),
                                         inits, masks, list(range(k))),
                        ReplicateData(data["train"], evals, eval_batch_size=1000), device=device,
                        augment=CropFlip(4, fill), options=StepOptions(**VARIANTS[variant]))

                try:
                    warm = timed(lambda run=run: run(30))
                    seconds = statistics.median(timed(lambda run=run: run(args.cifar_iterations))
                                                for _ in range(2))
                    per = 1e3 * seconds / args.cifar_iterations
                    record(kind="cifar", model=model_name, k=k, variant=label, iterations=args.cifar_iterations,
                           seconds=seconds, ms_per_it=per, ms_per_replicate_it=per / k, warmup_s=warm)
                except Exception as err:  # one setting failing must not lose the others
                    say(f"{model_name} K={k} {label}: FAILED {type(err).__name__}: {err}")
                    record(kind="cifar", model=model_name, k=k, variant=label,
                           error=f"{type(err).__name__}: {err}"[:300])
    torch.use_deterministic_algorithms(False)


def machine() -> dict[str, str]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": str(torch.version.cuda),
            "gpu": gpu, "platform": platform.platform(), "cpu_count": str(os.cpu_count())}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "not installed"
    return info


def write(out: Path, argv: list[str], seconds: float) -> None:
    keys = sorted({k for row in ROWS for k in row})
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(ROWS)
    lines = ["# The lockstep training step (batched engine) on one GPU", "",
             f"`python experiments/imp_speed/lockstep.py {' '.join(argv)}` ({seconds:.0f} s)", "", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine().items()]
    lenet_rows = [r for r in ROWS if r["kind"] == "lenet"]
    if lenet_rows:
        lines += ["", "## LeNet-300-100, batch 60, CUDA graph (median of interleaved repeats)", "",
                  "| K | step | mode | ms / iteration (all K) | ms / replicate-iteration | × foreach |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['k']} | {r['variant']} | {r['mode']} | {r['ms_per_it']:.4f} | "
                  f"{r['ms_per_replicate_it']:.4f} | {r['x_foreach']:.2f} |" for r in lenet_rows]
    cifar = [r for r in ROWS if r["kind"] == "cifar"]
    if cifar:
        lines += ["", "## CIFAR-shaped, batch 128, SGD, crop+flip, CUDA graph, steps only", "",
                  "| model | K | setting | ms / iteration (all K) | ms / replicate-iteration | warm-up s |",
                  "|---|---|---|---|---|---|"]
        for r in cifar:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['k']} | {r['variant']} | {r['error']} | | |")
            else:
                lines.append(f"| {r['model']} | {r['k']} | {r['variant']} | {r['ms_per_it']:.3f} | "
                             f"{r['ms_per_replicate_it']:.3f} | {r['warmup_s']:.1f} |")
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-lenet", action="store_true")
    parser.add_argument("--resnet", action="store_true")
    parser.add_argument("--cifar-iterations", type=int, default=300)
    parser.add_argument("--resnet-budget-s", type=float, default=240)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of this script (no CUDA graph)")
    args = parser.parse_args()
    small = args.device == "cpu"
    args.lenet_sizes = (600, 100, 100) if small else (55000, 5000, 10000)
    args.cifar_sizes = (256, 50, 50) if small else (50000, 5000, 10000)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (the lockstep step's CUDA graph); --device cpu for a smoke run")
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    began = time.perf_counter()
    try:
        if not args.no_lenet:
            lenet(args, device)
        if args.resnet:
            resnet(args, device)
    finally:
        write(args.out, sys.argv[1:], time.perf_counter() - began)
        say((args.out / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
