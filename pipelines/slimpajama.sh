#!/usr/bin/env bash
# SlimPajama from RedPajama, as Cerebras built it: copy this file, edit the variables, run it.
#   bash pipelines/slimpajama.sh
# Re-running after an interruption resumes where it stopped (same OUT, same options).
set -euo pipefail

SOURCES=${SOURCES:-../shared/corpus/redpajama-mini}   # files or folders of RedPajama-style jsonl(.zst)/parquet
OUT=${OUT:-out/slimpajama}
MODE=${MODE:-global}            # global = SlimPajama; local = the RedPajama-like per-source baseline
PRESET=${PRESET:-slimpajama}    # slimpajama (9x13, as published) or recall (26x8 + exact verification)
HOLDOUT=${HOLDOUT:-0.0017}      # SlimPajama's 0.17% holdout, later split into validation and test
SEED=${SEED:-42}                # shuffle order only; the split uses SPLIT_SEED
SPLIT_SEED=${SPLIT_SEED:-42}
CHUNK_MB=${CHUNK_MB:-256}       # text shuffled in memory by one task; size it to your workers' RAM
SHARD_MB=${SHARD_MB:-256}
RAY_ADDRESS_ARG=${RAY_ADDRESS:+--ray-address "$RAY_ADDRESS"}   # e.g. RAY_ADDRESS=ray://head:10001

slimpipe slimpajama $SOURCES -o "$OUT" --mode "$MODE" --preset "$PRESET" \
  --holdout-fraction "$HOLDOUT" --seed "$SEED" --split-seed "$SPLIT_SEED" \
  --chunk-mb "$CHUNK_MB" --shard-mb "$SHARD_MB" $RAY_ADDRESS_ARG
echo "report: $OUT/report.md (dedup details: $OUT/dedup/report.md)"
