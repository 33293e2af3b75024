#!/usr/bin/env bash
# The SlimPajama-DC ablations (Shen et al. 2023): one 1.3B model per mix DC-1..DC-6, plus the
# RedPajama-shares baseline on locally deduplicated data, each trained through Ray Train on a GPU
# cluster, then one comparison report. Copy this file, edit the variables, run it:
#   RAY_ADDRESS=ray://head:10001 bash pipelines/slimpajama-dc.sh
# Every step is resumable: re-running skips finished mixes and runs and resumes unfinished runs
# from their last checkpoint. DATA, MIXES and RUNS must be on storage every Ray node sees.
#
# Cost per run, printed before anything starts (cost_estimate below): training FLOPs per token are
# 6N + 12·L·d·T (weights forward and backward, plus attention scores and weighted values at context T),
# N counting the tied, padded embedding once. For 1.3b at T=2048: 7.85e9 + 1.21e9 = 9.06e9 FLOPs/token
# (attention adds 15% to 6N). GPU time = tokens × FLOPs/token / (MFU × the GPU's dense bf16 peak).
# MFU is, in this order: $MFU if set; the figure benchmarks/bench_gpu.py measured (it writes
# benchmarks/bench_gpu.json); else an ASSUMED 40% (llm-foundry's MPT-1B reaches 41.8% on 8×H100 at 2048),
# which the estimate then says. At 40% of an H100/H200's 989 TFLOP/s:
#   paper budget 330B tokens: 2.99e21 FLOPs ≈ 2,100 GPU-hours (≈ 33 h on 64 GPUs) per mix
#   compute-optimal 26.3B tokens (Cerebras-GPT 1.3B, 20 tokens/param): 2.38e20 FLOPs ≈ 167 GPU-hours per mix
# Seven runs (six DC mixes + baseline) cost seven times that.
set -euo pipefail

SOURCES=${SOURCES:?set SOURCES to the RedPajama folders (or files)}
WORK=${WORK:-out/slimpajama-dc}
TOKENS=${TOKENS:-26.3B}         # 330B for the paper's runs
MODEL=${MODEL:-1.3b}            # 111m / 256m / 590m for cheaper ablations
SEEDS=${SEEDS:-1}               # >1 gives mean ± spread per mix in the report
WORKERS=${WORKERS:-8}           # Ray Train workers, one GPU each
RAY=${RAY_ADDRESS:?set RAY_ADDRESS to your Ray cluster}
GPU_TFLOPS=${GPU_TFLOPS:-989}   # dense bf16 peak per GPU (H100 SXM / H200 SXM: 989; H200 NVL: 835; A100: 312)
HERE=$(cd "$(dirname "$0")/.." && pwd)

cost_estimate() {  # prints FLOPs and GPU-hours per run, and which MFU it used
  python3 - "$MODEL" "$TOKENS" "${MFU:-}" "$GPU_TFLOPS" "$HERE/benchmarks/bench_gpu.json" "$WORKERS" <<'PY'
import dataclasses, json, sys
from pathlib import Path
from slimpipe.train.command import parse_count
from slimpipe.train.model import count_params_meta, training_flops_per_token
from slimpipe.train.presets import load_preset
model, tokens, mfu, tflops, bench, workers = sys.argv[1:]
p = load_preset(model)
cfg = dataclasses.replace(p.model, vocab_size=50257)
n = count_params_meta(cfg)
T = p.train.get("seq_len", 2048)
per_token = training_flops_per_token(n, cfg.n_layer, cfg.d_model, T)
flops = parse_count(tokens) * per_token
if mfu:
    mfu, source = float(mfu), "MFU from $MFU"
else:
    measured = None
    if Path(bench).is_file():
        rows = [r for r in json.loads(Path(bench).read_text()).get("rows", []) if r.get("model") == model and r.get("mfu")]
        measured = max(rows, key=lambda r: r["mfu"]) if rows else None
    if measured:
        mfu, source = measured["mfu"], (f"MFU measured by bench_gpu.py ({measured['backend']}) on ONE GPU"
                                         + (f", reused for {workers} GPUs: ASSUMES no scaling loss (DDP/FSDP "
                                            "communication not measured)" if int(workers) > 1 else ""))
    else:
        mfu, source = 0.40, "ASSUMED 40% MFU (no measurement: run benchmarks/bench_gpu.py on a GPU)"
hours = flops / (mfu * float(tflops) * 1e12) / 3600
print(f"cost per run: {model} ({n / 1e9:.2f}B params), {per_token:.3g} FLOPs/token (6N + 12LdT, T={T}), "
      f"{tokens} tokens = {flops:.3g} FLOPs = {hours:,.0f} GPU-hours at {100 * mfu:.1f}% of {tflops} TFLOP/s "
      f"(~{hours / int(workers):,.1f} h on {workers} GPUs); {source}")
PY
}
cost_estimate

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
