#!/usr/bin/env python3
"""sentence-transformers reference for `fmlab embed`: embeds one sentence per line of FILE with the
same model and batch size, times encode() only (model loaded first), saves the embeddings so the
caller can compare them with fmlab's.

usage: python3 tools/bench_embed_st.py FILE OUT.npy [--batch 32] [--model .cache/fmlab/minilm]
"""
import argparse, time
import numpy as np
import torch
from sentence_transformers import SentenceTransformer

ap = argparse.ArgumentParser()
ap.add_argument("file"); ap.add_argument("out")
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--model", default=".cache/fmlab/minilm")
a = ap.parse_args()
texts = open(a.file, encoding="utf-8").read().split("\n")
texts = texts[:-1] if texts and texts[-1] == "" else texts
m = SentenceTransformer(a.model, device="cpu")
m.encode(texts[:32], batch_size=a.batch)  # warm-up
t = time.perf_counter()
e = m.encode(texts, batch_size=a.batch, convert_to_numpy=True)
s = time.perf_counter() - t
np.save(a.out, e.astype(np.float32))
print(f"sentence-transformers: {len(texts)} sentences in {s:.2f}s ({len(texts)/s:.1f} sentences/s, torch {torch.__version__}, {torch.get_num_threads()} threads)")
