"""IMP training throughput: the framework's engines against a minimal PyTorch loop, and K replicates at once.

    python experiments/imp_speed/bench.py --device cpu --iterations 300 --out experiments/imp_speed/cpu
    python experiments/imp_speed/bench.py --device cuda --out experiments/imp_speed/h200
    python experiments/imp_speed/bench.py --device cpu --models lenet_300_100 --engines auto --skip replicates full \
        --iterations 1000 --repeats 7 --out experiments/imp_speed/cpu_default      # the default path (issue 18)

Per model (LeNet-300-100 on MNIST-shaped data, Conv-6 on CIFAR-shaped data, batch 60, random tensors held on
the device, a 50%-pruned mask) it times one IMP level of `--iterations` steps through `train_level` with
engine=trainer and engine=fabric (and `auto`: the engine the default config resolves to on this device, as
`lottery.imp.auto` picks it; batched K=1 with a CUDA graph on a GPU), and a hand-written loop doing the same work (same model and mask, Adam, grads
masked before and weights re-masked after every step, the same evaluation on val and test at the end). Repeats
are interleaved (the order rotates) and the median is reported; times include each path's setup. Then it times
`train_replicates` with K=1 and K=16 LeNet replicates (eager, and on CUDA with the step replayed as a CUDA
graph), and one full LeNet level of 10 replicates (5 seeds ×
ticket + random re-init) with evaluation every 100 iterations, projected to the 20 levels of the lth_lenet
figures. Results: a printed table, results.csv, RESULTS.md (with the machine) in --out.

Imports only torch, lightning and lottery modules; hydra, omegaconf, wandb and torchvision are never used on these
paths, and where they are not installed the package `__init__`s that name them are bypassed (see `_shim_imports`,
reported in RESULTS.md).
"""

from __future__ import annotations

import argparse
import csv
import importlib.machinery
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
def _missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):  # a broken install counts as missing
        return True


def _shim_imports() -> list[str]:
    """Let the benchmark run where hydra/omegaconf/wandb (or torchvision) are not installed.

    Only package `__init__` files name them: `lottery.tracking` re-exports the run store (omegaconf), while these
    paths need only `lottery.tracking.atomic`; `lottery.data.vision` names torchvision's dataset classes, while
    these paths use in-memory tensors. Nothing that is used is replaced.
    """
    notes = []
    if _missing("omegaconf"):
        import lottery

        package = types.ModuleType("lottery.tracking")
        package.__path__ = [str(ROOT / "lottery" / "tracking")]
        package.__spec__ = importlib.machinery.ModuleSpec("lottery.tracking", None, is_package=True)
        sys.modules["lottery.tracking"] = lottery.tracking = package  # type: ignore[attr-defined]
        notes.append("lottery.tracking loaded without its __init__ (omegaconf not installed; only "
                     "lottery.tracking.atomic is used)")
    if _missing("torchvision"):
        module = types.ModuleType("torchvision")
        module.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
        module.datasets = types.SimpleNamespace(MNIST=None, FashionMNIST=None, CIFAR10=None)  # type: ignore[attr-defined]
        sys.modules["torchvision"] = module
        notes.append("torchvision placeholder (not installed; the data are in-memory random tensors)")
    return notes


SHIMS = _shim_imports()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lottery.data import DataSpec, LoaderSpec, VisionDataModule  # noqa: E402
from lottery.imp.auto import auto_engine  # noqa: E402
from lottery.imp.level import LevelSpec, train_level  # noqa: E402
from lottery.models import create_model, prunable_names  # noqa: E402
from lottery.pruning import Mask, magnitude_prune  # noqa: E402
from lottery.training.replicates import ReplicateData, Replicates, train_replicates  # noqa: E402

SHAPES = {"lenet_300_100": ("mnist", (1, 28, 28)), "conv6": ("cifar10", (3, 32, 32))}
ROWS: list[dict[str, Any]] = []


def say(text: str) -> None:
    print(text, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(shape: tuple[int, ...], n_train: int, n_val: int, n_test: int, device: torch.device,
              seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random normalised images and labels of the data set's shape, resident on `device`."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, *shape, generator=g).to(device), torch.randint(0, 10, (n,), generator=g).to(device)

    return {"train": split(n_train), "val": split(n_val), "test": split(n_test)}


def pruned(model_name: str, shape: tuple[int, ...], seed: int, level: int = 3) -> tuple[dict, Mask]:
    """θ0 of `seed` and a magnitude mask `level` rounds deep (20% per round: ~49% remaining at level 3)."""
    model = create_model(model_name, seed=seed, input_shape=shape, num_classes=10)
    names = prunable_names(model)
    mask = magnitude_prune(dict(model.named_parameters()), Mask.ones(model, names), level,
                           {n: 0.2 for n in names}, 0.2)
    return {k: v.clone() for k, v in model.state_dict().items()}, mask


def level_spec(iterations: int, device: torch.device, engine: str, deterministic: bool) -> LevelSpec:
    return LevelSpec(start_step=0, iterations=iterations, optimizer="adam", lr=1.2e-3, momentum=0.0,
                     weight_decay=0.0, milestones=(), gamma=0.1, eval_every=iterations,
                     checkpoint_every=10 ** 9, accelerator="gpu" if device.type == "cuda" else "cpu",
                     deterministic=deterministic, progress_bar=False, engine=engine)


def run_engine(engine: str, model_name: str, data: dict, init: dict, mask: Mask, iterations: int,
               device: torch.device, deterministic: bool) -> float:
    """Seconds for one level of `iterations` steps through `train_level` (setup and the final evaluation included)."""
    name, shape = SHAPES[model_name]
    model = create_model(model_name, seed=0, input_shape=shape, num_classes=10)
    model.load_state_dict(init)
    dm = VisionDataModule(DataSpec(name, root="/nonexistent", download=False), LoaderSpec(batch_size=60, seed=0))
    dm.tensors = dict(data)
    dm.device = device
    with tempfile.TemporaryDirectory() as tmp:
        sync(device)
        began = time.perf_counter()
        result = train_level(model, mask, dm, level_spec(iterations, device, engine, deterministic),
                             Path(tmp) / "last.ckpt")
        sync(device)
        seconds = time.perf_counter() - began
    assert result.history[-1]["iteration"] == iterations
    return seconds


def run_batched_one(model_name: str, data: dict, init: dict, mask: Mask, iterations: int,
                    device: torch.device) -> float:
    """Seconds for the same level through `train_replicates` with K=1 (a CUDA graph on a GPU): what
    training.engine=batched (the GPU's auto engine) runs, setup and the final evaluation included."""
    name, shape = SHAPES[model_name]
    sync(device)
    began = time.perf_counter()
    spec = replace(level_spec(iterations, device, "batched", True), cuda_graph=device.type == "cuda")
    runs = train_replicates(spec, Replicates(lambda: create_model(model_name, seed=0, input_shape=shape,
                                                                  num_classes=10), [init], [mask], [0]),
                            ReplicateData(data["train"], {"val": data["val"], "test": data["test"]}), device=device)
    sync(device)
    assert runs[0].history[-1]["iteration"] == iterations
    return time.perf_counter() - began


def default_engine(device: torch.device) -> str:
    """The engine `training.engine: auto` resolves to for one process on `device` outside SLURM."""
    return auto_engine("gpu" if device.type == "cuda" else "cpu", 1, "auto", slurm=False)[0]


def run_minimal(model_name: str, data: dict, init: dict, mask: Mask, iterations: int, device: torch.device,
                deterministic: bool) -> float:
    """Seconds for the same level as a hand-written loop: the work a lottery-ticket step needs and nothing else."""
    name, shape = SHAPES[model_name]
    torch.use_deterministic_algorithms(deterministic)  # the setting the engines run under (Trainer sets it too)
    sync(device)
    began = time.perf_counter()
    model = create_model(model_name, seed=0, input_shape=shape, num_classes=10)
    model.load_state_dict(init)
    model.to(device)
    params = dict(model.named_parameters())
    masked = [(params[n], m.to(device, torch.float32)) for n, m in mask.items() if not m.all()]
    with torch.no_grad():
        for p, m in masked:
            p.mul_(m)
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    x, y = data["train"]
    n, batch = len(x), 60
    per_epoch = n // batch
    order = None
    for i in range(iterations):
        if i % per_epoch == 0:
            g = torch.Generator().manual_seed(i // per_epoch)
            order = torch.randperm(n, generator=g).to(device)
        idx = order[(i % per_epoch) * batch:(i % per_epoch + 1) * batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p, m in masked:
            p.grad.mul_(m)
        opt.step()
        with torch.no_grad():
            for p, m in masked:
                p.mul_(m)
    model.eval()
    with torch.no_grad():
        results = []
        for split in ("val", "test"):
            ex, ey = data[split]
            total = torch.zeros(2, device=device)
            for lo in range(0, len(ex), 1000):
                logits = model(ex[lo:lo + 1000])
                total += torch.stack([F.cross_entropy(logits, ey[lo:lo + 1000], reduction="sum"),
                                      (logits.argmax(1) == ey[lo:lo + 1000]).sum().float()])
            results.append(total.tolist())
    sync(device)
    return time.perf_counter() - began


def run_replicates(k: int, data: dict, iterations: int, device: torch.device, eval_every: int,
                   cuda_graph: bool = False) -> float:
    """Seconds for K LeNet replicates (distinct inits, masks and data orders) trained together."""
    shape = SHAPES["lenet_300_100"][1]
    inits, masks = zip(*(pruned("lenet_300_100", shape, seed) for seed in range(k)), strict=True)
    sync(device)
    began = time.perf_counter()
    spec = replace(level_spec(iterations, device, "batched", True), eval_every=eval_every, cuda_graph=cuda_graph)
    runs = train_replicates(spec, Replicates(lambda: create_model("lenet_300_100", seed=0), list(inits),
                                             list(masks), list(range(k))),
                            ReplicateData(data["train"], {"val": data["val"], "test": data["test"]}), device=device)
    sync(device)
    assert len(runs) == k and runs[0].history[-1]["iteration"] == iterations
    return time.perf_counter() - began


def record(**row: Any) -> None:
    ROWS.append(row)
    say("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


def compare_engines(args: argparse.Namespace, device: torch.device, sizes: dict[str, tuple[int, int, int]]) -> None:
    for model_name in args.models:
        try:  # one model failing (e.g. an op without a deterministic kernel) must not lose the others
            compare_model(args, device, model_name, sizes[model_name])
        except Exception as err:
            say(f"  {model_name} FAILED: {type(err).__name__}: {err}")
            record(kind="error", model=model_name, method="engines", error=f"{type(err).__name__}: {err}"[:300])


def compare_model(args: argparse.Namespace, device: torch.device, model_name: str,
                  size: tuple[int, int, int]) -> None:
    """The minimal loop and each engine on one model, interleaved."""
    name, shape = SHAPES[model_name]
    data = make_data(shape, *size, device)
    init, mask = pruned(model_name, shape, seed=0)
    # Conv-6 steps cost ~100× a LeNet step on a CPU: fewer of them keep the CPU run short.
    conv_iters = args.iterations // 2 if device.type == "cuda" else max(args.iterations // 20, 10)
    iters = args.iterations if model_name == "lenet_300_100" else conv_iters
    methods = {"minimal": lambda n: run_minimal(model_name, data, init, mask, n, device, args.deterministic)}
    for engine in args.engines:
        label, concrete = engine, engine
        if engine == "auto":
            concrete = default_engine(device)
            label = f"auto ({concrete})"
        if concrete == "batched":
            methods[label] = lambda n: run_batched_one(model_name, data, init, mask, n, device)
        else:
            methods[label] = (lambda n, e=concrete: run_engine(e, model_name, data, init, mask, n, device,
                                                               args.deterministic))
    say(f"{model_name} ({name}-shaped, batch 60): {iters} iterations, {args.repeats} interleaved repeats")
    for fn in methods.values():  # warm-up: first-call costs (cuDNN autotune, lazy imports) out of the timing
        fn(min(30, iters))
    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}  # this process's CPU seconds: robust to other jobs
    names = list(methods)
    for rep in range(args.repeats):
        for m in names[rep % len(names):] + names[:rep % len(names)]:
            began = time.process_time()
            times[m].append(methods[m](iters))
            cpu[m].append(time.process_time() - began)
        say(f"  repeat {rep + 1}: " + ", ".join(f"{m} {1e3 * times[m][-1] / iters:.3f} ms/it" for m in names))
    base = statistics.median(times["minimal"])
    for m in names:
        med = statistics.median(times[m])
        # Also the median of each repeat's own ratio: a noisy shared machine drifts less within one repeat.
        paired = statistics.median(t / b for t, b in zip(times[m], times["minimal"], strict=True))
        cpu_paired = statistics.median(t / b for t, b in zip(cpu[m], cpu["minimal"], strict=True))
        record(kind="engine", model=model_name, method=m, k=1, iterations=iters, seconds=med,
               ms_per_it=1e3 * med / iters, it_per_s=iters / med, ratio=med / base, paired_ratio=paired,
               cpu_paired_ratio=cpu_paired)


def compare_replicates(args: argparse.Namespace, device: torch.device, sizes: tuple[int, int, int]) -> None:
    """K=1 against K=args.k, eagerly and (on CUDA) with the step replayed as a CUDA graph, interleaved."""
    data = make_data(SHAPES["lenet_300_100"][1], *sizes, device)
    iters = args.iterations
    modes = [False, True] if device.type == "cuda" else [False]
    variants = [(k, graph) for graph in modes for k in (1, args.k)]
    say(f"replicates (LeNet-300-100, batch 60): K=1 vs K={args.k}, {iters} iterations, {args.repeats} repeats")
    for graph in modes:
        run_replicates(2, data, 20, device, eval_every=10 ** 9, cuda_graph=graph)  # warm-up
    times: dict[tuple[int, bool], list[float]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for k, graph in variants[rep % len(variants):] + variants[:rep % len(variants)]:
            times[(k, graph)].append(run_replicates(k, data, iters, device, eval_every=10 ** 9, cuda_graph=graph))
        say(f"  repeat {rep + 1}: " + ", ".join(f"K={k}{' graph' if g else ''} {1e3 * t[-1] / iters:.3f} ms/it"
                                                for (k, g), t in times.items()))
    eager_one = statistics.median(times[(1, False)])
    for (k, graph), t in times.items():
        med = statistics.median(t)
        base = statistics.median(times[(1, graph)])
        record(kind="replicates", model="lenet_300_100", method=f"replicates K={k}" + (" graph" if graph else ""),
               k=k, cuda_graph=graph, iterations=iters, seconds=med, ms_per_it=1e3 * med / iters,
               it_per_s=iters / med, ratio=med / base, ratio_to_eager_k1=med / eager_one)


def full_level(args: argparse.Namespace, device: torch.device, sizes: tuple[int, int, int], budget: float) -> None:
    """One lth_lenet level: 10 replicates × N iterations, val + test evaluation every 100 iterations."""
    data = make_data(SHAPES["lenet_300_100"][1], *sizes, device)
    k, n = 10, args.full_iterations
    graph = device.type == "cuda"
    probe = min(500, n)
    t_probe = run_replicates(k, data, probe, device, eval_every=100, cuda_graph=graph)
    estimate = t_probe / probe * n
    run_n = n if estimate <= budget else max(probe, int(budget / estimate * n) // 100 * 100)
    say(f"full level: 10 replicates × {n} iterations (probe: {t_probe / probe * 1e3:.3f} ms/it, "
        f"estimate {estimate:.0f} s; budget {budget:.0f} s -> running {run_n})")
    seconds = run_replicates(k, data, run_n, device, eval_every=100, cuda_graph=graph) if run_n != probe else t_probe
    level = seconds / run_n * n
    record(kind="full_level", model="lenet_300_100",
           method="replicates K=10, eval every 100" + (", CUDA graph" if graph else ""), k=k, cuda_graph=graph,
           iterations=run_n, seconds=seconds, ms_per_it=1e3 * seconds / run_n, it_per_s=run_n / seconds,
           ratio=float("nan"), level_seconds=level, projected_20_levels_s=20 * level,
           measured_full=run_n == n)


def machine(device: torch.device) -> dict[str, str]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "torch_threads": str(torch.get_num_threads()), "cpu_count": str(os.cpu_count())}
    try:
        import lightning

        info["lightning"] = lightning.__version__
    except Exception:  # reported, not fatal
        info["lightning"] = "?"
    cpu = "?"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info["cpu"] = cpu
    try:
        info["load_average"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except Exception:  # no nvidia-smi: leave it out
            info["driver"] = "?"
    if SHIMS:
        info["import_shims"] = "; ".join(SHIMS)
    return info


def write(out: Path, info: dict[str, str], args: argparse.Namespace, elapsed: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in ROWS for k in row}, key=lambda k: list(ROWS[0]).index(k) if k in ROWS[0] else 99)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(ROWS)
    lines = ["# IMP training throughput", "", f"`python experiments/imp_speed/bench.py {' '.join(sys.argv[1:])}` "
             f"({elapsed:.0f} s)", "", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "## One IMP level (median of interleaved repeats; setup and the final evaluation included)", "",
              "| model | method | iterations | ms / iteration | iterations / s | × minimal loop | × minimal, paired "
              "| × minimal, CPU time, paired |", "|---|---|---|---|---|---|---|---|"]
    for r in ROWS:
        if r["kind"] == "engine":
            lines.append(f"| {r['model']} | {r['method']} | {r['iterations']} | {r['ms_per_it']:.3f} | "
                         f"{r['it_per_s']:.0f} | {r['ratio']:.2f} | {r.get('paired_ratio', r['ratio']):.2f} | "
                         f"{r.get('cpu_paired_ratio', float('nan')):.2f} |")
    for r in ROWS:
        if r["kind"] == "engine" and str(r["method"]).startswith("auto"):
            verdict = "meets" if r["paired_ratio"] <= 1.15 else "misses"
            lines.append(f"\nThe default path ({r['method']}) on {r['model']}: {r['paired_ratio']:.2f}× the minimal "
                         f"loop in wall time, median of paired repeats ({verdict} the target ≤ 1.15×); "
                         f"{r['cpu_paired_ratio']:.2f}× in this process's CPU time.")
    lines += [f"- error in {r['model']} / {r['method']}: {r['error']}" for r in ROWS if r["kind"] == "error"]
    if args.note:
        lines += ["", f"Note: {args.note}"]
    if any(r["kind"] == "replicates" for r in ROWS):
        lines += ["", "## K replicates at once (LeNet-300-100, `train_replicates`)", "",
                  "| K | step | iterations | ms / iteration (all K) | × K=1 (same step) | × eager K=1 |",
                  "|---|---|---|---|---|---|"]
    for r in ROWS:
        if r["kind"] == "replicates":
            step = "CUDA graph" if r.get("cuda_graph") else "eager"
            lines.append(f"| {r['k']} | {step} | {r['iterations']} | {r['ms_per_it']:.3f} | {r['ratio']:.2f} | "
                         f"{r['ratio_to_eager_k1']:.2f} |")
    for r in ROWS:
        if r["kind"] == "full_level":
            lines += ["", "## One full lth_lenet level (10 replicates, eval on val+test every 100 iterations)", "",
                      f"- {r['method']}",
                      f"- measured: {r['iterations']} iterations in {r['seconds']:.1f} s ({r['ms_per_it']:.3f} ms/it)"
                      + ("" if r["measured_full"] else f", extrapolated to {args.full_iterations}"),
                      f"- one level of {args.full_iterations} iterations: {r['level_seconds']:.1f} s "
                      "(target ≤ 90 s on an H200)",
                      f"- projected 20 levels: {r['projected_20_levels_s'] / 60:.1f} min (target ≤ 30 min)"]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--iterations", type=int, default=None, help="steps per timed level (default: 3000 on "
                        "cuda, 300 on cpu; Conv-6 uses 1/2 on cuda, 1/20 on cpu)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=16, help="replicates compared with K=1")
    parser.add_argument("--full-iterations", type=int, default=50000, help="iterations of the full-level run")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-clock budget; the full-level run is "
                        "shortened (and extrapolated) to fit (default: 330 on cuda, 600 on cpu)")
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--engines", nargs="+", default=["trainer", "fabric"], choices=["trainer", "fabric", "auto"])
    parser.add_argument("--skip", nargs="*", default=[], choices=["engines", "replicates", "full"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on cpu: a loaded "
                        "shared machine makes multi-threaded small ops erratic)")
    parser.add_argument("--no-deterministic", dest="deterministic", action="store_false")
    parser.add_argument("--out", type=Path, default=Path("imp_speed_results"))
    parser.add_argument("--note", default="", help="a line for RESULTS.md (e.g. that the machine was shared)")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible")
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 1)
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    args.iterations = args.iterations or (3000 if cuda else 300)
    budget = args.budget_s or (330.0 if cuda else 600.0)
    # Full-size MNIST/CIFAR splits on a GPU; smaller ones on a CPU (data size only changes the per-epoch shuffle).
    sizes = {"lenet_300_100": (55000, 5000, 10000) if cuda else (12000, 1000, 2000),
             "conv6": (45000, 5000, 10000) if cuda else (3000, 1000, 1000)}
    info = machine(device)
    say("machine: " + "; ".join(f"{k}={v}" for k, v in info.items()))
    try:
        if "engines" not in args.skip:
            compare_engines(args, device, sizes)
            write(args.out, info, args, time.perf_counter() - started)
        for part in ("replicates", "full"):
            if part in args.skip:
                continue
            try:
                if part == "replicates":
                    compare_replicates(args, device, sizes["lenet_300_100"])
                else:
                    left = budget - (time.perf_counter() - started)
                    full_level(args, device, (55000, 5000, 10000) if cuda else sizes["lenet_300_100"],
                               max(left, 30.0))
            except Exception as err:
                say(f"  {part} FAILED: {type(err).__name__}: {err}")
                record(kind="error", model="lenet_300_100", method=part, error=f"{type(err).__name__}: {err}"[:300])
            write(args.out, info, args, time.perf_counter() - started)
    finally:
        if ROWS:
            write(args.out, info, args, time.perf_counter() - started)
    say(f"wrote {args.out / 'results.csv'} and {args.out / 'RESULTS.md'} ({time.perf_counter() - started:.0f} s)")
    say((args.out / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
