#!/usr/bin/env bash
# One gpt2-mini training step (forward, backward, clip, AdamW), fmlab vs PyTorch CPU, same model,
# batch and machine, back to back; prints a table with the ratio last.
# needs: pip install torch transformers
# usage: scripts/bench-cpu.sh [BATCH] [SEQ] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
b=${1:-4}; t=${2:-256}; n=${3:-5}
cargo build --release -p fmlab >/dev/null 2>&1
ours=$(target/release/fmlab bench train --preset gpt2-mini --batch "$b" --seq "$t" --steps "$n")
theirs=$(python3 tools/bench_gpt2_torch.py --preset gpt2-mini --batch "$b" --seq "$t" --steps "$n" 2>/dev/null | grep '^torch')
echo "$ours"; echo "$theirs"
python3 - "$ours" "$theirs" <<'PY'
import re, sys
ms = [float(re.search(r"step median ([0-9.]+) ms", s).group(1)) for s in sys.argv[1:]]
print("| engine | step median (ms) | tok/s |")
print("|---|---|---|")
for name, m, s in zip(["fmlab", "PyTorch"], ms, sys.argv[1:]):
    print(f"| {name} | {m:.0f} | {re.search(r'([0-9]+) tok/s', s).group(1)} |")
print(f"fmlab speed / PyTorch speed = {ms[1]/ms[0]:.2f}x")
PY
