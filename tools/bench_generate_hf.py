#!/usr/bin/env python3
"""transformers reference for `fmlab generate`: the same SmolLM2 GGUF (dequantized to f32), the same
chat prompt, greedy, exactly N new tokens with the KV cache; prints tokens/s (prompt included in the
time, as fmlab's).

usage: python3 tools/bench_generate_hf.py [--tokens 128] [--gguf .cache/fmlab/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
needs: pip install torch transformers gguf accelerate
"""
import argparse, os, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--tokens", type=int, default=128)
ap.add_argument("--prompt", default="Give me three tips for learning Rust.")
ap.add_argument("--gguf", default=".cache/fmlab/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
a = ap.parse_args()
d, f = os.path.dirname(a.gguf), os.path.basename(a.gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
p = tok.apply_chat_template([{"role": "user", "content": a.prompt}], tokenize=False, add_generation_prompt=True)
x = tok(p, return_tensors="pt", add_special_tokens=False)
kw = dict(max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False, eos_token_id=None, pad_token_id=tok.eos_token_id)
with torch.no_grad():
    m.generate(**x, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)  # warm-up
    t = time.perf_counter()
    g = m.generate(**x, **kw)
    s = time.perf_counter() - t
n = g.shape[1] - x["input_ids"].shape[1]
print(f"transformers: {n} tokens in {s:.2f}s ({n/s:.1f} tokens/s, torch {torch.__version__}, {torch.get_num_threads()} threads)")
