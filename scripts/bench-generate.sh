#!/usr/bin/env bash
# SmolLM2-135M generation speed on CPU, fmlab vs transformers, same GGUF, same chat prompt, greedy,
# 128 tokens with the KV cache, back to back.
# needs: pip install torch transformers gguf accelerate
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh smollm2 >/dev/null
cargo build --release -p fmlab >/dev/null 2>&1
target/release/fmlab generate --chat --prompt "Give me three tips for learning Rust." --max-tokens 128 \
  --temperature 0 --repetition-penalty 1 --ignore-eos 2>&1 >/dev/null | sed 's/^/fmlab: /'
python3 tools/bench_generate_hf.py --tokens 128 2>/dev/null | grep '^transformers'
