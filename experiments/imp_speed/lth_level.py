"""One full level of the lth_lenet figure set through the real IMP job, timed, and projected to 20 levels.

    python experiments/imp_speed/lth_level.py --data-root DIR --out experiments/imp_speed/h200_job

It runs, in this process, what
    python -m lottery.run +exp=imp_lenet +branch=random_reinit training.engine=batched seeds=[0,1,2,3,4] \\
        imp.levels=1 trainer=gpu logger=none
runs: real MNIST (DIR/MNIST/raw), 50,000 iterations per level, evaluation on val + test every 100 iterations.
Level 0 trains the 5 dense tickets together; level 1 the 5 pruned tickets and their 5 random re-inits, the 10
replicates every one of the 19 pruned levels trains. Reported: each level's training time (the group's
`train_seconds` in metrics.json), the job's wall time with everything else (data loading, pruning, files), and
the projection level 0 + 19 × (level 1 + its share of the rest). Writes RESULTS.md and results.json in --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from lottery.imp.job import run, seed_configs  # noqa: E402
from lottery.run import register_configs  # noqa: E402
from lottery.tracking import RunStore, load_json  # noqa: E402

TARGET_LEVEL_S, TARGET_TOTAL_MIN = 90.0, 30.0


def machine() -> dict[str, str]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:  # no nvidia-smi: leave it out
            pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=50000)
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    register_configs()
    with tempfile.TemporaryDirectory() as store:
        overrides = ["+exp=imp_lenet", "+branch=random_reinit", "training.engine=batched",
                     f"seeds=[{','.join(str(s) for s in range(args.seeds))}]", "imp.levels=1",
                     f"training.iterations={args.iterations}", f"trainer.accelerator={args.accelerator}",
                     "logger=none", "progress_bar=false", f"data.root={args.data_root}", "data.download=false",
                     f"store.root={store}", *args.extra]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        began = time.perf_counter()
        rows = run(cfg)
        wall = time.perf_counter() - began
        folders = [RunStore(store, one, prefix="imp").path for one in seed_configs(cfg)]
        level = {lv: load_json(folders[0] / f"level_{lv:02d}" / "metrics.json") for lv in (0, 1)}
        accuracy = {
            "level 0 ticket": [load_json(f / "level_00" / "metrics.json")["early_stop_test_acc"] for f in folders],
            "level 1 ticket": [load_json(f / "level_01" / "metrics.json")["early_stop_test_acc"] for f in folders],
            "level 1 random re-init": [load_json(next((f / "level_01").glob("branch_*/metrics.json")))
                                       ["early_stop_test_acc"] for f in folders],
        }
    t0, t1 = level[0]["train_seconds"], level[1]["train_seconds"]
    rest = (wall - t0 - t1) / 2  # data loading, pruning, files: charged to each of the two levels
    projected = t0 + rest + 19 * (t1 + rest)
    result = {
        "command": "python -m lottery.run " + " ".join(overrides[:-1]), "machine": machine(),
        "wall_seconds": wall, "level0_train_seconds": t0, "level0_replicates": level[0]["replicates"],
        "level1_train_seconds": t1, "level1_replicates": level[1]["replicates"],
        "level1_seconds_with_overhead": t1 + rest, "projected_20_levels_seconds": projected,
        "iterations": args.iterations, "rows": len(rows),
        "early_stop_test_acc_mean": {k: statistics.mean(v) for k, v in accuracy.items()},
        "percent_remaining_level1": level[1]["percent_remaining"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# One full lth_lenet level through the IMP job (training.engine=batched)", "",
        f"`{result['command']}`", "",
        "## Machine", "", *[f"- {k}: {v}" for k, v in result["machine"].items()], "",
        "## Time", "",
        "| | replicates | iterations | training s | ms / iteration (all replicates) |", "|---|---|---|---|---|",
        f"| level 0 (dense tickets) | {level[0]['replicates']} | {args.iterations} | {t0:.1f} | "
        f"{1e3 * t0 / args.iterations:.3f} |",
        f"| level 1 (tickets + random re-inits) | {level[1]['replicates']} | {args.iterations} | {t1:.1f} | "
        f"{1e3 * t1 / args.iterations:.3f} |", "",
        f"- job wall time (2 levels, all {level[0]['replicates'] + level[1]['replicates']} trainings, data "
        f"loading, pruning, files): {wall:.1f} s",
        f"- one pruned level of all {level[1]['replicates']} replicates, with its share of the rest: "
        f"{t1 + rest:.1f} s (target ≤ {TARGET_LEVEL_S:.0f} s)",
        f"- projected 20 levels (level 0 + 19 pruned levels): {projected / 60:.1f} min "
        f"(target ≤ {TARGET_TOTAL_MIN:.0f} min)", "",
        "## Sanity: mean test accuracy at early stop over the seeds", "",
        *[f"- {k}: {statistics.mean(v):.4f} ({', '.join(f'{x:.4f}' for x in v)})" for k, v in accuracy.items()],
        f"- level 1 keeps {level[1]['percent_remaining']:.2f}% of the weights",
    ]
    (args.out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
