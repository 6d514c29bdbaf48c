"""Wall time and peak GPU memory of one-shot pruning of a LLaMA-7B-shaped model (random bf16 weights).

    PYTHONPATH=. python3 experiments/llm_prune_speed/bench.py --blocks 8 --out results.json

Imports only the `lottery.llm` library (the GPU machine has no hydra/omegaconf/wandb). Three parts:
1. per-linear SparseGPT: the reference algorithm (a verbatim copy of the IST-DASLab column loop, eager, with
   its per-column host sync) against `lottery.llm.sparsegpt_prune` (same kernels replayed from a CUDA graph):
   time and agreement of weights and masks;
2. the sequential driver `prune_model` on a LlamaForCausalLM with 7B dimensions (hidden 4096, intermediate
   11008, 32 heads, vocab 32000) and `--blocks` decoder blocks, for each method, calibrated on
   `--nsamples` x `--seqlen` *random* token ids (fine for timing; the masks mean nothing);
   the time is split into solves (the per-layer pruning calls, synchronised) and the rest (calibration
   forwards through each block, statistics, moves);
3. a summary line per method, extrapolated to 32 blocks when `--blocks` < 32.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch
import transformers

import lottery.llm.sequential as sequential
from lottery.llm import prune_model, sparsegpt_prune
from lottery.llm._common import lowest_k_pruned
from lottery.llm.sparsegpt import inverse_hessian_cholesky


def reference_sparsegpt(W: torch.Tensor, H: torch.Tensor, sparsity: float, blocksize: int = 128,
                        percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """IST-DASLab/sparsegpt's `fasterprune` (unstructured) column loop, as published: the baseline for time.

    One change, so that results can be compared: the published selection `tmp <= sorted(tmp)[k]` prunes k + 1
    weights per block; here exactly k are pruned, as `lottery.llm` does.
    """
    W = W.clone().float()
    H = H.clone()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = inverse_hessian_cholesky(H, percdamp)
    mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
        mask1 = lowest_k_pruned(tmp.flatten(), int(tmp.numel() * sparsity)).reshape(tmp.shape)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W, ~mask


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, *args, **kwargs):
    sync()
    began = time.perf_counter()
    out = fn(*args, **kwargs)
    sync()
    return out, time.perf_counter() - began


def environment() -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
           "python": platform.python_version()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            env["driver"] = "unknown"
    return env


def layer_bench(device: torch.device, shapes: list[tuple[int, int]], tokens: int) -> list[dict]:
    """SparseGPT on single linears: reference vs library, 50% unstructured and 2:4 (library only)."""
    rows_out = []
    for d_out, d_in in shapes:
        g = torch.Generator(device=device).manual_seed(d_out * 7 + d_in)
        W = (torch.randn(d_out, d_in, device=device, generator=g) * 0.02).to(torch.bfloat16)
        X = torch.randn(tokens, d_in, device=device, generator=g)
        H = 2 * X.t() @ X / tokens
        sparsegpt_prune(W, H, 0.5)  # warm-up, and the graph capture for this shape
        (W_ref, mask_ref), t_ref = timed(reference_sparsegpt, W, H, 0.5)
        (W_new, mask_new), t_new = timed(sparsegpt_prune, W, H, 0.5)
        _, t_24 = timed(sparsegpt_prune, W, H, 0.5, 2, 4)
        _, t_24 = timed(sparsegpt_prune, W, H, 0.5, 2, 4)  # the first call captured the 2:4 graph
        rel = float((W_new.float() - W_ref.to(torch.bfloat16).float()).norm() / W_ref.norm())
        row = {"d_out": d_out, "d_in": d_in, "reference_s": t_ref, "library_s": t_new, "library_2of4_s": t_24,
               "mask_agreement": float((mask_new == mask_ref).float().mean()), "weight_rel_diff": rel}
        print(f"linear {d_out}x{d_in}: reference {t_ref:.3f} s, library {t_new:.3f} s (2:4 {t_24:.3f} s), "
              f"masks agree {100 * row['mask_agreement']:.4f}%, ||W - W_ref|| / ||W_ref|| = {rel:.2e}", flush=True)
        rows_out.append(row)
    return rows_out


@torch.no_grad()
def build_llama(blocks: int, hidden: int, intermediate: int, heads: int, vocab: int, seed: int,
                device: torch.device) -> transformers.LlamaForCausalLM:
    """A LlamaForCausalLM on the CPU with bf16 random weights drawn on `device` (fast) and copied over."""
    config = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=blocks,
                                      num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab,
                                      max_position_embeddings=4096, tie_word_embeddings=False)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model = model.to_empty(device="cpu")
    reinit(model, seed, device)
    # to_empty left the rotary buffers uninitialised: build that module again, for real.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    return model.eval()


@torch.no_grad()
def reinit(model: torch.nn.Module, seed: int, device: torch.device) -> None:
    """Weights N(0, 0.02^2), norms 1: the same values for the same seed."""
    g = torch.Generator(device=device).manual_seed(seed)
    for p in model.parameters():
        if p.dim() == 1:
            p.fill_(1.0)
        else:
            p.copy_((torch.randn(p.shape, device=device, generator=g, dtype=torch.float32) * 0.02).to(p.dtype))


def model_bench(model, method: str, pattern: str, calib_ids: torch.Tensor, device: torch.device) -> dict:
    """One prune_model run: total, solve and rest times, peak GPU memory."""
    n, m = (0, 0) if pattern == "unstructured" else map(int, pattern.split(":"))
    solve = {"seconds": 0.0, "calls": 0}
    original = sequential._prune_layer

    def timed_layer(*args, **kwargs):
        out, seconds = timed(original, *args, **kwargs)
        solve["seconds"] += seconds
        solve["calls"] += 1
        return out

    sequential._prune_layer = timed_layer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        report, total = timed(prune_model, model, method, 0.5, calib_ids, n=n, m=m, device=device,
                              record_error=False, progress=False)
    finally:
        sequential._prune_layer = original
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return {"method": method, "pattern": pattern, "total_s": total, "solve_s": solve["seconds"],
            "rest_s": total - solve["seconds"], "layers": solve["calls"], "peak_gib": peak,
            "total_sparsity": report.total_sparsity}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--methods", default="wanda,magnitude,sparsegpt")
    parser.add_argument("--patterns", default="unstructured")
    parser.add_argument("--skip-layers", action="store_true", help="skip the per-linear comparison")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict = {"env": environment(), "args": vars(args)}
    print(json.dumps(results["env"]), flush=True)
    if not args.skip_layers:
        h, i = args.hidden, args.intermediate
        results["linears"] = layer_bench(device, [(h, h), (i, h), (h, i)], tokens=4096)
    (model, build_s) = timed(build_llama, args.blocks, args.hidden, args.intermediate, args.heads, args.vocab, 0,
                             device)
    print(f"built {args.blocks}-block model in {build_s:.1f} s", flush=True)
    calib_ids = torch.randint(0, args.vocab, (args.nsamples, args.seqlen),
                              generator=torch.Generator().manual_seed(0))
    scale = 32 / args.blocks
    results["runs"] = []
    for pattern in args.patterns.split(","):
        for method in args.methods.split(","):
            reinit(model, 0, device)
            row = model_bench(model, method, pattern, calib_ids, device)
            row.update(blocks=args.blocks, total_32_s=row["total_s"] * scale, solve_32_s=row["solve_s"] * scale)
            results["runs"].append(row)
            print(f"{method:>9} {pattern:>12}: total {row['total_s']:.1f} s = solves {row['solve_s']:.1f} s + "
                  f"rest {row['rest_s']:.1f} s over {args.blocks} blocks; peak {row['peak_gib']:.2f} GiB; "
                  f"sparsity {row['total_sparsity']:.4f}", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\n{'method':>9} {'pattern':>12} {'blocks':>6} {'solves s':>9} {'rest s':>8} {'total s':>8} "
          f"{'x32: solves':>11} {'x32: total':>10} {'peak GiB':>8}")
    for r in results["runs"]:
        print(f"{r['method']:>9} {r['pattern']:>12} {r['blocks']:>6} {r['solve_s']:>9.1f} {r['rest_s']:>8.1f} "
              f"{r['total_s']:>8.1f} {r['solve_32_s']:>11.1f} {r['total_32_s']:>10.1f} {r['peak_gib']:>8.2f}")


if __name__ == "__main__":
    main()
