#!/usr/bin/env bash
# The SlimPajama-DC ablations (Shen et al. 2023): one 1.3B model per mix DC-1..DC-6, plus the
# RedPajama-shares baseline on locally deduplicated data, each trained through Ray Train on a GPU
# cluster, then one comparison report. Copy this file, edit the variables, run it:
#   RAY_ADDRESS=ray://head:10001 bash pipelines/slimpajama-dc.sh
# Every step is resumable: re-running skips finished mixes and runs and resumes unfinished runs
# from their last checkpoint. DATA, MIXES and RUNS must be on storage every Ray node sees.
#
# Cost per run (1.3B parameters, 6·N FLOPs per token, bf16 on H100 at the 40% MFU target; no GPU
# was available to measure it, see benchmarks/RESULTS.md for CPU figures):
#   paper budget 330B tokens: 2.6e21 FLOPs ≈ 1,800 H100-hours (≈ 28 h on 64 H100s) per mix
#   compute-optimal 26.3B tokens (Cerebras-GPT 1.3B, 20 tokens/param): ≈ 145 H100-hours per mix
# Seven runs (six DC mixes + baseline) cost seven times that.
set -euo pipefail

SOURCES=${SOURCES:?set SOURCES to the RedPajama folders (or files)}
WORK=${WORK:-out/slimpajama-dc}
TOKENS=${TOKENS:-26.3B}         # 330B for the paper's runs
MODEL=${MODEL:-1.3b}            # 111m / 256m / 590m for cheaper ablations
SEEDS=${SEEDS:-1}               # >1 gives mean ± spread per mix in the report
WORKERS=${WORKERS:-8}           # Ray Train workers, one GPU each
RAY=${RAY_ADDRESS:?set RAY_ADDRESS to your Ray cluster}

DATA_GLOBAL=$WORK/slimpajama-global
DATA_LOCAL=$WORK/slimpajama-local
slimpipe slimpajama $SOURCES -o "$DATA_GLOBAL" --mode global --ray-address "$RAY"
slimpipe slimpajama $SOURCES -o "$DATA_LOCAL" --mode local --ray-address "$RAY"

mix() {  # name config dataset
  [ -f "$WORK/mixes/$1/manifest.json" ] || slimpipe mix "$3" --config "$2" --tokens "$TOKENS" \
    --tokenizer gpt2 --seq-len 2048 -o "$WORK/mixes/$1" --ray-address "$RAY"
}
for dc in dc1 dc2 dc3 dc4 dc5 dc6; do mix "$dc-global" "$dc" "$DATA_GLOBAL"; done
mix redpajama-local redpajama "$DATA_LOCAL"

runs=()
for m in dc1-global dc2-global dc3-global dc4-global dc5-global dc6-global redpajama-local; do
  for seed in $(seq 1 "$SEEDS"); do
    run=$WORK/runs/$m-s$seed
    runs+=("$run")
    [ -f "$run/metrics.json" ] && continue
    resume=(); [ -d "$run/checkpoints" ] && resume=(--resume)
    slimpipe train "$WORK/mixes/$m" --model "$MODEL" --tokens "$TOKENS" --seed "$seed" -o "$run" \
      --ray-address "$RAY" --num-workers "$WORKERS" --use-gpu "${resume[@]}"
  done
done
slimpipe compare "${runs[@]}" -o "$WORK/report"
echo "report: $WORK/report/report.md"
