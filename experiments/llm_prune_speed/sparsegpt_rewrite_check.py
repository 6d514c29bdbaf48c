"""The Algorithm-1 rewrite of sparsegpt.py against the code it replaced, on one device, side by side.

For each layer shape and pattern: masks equal and weights equal bit for bit, with CUDA graphs on and off; and
the median time of both implementations, interleaved in one run (graphs on). The old module is a copy of
lottery/llm/sparsegpt.py at 04ceb66 (``git show 04ceb66:lottery/llm/sparsegpt.py > old_sparsegpt.py``).

    python experiments/llm_prune_speed/sparsegpt_rewrite_check.py --old old_sparsegpt.py --out rewrite.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch

import lottery.llm.sparsegpt as new

# (d_row, d_col, n, m, blocksize, timed)
CASES = [
    (96, 256, 0, 0, 64, False), (96, 256, 2, 4, 64, False), (96, 256, 4, 8, 64, False), (96, 200, 0, 0, 64, False),
    (96, 200, 2, 4, 64, False), (1024, 1024, 0, 0, 128, False), (1024, 1024, 2, 4, 128, False),
    (4096, 4096, 0, 0, 128, True), (4096, 4096, 2, 4, 128, True),
]


def load_old(path: Path):
    spec = importlib.util.spec_from_file_location("old_sparsegpt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layer(d_row: int, d_col: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    W = torch.randn(d_row, d_col, device=device, generator=g)
    X = torch.randn(2 * d_col, d_col, device=device, generator=g)
    return W, 2 * X.t() @ X / X.shape[0]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device: str, fn, *args, **kwargs) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("rewrite.json"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-cols", type=int, default=1 << 30, help="skip larger layers (a CPU dry run)")
    args = parser.parse_args()
    old = load_old(args.old)
    device = args.device
    rows = []
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}")
    print(f"{'W':>12} {'pattern':>12} {'graphs':>6} {'masks equal':>11} {'bits equal':>10} {'old s':>8} {'new s':>8}")
    for d_row, d_col, n, m, blocksize, is_timed in CASES:
        if d_col > args.max_cols:
            continue
        W, H = layer(d_row, d_col, device)
        for graphs in (True, False):
            old.USE_CUDA_GRAPHS = new.USE_CUDA_GRAPHS = graphs
            W_old, mask_old = old.sparsegpt_prune(W, H, 0.5, n, m, blocksize=blocksize)
            W_new, mask_new = new.sparsegpt_prune(W, H, 0.5, n, m, blocksize=blocksize)
            row = dict(d_row=d_row, d_col=d_col, n=n, m=m, blocksize=blocksize, graphs=graphs,
                       masks_equal=bool(torch.equal(mask_old, mask_new)),
                       bits_equal=bool(torch.equal(W_old.view(torch.int32), W_new.view(torch.int32))))
            if is_timed and graphs:
                t_old, t_new = [], []
                for _ in range(args.repeats):  # interleaved, after the calls above captured both graphs
                    t_old.append(timed(device, old.sparsegpt_prune, W, H, 0.5, n, m, blocksize=blocksize))
                    t_new.append(timed(device, new.sparsegpt_prune, W, H, 0.5, n, m, blocksize=blocksize))
                row.update(old_s=statistics.median(t_old), new_s=statistics.median(t_new))
            rows.append(row)
            pattern = f"{n}:{m}" if n else "50%"
            print(f"{d_row:>5}x{d_col:<6} {pattern:>12} {str(graphs):>6} {str(row['masks_equal']):>11} "
                  f"{str(row['bits_equal']):>10} {row.get('old_s', float('nan')):>8.3f} {row.get('new_s', float('nan')):>8.3f}")
    meta = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__)
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    assert all(r["masks_equal"] and r["bits_equal"] for r in rows), "the rewrite changed an output"


if __name__ == "__main__":
    main()
