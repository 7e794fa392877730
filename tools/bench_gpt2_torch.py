#!/usr/bin/env python3
"""PyTorch reference for `fmlab bench train`: the identical GPT-2 (HF GPT2LMHeadModel, tied
embeddings, GELU-tanh, no dropout) and step (forward, backward, clip 1.0, AdamW) on random tokens.

On CUDA it is the strong baseline the issue names: bf16 autocast (fp32 master weights), SDPA
attention (flash), fused AdamW; --compile adds torch.compile. Peak memory is
torch.cuda.max_memory_allocated over the whole run, warmup included: with
mode=reduce-overhead the CUDA graphs' memory is allocated while they are recorded, in warmup (a
peak over the timed steps alone read 0.26 GiB there).

What --compile compiles (--compile-scope): `loss` (the default) is the function from tokens to
the loss, model and cross-entropy together, so Inductor fuses the loss into its kernels and never
makes the [B·T, 50257] logits f32; `model` compiles only the model and leaves the cross-entropy
eager (autocast runs it in f32 on a copy of the logits) — how sessions 1-10 measured, a weaker
baseline: at gpt2-mini B=32 T=1024 it is about twice as slow.

usage: python3 tools/bench_gpt2_torch.py --preset gpt2-mini --batch 4 --seq 256 --steps 5 [--device cpu|cuda] [--compile [--compile-mode reduce-overhead] [--compile-scope loss|model]]
"""
import argparse, time
import torch
from transformers import GPT2Config, GPT2LMHeadModel

PRESETS = {"gpt2-mini": (256, 12, 8, 1024), "cpu-small": (128, 4, 4, 128), "cpu-tiny": (64, 2, 4, 64), "gpt2": (768, 12, 12, 1024)}
ap = argparse.ArgumentParser()
ap.add_argument("--preset", default="gpt2-mini")
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--seq", type=int, default=256)
ap.add_argument("--steps", type=int, default=5)
ap.add_argument("--warmup", type=int, default=1)
ap.add_argument("--device", default="cpu")
ap.add_argument("--compile", action="store_true")
# torch.compile's mode: "default", or "reduce-overhead" (CUDA graphs for the compiled forward and
# backward; the optimizer step stays eager) — the comparison for fmlab's own whole-step graphs.
ap.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
ap.add_argument("--compile-scope", default="loss", choices=["loss", "model"])
a = ap.parse_args()
d, l, h, ctx = PRESETS[a.preset]
cfg = GPT2Config(vocab_size=50257, n_positions=ctx, n_embd=d, n_layer=l, n_head=h, resid_pdrop=0.0,
                 embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new", bos_token_id=0, eos_token_id=0)
model = GPT2LMHeadModel(cfg).to(a.device)
cuda = a.device.startswith("cuda")
model.train()
decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n)]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-4, betas=(0.9, 0.95), **({"fused": True} if cuda else {}))
fwd = torch.compile(model, mode=a.compile_mode) if a.compile and a.compile_scope == "model" else model

def tokens_to_loss(x, y):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        logits = fwd(x).logits
        return torch.nn.functional.cross_entropy(logits.view(-1, 50257), y.view(-1))

loss_fn = torch.compile(tokens_to_loss, mode=a.compile_mode) if a.compile and a.compile_scope == "loss" else tokens_to_loss

def step():
    x = torch.randint(0, 50257, (a.batch, a.seq), device=a.device)
    y = torch.randint(0, 50257, (a.batch, a.seq), device=a.device)
    loss = loss_fn(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

times = []
for i in range(a.warmup + a.steps):
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    loss = step()
    loss.item()
    if cuda:
        torch.cuda.synchronize()
    if i >= a.warmup:
        times.append(time.perf_counter() - t)
times.sort()
med = times[len(times) // 2]
peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else ""
scope = f"({a.compile_scope}) " if a.compile else ""
mode = ((f"compile-{a.compile_mode} " if a.compile_mode != "default" else "compile ") + scope if a.compile else "eager ") + ("bf16-autocast" if cuda else "fp32")
print(f"torch  preset {a.preset} {mode} B={a.batch} T={a.seq} threads={torch.get_num_threads()}: step median {med*1e3:.1f} ms (min {times[0]*1e3:.1f}), {a.batch*a.seq/med:.0f} tok/s{peak}, loss {loss.item():.3f} (torch {torch.__version__})")
