#!/usr/bin/env bash
# Issue #5's GPU runs in one GPU-machine call: gpt2-mini on the mix corpus (GPT-2 tokenizer),
# evaluated on held-out SOTU and Shakespeare, then the LR × WD sweep (3 × 3, one seed) and a
# second seed at the best point, and the report. Ledgers (no checkpoints) come back in
# $OUT/ledger.tar.gz.
#
# dev machine:  scripts/gpu-check.sh build && scripts/gpu-runs.sh stage   # shards + held-out text into gpu/data
# GPU machine:  scripts/gpu-runs.sh run
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
stage)
  set -e
  f=target/release/fmlab
  $f data prepare --corpus mix --tokenizer gpt2 --out /tmp/fmlab-mix
  rm -rf gpu/data/sotu_val gpu/data/shakespeare_val gpu/data/shakespeare && mkdir -p gpu/data/sotu_val gpu/data/shakespeare_val
  cp /tmp/fmlab-mix/train.tok /tmp/fmlab-mix/val.tok /tmp/fmlab-mix/prepare.json gpu/data/
  # The documents `data prepare` holds out (the last 10% of each corpus in file-name order).
  c=${FMLAB_CACHE:-.cache/fmlab}
  ls "$c"/sotu/*.txt | sort | tail -23 | xargs -I{} cp {} gpu/data/sotu_val/
  ls "$c"/shakespeare/*.txt | sort | tail -4 | xargs -I{} cp {} gpu/data/shakespeare_val/
  mkdir -p gpu/data/gpt2 && cp "$c"/gpt2/encoder.json "$c"/gpt2/vocab.bpe gpu/data/gpt2/  # the tokenizer
  du -sh gpu ;;
run)
  export FMLAB_KERNEL_CACHE=${FMLAB_KERNEL_CACHE:-/tmp/fmlab-kernels} FMLAB_CACHE=$PWD/gpu/data
  out=${OUT:-/tmp/out}; mkdir -p "$out"; R=/tmp/fmlab-runs; rm -rf $R; mkdir -p $R
  f=gpu/fmlab; d=gpu/data
  STEPS=${MAIN_STEPS:-800}; SW=${SWEEP_STEPS:-500}
  echo "== main run: gpt2-mini on mix, $STEPS steps × 32 × 1024 tokens =="
  timeout ${MAIN_TIMEOUT:-200} $f train gpt --preset gpt2-mini --tokenizer gpt2 --data $d/train.tok --val-data $d/val.tok \
    --batch 32 --seq 1024 --steps $STEPS --lr 1e-3 --warmup 80 --weight-decay 0.1 --eval-every 100 --eval-batches 8 \
    --checkpoint-every $STEPS --device cuda --out $R/mix-gpt2-mini 2>&1 | grep -v "^\s*$" | tail -12
  for v in sotu_val shakespeare_val; do
    echo "-- held-out $v"; $f eval --checkpoint $R/mix-gpt2-mini/checkpoint --data $d/$v --seq 1024 2>&1 | tail -3
  done
  cat $R/mix-gpt2-mini/samples.txt
  echo "== sweep: lr × wd, $SW steps × 16 × 512 tokens each =="
  common=(--preset gpt2-mini --tokenizer gpt2 --data $d/train.tok --val-data $d/val.tok --batch 16 --seq 512 --steps $SW --warmup 15 --eval-every 50 --eval-batches 8 --checkpoint-every $SW --device cuda)
  timeout ${SWEEP_TIMEOUT:-300} $f sweep --root $R --group lrwd-gpu --grid lr=3e-4,1e-3,3e-3 --grid wd=0,0.1,1 -- "${common[@]}" 2>&1 | grep -E "^run|val|error" | tail -20
  best=$(python3 - $R/lrwd-gpu <<'PY'
import json, os, sys
g = sys.argv[1]; best = None
for r in sorted(os.listdir(g)):
    p = os.path.join(g, r, "final.json")
    if os.path.exists(p):
        v = json.load(open(p))["val_loss"]; c = json.load(open(os.path.join(g, r, "config.json")))
        if best is None or v < best[0]: best = (v, c["lr"], c["weight_decay"])
print(f"{best[1]} {best[2]}")
PY
)
  echo "best point (lr wd): $best"; set -- $best
  timeout 90 $f sweep --root $R --group lrwd-gpu --grid lr=$1 --grid wd=$2 --seeds 2 -- "${common[@]}" 2>&1 | grep -E "^run|error" | tail -4
  $f report --group $R/lrwd-gpu 2>&1 | tail -3
  (cd $R && find . -name checkpoint -prune -o -type f -print | tar czf "$out/ledger.tar.gz" -T -)
  ls -la "$out"; $f runs list $R/lrwd-gpu 2>&1 | tail -14 ;;
esac
