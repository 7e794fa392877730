#!/usr/bin/env bash
# The CUDA backend's checks and benchmark in one GPU-machine call (build here, run there).
#
#   scripts/gpu-check.sh build          # dev machine: test binaries + CLI into gpu/ (git-ignored)
#   scripts/gpu-check.sh run [WHAT...]  # GPU machine: WHAT = tests ops attn ncu nsys bench profile curve (default: tests bench)
#
# `run` needs no Rust: it runs the carried binaries, finds the CUDA libraries itself (fmlab's
# loader searches the toolkit and the pip wheels; see crates/tensor/src/cuda/libs.rs), and prints
# a summary table last.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}; shift || true
case "$mode" in
build)
  set -e
  rm -rf gpu && mkdir -p gpu
  cargo build --release -p fmlab
  cp target/release/fmlab gpu/
  cargo test --release --no-run -p fmlab-tensor -p fmlab-models --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"] in ("cuda_ops","cuda_streams","grad_check","gpt2_parity","graph_step","device_parity"):
        print(m["target"]["name"], m["executable"])' | while read -r name exe; do cp "$exe" "gpu/$name"; done
  strip gpu/* ; ls -la gpu
  # For `curve`: the GPT-2 tokenizer and the Shakespeare plays (a real corpus, 5 MB).
  c=${FMLAB_CACHE:-.cache/fmlab}
  mkdir -p gpu/data/gpt2 gpu/data/shakespeare
  cp "$c"/gpt2/encoder.json "$c"/gpt2/vocab.bpe gpu/data/gpt2/ && cp "$c"/shakespeare/*.txt gpu/data/shakespeare/
  # For `nsys`: the GPU machine's Nsight Systems (inside its Nsight Compute) needs libdw to write
  # its report; carried from this machine's Debian packages where apt-get can fetch them.
  mkdir -p gpu/lib
  (set +e; t=$(mktemp -d); cd "$t" && apt-get download libdw1 libelf1 >/dev/null 2>&1 && for d in *.deb; do dpkg -x "$d" x; done \
    && cp -L x/usr/lib/x86_64-linux-gnu/libdw.so.1 x/usr/lib/x86_64-linux-gnu/libelf.so.1 "$OLDPWD/gpu/lib/"; rm -rf "$t") || echo "libdw not fetched: 'run nsys' will not work"
  du -sh gpu
  ;;
run)
  [ -x gpu/fmlab ] || { echo "gpu/ is missing: run 'scripts/gpu-check.sh build' on the dev machine and carry gpu/"; exit 1; }
  export FMLAB_KERNEL_CACHE=${FMLAB_KERNEL_CACHE:-/tmp/fmlab-kernels} PYTHONUNBUFFERED=1
  what=${*:-tests bench}
  summary=()
  nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv,noheader || true
  for w in $what; do case $w in
  tests)
    for t in "cuda_ops --ignored" "cuda_streams --ignored" "grad_check" "gpt2_parity" "graph_step --ignored" "device_parity --ignored"; do
      set -- $t
      log=$(FMLAB_TEST_DEVICE=cuda "gpu/$1" ${2:-} --test-threads=1 --nocapture 2>&1); rc=$?
      echo "$log" | grep -E -A3 "^test |panicked|error|relative|differ|parity|adamw|bf16|flash|events|llama|bert|step [0-9]" | grep -v "^test .* ok$" | head -80
      summary+=("| $1 (cuda) | $(echo "$log" | grep -E '^test result' | tail -1) |")
    done ;;
  bench)
    b=${BENCH_BATCH:-32}; t=${BENCH_SEQ:-1024}; n=${BENCH_STEPS:-10}
    # fmlab twice: the whole step as one CUDA graph (the default on a GPU), and launched eagerly.
    ours=$(gpu/fmlab bench train --preset gpt2-mini --batch "$b" --seq "$t" --steps "$n" --warmup 2 --device cuda 2>&1 | grep '^fmlab '); echo "$ours"
    oursx=$(gpu/fmlab bench train --preset gpt2-mini --batch "$b" --seq "$t" --steps "$n" --warmup 2 --device cuda --cuda-graph off 2>&1 | grep '^fmlab '); echo "$oursx"
    py() { out=$(python3 tools/bench_gpt2_torch.py --preset gpt2-mini --batch "$b" --seq "$t" --steps "$n" --device cuda "$@" 2>&1); echo "$out" | grep '^torch' || echo "$out" | tail -5 >&2; }
    eager=$(py --warmup 2); echo "$eager"
    comp=$(py --warmup 3 --compile); echo "$comp"
    # torch.compile compiles the model and the loss together (the script's default scope), then
    # the same with CUDA graphs (forward + backward; its optimizer step stays eager).
    compg=$(py --warmup 3 --compile --compile-mode reduce-overhead); echo "$compg"
    summary+=("$(python3 - "$ours" "$oursx" "$eager" "$comp" "$compg" <<'PY'
import re, sys
rows = []
for name, s in zip(["fmlab bf16, CUDA graph", "fmlab bf16, eager launches", "PyTorch eager bf16-autocast", "PyTorch torch.compile (model + loss)", "PyTorch torch.compile reduce-overhead (model + loss)"], sys.argv[1:]):
    ms = re.search(r"step median ([0-9.]+) ms", s); tok = re.search(r"([0-9]+) tok/s", s); mem = re.search(r"peak GPU memory ([0-9.]+) GiB", s)
    rows.append((name, float(ms.group(1)) if ms else float("nan"), tok.group(1) if tok else "?", mem.group(1) if mem else "?"))
out = ["| engine (gpt2-mini, same batch) | step median (ms) | tok/s | peak GiB | speed vs this |", "|---|---|---|---|---|"]
for n, m, t, g in rows:
    out.append(f"| {n} | {m:.1f} | {t} | {g} | fmlab is {m / rows[0][1]:.2f}x |")
print("\n".join(out))
PY
)") ;;
  ops)
    # Standalone kernel benchmarks at the training step's shapes, each checked against the CPU.
    ops=$(gpu/fmlab bench ops --device cuda 2>&1); echo "$ops"
    summary+=("$(echo "$ops" | grep '^|')") ;;
  curve)
    # The same seeded training run on the CPU engine (fp32) and on the GPU (fp32, and bf16 mixed
    # precision): cpu-small (d128 L4 H4, head_dim 32: flash attention in bf16) on Shakespeare.
    n=${CURVE_STEPS:-150}; R=/tmp/fmlab-curve; rm -rf $R
    for cfg in "cpu fp32" "cuda fp32" "cuda bf16"; do
      set -- $cfg
      FMLAB_CACHE=$PWD/gpu/data gpu/fmlab train gpt --preset cpu-small --tokenizer gpt2 --data gpu/data/shakespeare \
        --batch 8 --seq 128 --steps "$n" --warmup 20 --eval-every 50 --eval-batches 4 --checkpoint-every "$n" --seed 1337 \
        --device "$1" --precision "$2" --out "$R/$1-$2" 2>&1 | tail -2
    done
    summary+=("$(python3 - "$R" "$n" <<'PY'
import json, sys, os
R, n = sys.argv[1], int(sys.argv[2])
runs = ["cpu-fp32", "cuda-fp32", "cuda-bf16"]
loss = {}
for r in runs:
    loss[r] = {}
    for l in open(os.path.join(R, r, "metrics.jsonl")):
        m = json.loads(l)
        if "loss" in m and "step" in m: loss[r][m["step"]] = m["loss"]
steps = sorted(set(loss["cpu-fp32"]) & set(loss["cuda-fp32"]) & set(loss["cuda-bf16"]))
pick = [s for s in steps if s in (1, 2, 5, 10) or s % 25 == 0 or s == steps[-1]]
out = ["| step | CPU fp32 loss | GPU fp32 loss | GPU bf16 loss | GPU fp32 − CPU | GPU bf16 − CPU |", "|---|---|---|---|---|---|"]
for s in pick:
    c, g, b = loss["cpu-fp32"][s], loss["cuda-fp32"][s], loss["cuda-bf16"][s]
    out.append(f"| {s} | {c:.4f} | {g:.4f} | {b:.4f} | {g - c:+.4f} | {b - c:+.4f} |")
print("\n".join(out))
PY
)") ;;
  attn)
    # fmlab's flash attention next to PyTorch's SDPA backends at gpt2-mini's attention shapes,
    # timed the same way (tools/bench_attention_torch.py says how).
    ours=$(gpu/fmlab bench ops --device cuda --only attention 2>&1 | grep 'flash'); echo "$ours"
    theirs=$(python3 tools/bench_attention_torch.py 2>&1 | grep '^torch-attn'); echo "$theirs"
    summary+=("$(python3 - "$ours" "$theirs" <<'PY'
import re, sys
ours, theirs = sys.argv[1], sys.argv[2]
out = ["| attention [32, 8, 1024, 32] causal bf16 | fwd ms | bwd ms | fwd+bwd vs fmlab |", "|---|---|---|---|"]
def ms(text, pat):
    m = re.search(pat, text)
    return float(m.group(1)) if m else float("nan")
# fmlab's default kernels: the first flash rows (the wgmma ones on Hopper, `bench ops` lists them first).
f = ms(ours, r"flash[^)]*\) fwd \|[^|]*\| ([0-9.]+)"); b = ms(ours, r"flash[^)]*\) bwd \|[^|]*\| ([0-9.]+)")
out.append(f"| fmlab flash | {f:.3f} | {b:.3f} | 1.00 |")
for name in ("flash", "cudnn", "efficient"):
    tf = ms(theirs, rf"torch-attn {name} fwd ([0-9.]+)"); tb = ms(theirs, rf"torch-attn {name} bwd ([0-9.]+)")
    out.append(f"| PyTorch SDPA {name} | {tf:.3f} | {tb:.3f} | fmlab is {(tf + tb) / (f + b):.2f}x |")
print("\n".join(out))
PY
)") ;;
  ncu)
    # Hardware counters of the flash kernels, fmlab's and PyTorch's (Nsight Compute, where the
    # machine has it; clocks left alone). Full reports go to $OUT when the caller gives one.
    sec="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats --section InstructionStats"
    o=${OUT:-/tmp}
    ncu --clock-control none $sec -k "regex:${NCU_KERNELS:-fa_(fwd|bwd_kv|bwd_q)_d32}" -c 3 gpu/fmlab bench ops --device cuda --only attention --iters 1 > "$o/ncu-fmlab.txt" 2>&1
    ncu --clock-control none $sec -k "regex:flash_(fwd|bwd)" -c 4 python3 tools/bench_attention_torch.py --iters 1 > "$o/ncu-torch.txt" 2>&1
    for f in "$o/ncu-fmlab.txt" "$o/ncu-torch.txt"; do
      grep -E "^  [a-z_].*\(|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Executed Ipc A|Block Limit|Shared Memory Configuration Size|Dynamic Shared|Static Shared" "$f" | head -80
    done ;;
  nsys)
    # Idle time between the graph step's kernels (Nsight Systems trace, tools/nsys_gaps.py).
    N=$(ls /opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys 2>/dev/null | head -1)
    [ -n "$N" ] || { echo "nsys: not found on this machine"; continue; }
    o=/tmp/fmlab-nsys; rm -f $o.*
    LD_LIBRARY_PATH=$PWD/gpu/lib:${LD_LIBRARY_PATH:-} "$N" profile --cuda-graph-trace=node -t cuda -o $o gpu/fmlab bench train --preset gpt2-mini --batch "${BENCH_BATCH:-32}" --seq "${BENCH_SEQ:-1024}" --steps 3 --warmup 2 --device cuda > /dev/null 2>&1
    LD_LIBRARY_PATH=$PWD/gpu/lib:${LD_LIBRARY_PATH:-} "$N" stats -r cuda_gpu_trace -f csv -o $o $o.nsys-rep > /dev/null 2>&1
    g=$(python3 tools/nsys_gaps.py ${o}_cuda_gpu_trace.csv 2>&1 | tail -2); echo "$g"
    summary+=("nsys (last step): $g") ;;
  profile)
    # Where the time goes: per-kernel GPU time of 2 steps (events around each launch).
    FMLAB_CUDA_PROFILE=1 gpu/fmlab bench train --preset gpt2-mini --batch "${BENCH_BATCH:-32}" --seq "${BENCH_SEQ:-1024}" --steps 2 --warmup 1 --device cuda 2>&1 | tail -68 ;;
  esac; done
  echo; echo "== summary =="; printf '%s\n' "${summary[@]}"
  ;;
*) echo "usage: $0 build | run [tests] [ops] [attn] [ncu] [nsys] [bench] [profile] [curve]"; exit 2 ;;
esac
