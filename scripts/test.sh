#!/usr/bin/env bash
# The test command: fetches the assets the tests read (GPT-2 vocabulary, Shakespeare, MiniLM, SmolLM2,
# Fashion-MNIST, and NVRTC), then runs every test of the workspace (optimized test profile; see Cargo.toml), then compiles
# every CUDA kernel module with NVRTC for sm_90 and sm_80 (no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh gpt2 shakespeare minilm smollm2 fashion-mnist nvrtc
cargo test --workspace --all-targets "$@"
FMLAB_CUDA_LIBS="${FMLAB_CACHE:-$PWD/.cache/fmlab}/nvrtc" cargo test -p fmlab-tensor --test cuda_ops -- --ignored kernel_sources_compile
