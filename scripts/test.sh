#!/usr/bin/env bash
# The test command: fetches the assets the tests read (GPT-2 vocabulary, Shakespeare, MiniLM, SmolLM2), then runs
# every test of the workspace (optimized test profile; see Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh gpt2 shakespeare minilm smollm2
cargo test --workspace --all-targets "$@"
