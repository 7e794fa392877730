#!/usr/bin/env bash
# The main job: on a fresh machine, fetch the corpus, build fmlab, train a BPE tokenizer and a
# small GPT-2 on Shakespeare (CPU, a few minutes on 2 cores), evaluate it on held-out plays and
# sample from it.
#
# usage: scripts/main-job.sh [STEPS]      (default 600; env RUN=DIR, default runs/shakespeare-DATE-TIME)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-600}
run=${RUN:-runs/shakespeare-$(date +%Y%m%d-%H%M%S)}

scripts/fetch-assets.sh gpt2 shakespeare
cargo build --release -p fmlab
fmlab=target/release/fmlab
data=${FMLAB_CACHE:-.cache/fmlab}/shakespeare

# Each main job is a new run folder; an existing one is never overwritten.
if [ -e "$run" ]; then echo "main-job: $run exists; choose another RUN=DIR" >&2; exit 1; fi
mkdir -p "$run"
$fmlab tokenizer train --input "$data" --vocab-size 4096 --out "$run/tokenizer.fmtok"
# The last tenth of the plays (sorted by name) is held out for validation by `train`.
$fmlab train gpt --preset cpu-small --tokenizer "$run/tokenizer.fmtok" --data "$data" --out "$run" \
  --steps "$steps" --batch 16 --seq 128 --lr 2e-3 --warmup 30 --eval-every 100
echo "== held-out plays =="
$fmlab eval --checkpoint "$run" --data $(ls "$data"/*.txt | sort | tail -n 4)
echo "== samples =="
# (train already wrote its three seeded samples to $run/samples.txt.)
$fmlab sample --checkpoint "$run" --prompt "ROMEO." --max-tokens 120 --num 2
