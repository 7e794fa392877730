#!/usr/bin/env bash
# HNSW, fmlab vs hnswlib, same datasets / queries / M / ef_construction, back to back on this
# machine. Prints both recall@10–QPS tables per dataset, and fmlab's filter-selectivity sweep.
# needs: pip install hnswlib numpy; scripts/fetch-assets.sh fashion-mnist glove
# usage: scripts/bench-ann.sh [DATASET...]    (default: fashion-mnist-784 glove-50)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh fashion-mnist glove >/dev/null
cargo build --release -p fmlab >/dev/null 2>&1
sets=("$@"); [ ${#sets[@]} -gt 0 ] || sets=(fashion-mnist-784 glove-50)
for d in "${sets[@]}"; do
  echo "== $d =="
  target/release/fmlab bench ann --dataset "$d" --ef 10,20,40,80,160,320 --queries 1000 --filter-ef 64
  python3 tools/bench_ann_hnswlib.py --dataset "$d" --ef 10,20,40,80,160,320 --queries 1000
done
