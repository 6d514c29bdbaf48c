#!/usr/bin/env bash
# The fine-tuning table on the H200: one line of an h200.sh steps file (the environment comes from h200.sh).
# One one-shot run with the four variants (Wanda and SparseGPT at 50% and 2:4: the same masks as the table's
# runs, since pruning does not depend on the method list), then one fine-tune of each in each mode of FT_MODES
# (default: full), then the table. FT_ARGS (appended) overrides any setting; FT_SECONDS bounds the whole;
# FT_PATTERNS (default: unstructured and 2:4) is the one-shot run's pattern list (it names the run's folder).
set -uo pipefail
began=$SECONDS
budget=${FT_SECONDS:-540}
python3 -m lottery.run +exp=oneshot_smollm2 model.device=cuda 'prune.method=[wanda,sparsegpt]' \
  "prune.pattern=[${FT_PATTERNS:-unstructured,\"2:4\"}]" logger=none progress_bar=false 2>&1 | grep --line-buffered -v "it/s]" \
  | tee "$OUT/prune.log"
run=$(grep -o "oneshot_[0-9a-f]\{12\}" "$OUT/prune.log" | tail -1)  # this run's folder, named by its hash
common="finetune.loss=distill finetune.batch_size=8 finetune.seqlen=1024 finetune.warmup=20 finetune.precision=bf16-mixed finetune.checkpoint_every=100"
for mode in ${FT_MODES:-full}; do
  case $mode in
    full) args="$common finetune.steps=${FT_STEPS:-400} finetune.lr=1e-4" ;;
    lora) args="$common finetune.steps=${FT_STEPS:-400} finetune.lr=5e-4 finetune.lora_r=64 finetune.lora_alpha=128" ;;
  esac
  for variant in ${FT_VARIANTS:-wanda_unstructured sparsegpt_unstructured wanda_2of4 sparsegpt_2of4}; do
    left=$(( budget - (SECONDS - began) ))
    [ "$left" -gt 40 ] || { echo "out of time before $mode $variant" | tee -a "$OUT/finetune.log"; break 2; }
    timeout "$left" python3 -m lottery.run +exp=oneshot_finetune finetune.source="$run/$variant" finetune.mode=$mode \
      $args ${FT_ARGS:-} logger=none progress_bar=false 2>&1 | grep --line-buffered -v "it/s]" | tee -a "$OUT/finetune.log"
  done
done
python3 -m experiments.regenerate finetune --set store.root="$KEEP_RUNS" --out "$OUT/fig" 2>&1 | tail -20 \
  | tee -a "$OUT/finetune.log"
