#!/usr/bin/env bash
# Sentence embeddings/s, fmlab vs sentence-transformers (PyTorch CPU), same model (all-MiniLM-L6-v2),
# same 1,000 sentences (lines of Hamlet), same batch size, back to back; checks the two agree.
# needs: pip install torch sentence-transformers
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh shakespeare minilm >/dev/null
cargo build --release -p fmlab >/dev/null 2>&1
cache=${FMLAB_CACHE:-.cache/fmlab}
tmp=$(mktemp -d)
awk 'length($0) >= 20 { print; if (++n == 1000) exit }' "$cache/shakespeare/hamlet_gut.txt" > "$tmp/s.txt"
target/release/fmlab embed --input "$tmp/s.txt" --out "$tmp/fmlab.npy" --batch 32 2>&1 | sed 's/^/fmlab: /'
python3 tools/bench_embed_st.py "$tmp/s.txt" "$tmp/st.npy" --batch 32 2>/dev/null
python3 -c "
import numpy as np, sys
a, b = np.load('$tmp/fmlab.npy'), np.load('$tmp/st.npy')
cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
print(f'agreement: min cosine {cos.min():.7f} over {len(cos)} sentences')"
