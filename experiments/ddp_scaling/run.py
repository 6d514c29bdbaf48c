"""1 GPU vs 2 GPUs (Lightning DDP) for the same IMP runs: accuracy, masks and throughput, side by side.

    python experiments/ddp_scaling/run.py --out DIR          # on a machine with two CUDA GPUs

Each case runs `python -m lottery.run` twice (trainer=gpu, then trainer=ddp with 2 devices) with the same seed
and config, then compares the stored metrics and masks. Writes results.json and RESULTS.md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    # The paper's LeNet setting (batch 60): launch-bound on a GPU, so DDP cannot speed it up.
    "lenet_mnist": ["+exp=imp_lenet", "imp.levels=1", "training.iterations=3000", "training.eval_every=500"],
    # A compute-bound step: VGG-16 on CIFAR-shaped data, batch 256.
    "vgg16_synthetic": ["+exp=imp_vgg16", "data=synthetic_cifar", "imp.levels=0", "training.batch_size=256",
                        "training.iterations=300", "training.eval_every=300", "imp.rewind_to=10"],
}


def _run(args: list[str], root: Path) -> tuple[Path, float]:
    began = time.perf_counter()
    cmd = [sys.executable, "-m", "lottery.run", *args, "logger=none", "progress_bar=false", f"store.root={root}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    (run,) = root.glob("imp_*")
    return run, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    from lottery.imp.compare import compare_runs

    results = {"gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
               "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
               "cases": {}}
    rows = []
    for name in args.cases.split(","):
        case = {}
        for label, trainer in [("1gpu", ["trainer=gpu"]), ("2gpu", ["trainer=ddp", "trainer.devices=2"])]:
            run, wall = _run([*CASES[name], *trainer], args.out / "runs" / f"{name}_{label}")
            levels = []
            for level in sorted(run.glob("level_*")):
                m = json.loads((level / "metrics.json").read_text())
                trained = m["iterations"] - m["start_step"]
                levels.append({"level": m["level"], "final_test_acc": m["final_test_acc"],
                               "train_seconds": m["train_seconds"], "it_per_s": trained / m["train_seconds"]})
            case[label] = {"run": str(run), "wall_s": wall, "levels": levels}
            print(name, label, json.dumps(levels), flush=True)
        case["mask_jaccard"] = [r["jaccard"] for r in compare_runs(case["1gpu"]["run"], case["2gpu"]["run"])]
        results["cases"][name] = case
        for one, two in zip(case["1gpu"]["levels"], case["2gpu"]["levels"], strict=True):
            rows.append((name, one["level"], one["final_test_acc"], two["final_test_acc"], one["it_per_s"],
                         two["it_per_s"], two["it_per_s"] / one["it_per_s"]))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["| case | level | test acc 1 GPU | test acc 2 GPUs | it/s 1 GPU | it/s 2 GPUs | throughput ×|",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.2f} |" for r in rows]
    jacc = {n: c["mask_jaccard"] for n, c in results["cases"].items()}
    text = (f"# 1 GPU vs 2 GPUs (DDP)\n\nGPUs: {', '.join(results['gpus'])}; torch {results['torch']}, "
            f"CUDA {results['cuda']}, Python {results['python']}.\n\n" + "\n".join(lines) +
            f"\n\nMask Jaccard overlap, 1 GPU vs 2 GPUs, per level: {jacc}\n")
    (args.out / "RESULTS.md").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
