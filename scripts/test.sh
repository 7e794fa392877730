#!/usr/bin/env bash
# The test command: fetches the assets the tests read (GPT-2 vocabulary, Shakespeare, MiniLM), then runs
# every test of the workspace (optimized test profile; see Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh gpt2 shakespeare minilm
cargo test --workspace --all-targets "$@"
