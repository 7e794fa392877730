#!/usr/bin/env python3
"""Compare fmlab's BPE trainer with HF `tokenizers` on the same corpus and vocabulary size.

usage: python3 tools/compare_bpe_trainer.py [--vocab 8192] [--fmlab-bin target/release/examples/bench_train] FILE...

Both train a byte-level BPE (GPT-2 pre-tokenizer, <|endoftext|> special, min frequency 2) on the
files; the script times both, then encodes the whole corpus with each vocabulary (ours is loaded
through HF `tokenizers` from the tokenizer.json fmlab exported, which also checks the export) and
prints bytes/token for each. pip install tokenizers.
"""
import argparse, os, subprocess, sys, tempfile, time

from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

ap = argparse.ArgumentParser()
ap.add_argument("--vocab", type=int, default=8192)
ap.add_argument("--fmlab-bin", default="target/release/examples/bench_train")
ap.add_argument("files", nargs="+")
a = ap.parse_args()

tmp = tempfile.mkdtemp()
ours_json = os.path.join(tmp, "fmlab.json")
t = time.perf_counter()
out = subprocess.run([a.fmlab_bin, str(a.vocab), ours_json, *a.files], check=True, capture_output=True, text=True).stdout
t_ours_proc = time.perf_counter() - t
t_ours = float(out.split(", vocab")[1].split(",")[1].strip().split()[0])

hf = Tokenizer(models.BPE())
hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
hf.decoder = decoders.ByteLevel()
tr = trainers.BpeTrainer(vocab_size=a.vocab, min_frequency=2, special_tokens=["<|endoftext|>"],
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
t = time.perf_counter()
hf.train(a.files, tr)
t_hf = time.perf_counter() - t

ours = Tokenizer.from_file(ours_json)
texts = [open(f, encoding="utf-8").read() for f in a.files]
nbytes = sum(len(x.encode()) for x in texts)
def count(tok):
    return sum(len(e.ids) for e in tok.encode_batch(texts))
n_ours, n_hf = count(ours), count(hf)
# Round trip through HF's decoder: the exported file is a working tokenizer.json.
assert ours.decode(ours.encode(texts[0][:2000]).ids) == texts[0][:2000]

print(f"corpus: {len(a.files)} files, {nbytes/1e6:.2f} MB; vocab {a.vocab}; threads: {os.cpu_count()}")
print("| trainer | train time (s) | vocab | tokens | bytes/token |")
print("|---|---|---|---|---|")
print(f"| fmlab | {t_ours:.2f} (process {t_ours_proc:.2f}) | {ours.get_vocab_size()} | {n_ours} | {nbytes/n_ours:.4f} |")
print(f"| HF tokenizers {__import__('tokenizers').__version__} | {t_hf:.2f} | {hf.get_vocab_size()} | {n_hf} | {nbytes/n_hf:.4f} |")
print(f"fmlab/HF: compression {n_hf/n_ours:.4f}x (tokens HF / tokens fmlab), speed {t_hf/t_ours:.2f}x")
