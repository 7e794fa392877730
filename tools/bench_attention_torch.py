"""PyTorch's flash attention at gpt2-mini's shapes, timed the way `fmlab bench ops --only attention`
times fmlab's: q, k, v as strided head views of one [B, T, 3C] bf16 tensor (the QKV projection's
output), causal, the median of synchronized calls after two warm-up calls; backward = (forward +
backward) - forward, for the gradient of the QKV tensor under a fixed upstream gradient.

    python3 tools/bench_attention_torch.py [--batch 32] [--seq 1024] [--heads 8] [--head-dim 32]

Prints one line per direction: `torch-attn <backend> fwd|bwd <ms> ms <TFLOP/s>` (FLOPs: QKᵀ and
PV over the causal half, backward as 2.5× forward, as fmlab's bench counts them).
"""
import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(f, iters):
    for _ in range(2):
        f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        f()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--iters", type=int, default=20)
    a = p.parse_args()
    b, t, h, d = a.batch, a.seq, a.heads, a.head_dim
    c = h * d
    g = torch.Generator(device="cuda").manual_seed(20)
    qkv = torch.randn(b, t, 3 * c, device="cuda", dtype=torch.bfloat16, generator=g)
    up = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16, generator=g)

    def heads(x, i):
        # [B, T, 3C] -> narrow C -> [B, T, H, D] -> [B, H, T, D] (a view: strides as fmlab's)
        return x[:, :, i * c:(i + 1) * c].view(b, t, h, d).transpose(1, 2)

    flops = 4.0 * b * h * t * t * d / 2.0
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        try:
            with sdpa_kernel(backend):
                fwd = lambda x: F.scaled_dot_product_attention(heads(x, 0), heads(x, 1), heads(x, 2), is_causal=True)
                with torch.no_grad():
                    s = median_ms(lambda: fwd(qkv), a.iters)
                vx = qkv.clone().requires_grad_(True)
                sb = median_ms(lambda: torch.autograd.grad(fwd(vx), vx, up)[0], a.iters) - s
        except RuntimeError as e:
            print(f"torch-attn {name} unavailable: {str(e).splitlines()[0]}")
            continue
        print(f"torch-attn {name} fwd {s:.3f} ms {flops / s / 1e9:.0f} TFLOP/s")
        print(f"torch-attn {name} bwd {sb:.3f} ms {2.5 * flops / sb / 1e9:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
