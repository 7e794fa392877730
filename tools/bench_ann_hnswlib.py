#!/usr/bin/env python3
"""hnswlib reference for `fmlab bench ann`: same dataset, same query subset, same M and
ef_construction, same machine; recall@10 vs exact ground truth (numpy brute force), QPS on one
thread and on all threads (hnswlib's own C++ batch loop, no per-query Python overhead), build time
on all threads.

usage: python3 tools/bench_ann_hnswlib.py --dataset fashion-mnist-784|glove-50 [--ef 10,20,...] [--queries 1000]
needs: pip install hnswlib numpy; assets from scripts/fetch-assets.sh fashion-mnist glove
"""
import argparse, os, time
import numpy as np
import hnswlib

ap = argparse.ArgumentParser()
ap.add_argument("--dataset", required=True)
ap.add_argument("--ef", default="10,20,40,80,160,320")
ap.add_argument("--m", type=int, default=16)
ap.add_argument("--ef-construction", type=int, default=200)
ap.add_argument("--queries", type=int, default=1000)
a = ap.parse_args()
cache = os.environ.get("FMLAB_CACHE", ".cache/fmlab")

def idx(path):
    b = open(path, "rb").read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims[0], -1).astype(np.float32)

if a.dataset == "fashion-mnist-784":
    base = idx(f"{cache}/fashion-mnist/train-images-idx3-ubyte")
    q = idx(f"{cache}/fashion-mnist/t10k-images-idx3-ubyte")[: a.queries]
    space = "l2"
elif a.dataset == "glove-50":
    allv = np.load(f"{cache}/glove/glove_6B_50d_emb.npy").astype(np.float32)
    is_q = np.arange(len(allv)) % 40 == 0
    base, q = allv[~is_q], allv[is_q][: a.queries]
    space = "cosine"
else:
    raise SystemExit(f"unknown dataset {a.dataset}")

# Exact ground truth.
if space == "l2":
    d = (q ** 2).sum(1)[:, None] - 2 * q @ base.T + (base ** 2).sum(1)[None, :]
else:
    bn = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-30)
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    d = -(qn @ bn.T)
gt = np.argpartition(d, 10, axis=1)[:, :10]

threads = os.cpu_count()
p = hnswlib.Index(space=space, dim=base.shape[1])
p.init_index(max_elements=len(base), ef_construction=a.ef_construction, M=a.m, random_seed=100)
p.set_num_threads(threads)
t = time.perf_counter()
p.add_items(base, np.arange(len(base)))
build = time.perf_counter() - t
print(f"hnswlib {a.dataset}: build {build:.2f}s ({threads} threads), M {a.m} ef_construction {a.ef_construction} (hnswlib {getattr(hnswlib, '__version__', '?')})")
print(f"| ef | recall@10 | QPS 1 thread | QPS {threads} threads |")
print("|---|---|---|---|")
for ef in [int(x) for x in a.ef.split(",")]:
    p.set_ef(ef)
    p.set_num_threads(1)
    t = time.perf_counter(); labels, _ = p.knn_query(q, k=10); qps1 = len(q) / (time.perf_counter() - t)
    p.set_num_threads(threads)
    t = time.perf_counter(); p.knn_query(q, k=10); qpsn = len(q) / (time.perf_counter() - t)
    rec = np.mean([len(set(l) & set(g)) / 10 for l, g in zip(labels, gt)])
    print(f"| {ef} | {rec:.4f} | {qps1:.0f} | {qpsn:.0f} |")
