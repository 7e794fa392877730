#!/usr/bin/env bash
# Two fmlab binaries on the same GPU, alternately: the gpt2-mini training step (CUDA graph),
# ROUNDS rounds of A then B, and a table of each run's step median last. Build-free: run on the
# GPU machine with the binaries carried (e.g. gpu/fmlab-before and gpu/fmlab).
#
#   scripts/ab-bench.sh gpu/fmlab-before gpu/fmlab [ROUNDS=3] [STEPS=30]
set -uo pipefail
cd "$(dirname "$0")/.."
a=$1; b=$2; rounds=${3:-3}; steps=${4:-30}
export FMLAB_KERNEL_CACHE=${FMLAB_KERNEL_CACHE:-/tmp/fmlab-kernels}
nvidia-smi --query-gpu=name --format=csv,noheader || true
rows=()
for r in $(seq 1 "$rounds"); do
  for bin in "$a" "$b"; do
    line=$("$bin" bench train --preset gpt2-mini --batch 32 --seq 1024 --steps "$steps" --warmup 2 --device cuda 2>&1 | grep '^fmlab ')
    echo "round $r $bin: $line"
    ms=$(echo "$line" | grep -oE 'step median [0-9.]+ ms' | grep -oE '[0-9.]+')
    tok=$(echo "$line" | grep -oE '[0-9]+ tok/s' | grep -oE '[0-9]+')
    rows+=("| $r | $bin | ${ms:-?} | ${tok:-?} |")
  done
done
echo "| round | binary | step median (ms) | tok/s |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
