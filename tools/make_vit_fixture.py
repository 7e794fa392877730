#!/usr/bin/env python3
"""Reference fixture for fmlab's ViT (crates/models/src/vit.rs): a tiny ViT written in plain
PyTorch with fmlab's parameter names and layouts (Linear weights stored [in, out]), its pooled
output on random images, and the gradient of sum(output · W) with respect to every parameter
and to the pixels.

usage: python3 tools/make_vit_fixture.py [OUT]   (default crates/models/tests/fixtures/vit_tiny.safetensors)
needs: pip install torch safetensors   (CPU is enough; runs in a second)

The architecture, stated so that the two implementations can be read side by side: images
[B, H, W, C] cut into P x P patches, each flattened row by row with channels innermost; the
patch embedding is a Linear over those P*P*C values; a learned [CLS] token is prepended and
learned positions added; pre-LN blocks x += attn(ln_1(x)), x += mlp(ln_2(x)) with bidirectional
multi-head attention (one fused q/k/v Linear, `c_attn`, then `c_proj`) and a GELU (erf) MLP
(`c_fc`, `c_proj`); a final LayerNorm; the [CLS] token's output is the image's vector.
"""
import math
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1] if len(sys.argv) > 1 else "crates/models/tests/fixtures/vit_tiny.safetensors"
torch.manual_seed(4321)
IMAGE, PATCH, CH, D, LAYERS, HEADS, HIDDEN, EPS = 8, 4, 3, 16, 2, 2, 32, 1e-6
N = (IMAGE // PATCH) ** 2
dt = torch.float64

P = {}
def param(name, *shape, std=0.02, ones=False, zeros=False):
    t = torch.ones(shape, dtype=dt) if ones else torch.zeros(shape, dtype=dt) if zeros else torch.randn(shape, dtype=dt) * std
    # Non-trivial norms and biases, so their gradients are tested for real.
    if ones or zeros:
        t = t + 0.05 * torch.randn(shape, dtype=dt)
    P[name] = t.requires_grad_()
    return P[name]

def linear(prefix, d_in, d_out):
    return param(f"{prefix}.weight", d_in, d_out, std=0.2), param(f"{prefix}.bias", d_out, zeros=True)

pe = linear("patch_embed", PATCH * PATCH * CH, D)
cls = param("cls_token", 1, 1, D, std=0.2)
pos = param("pos_embed", N + 1, D, std=0.2)
blocks = []
for i in range(LAYERS):
    b = f"blocks.{i}"
    blocks.append(dict(
        ln_1=(param(f"{b}.ln_1.weight", D, ones=True), param(f"{b}.ln_1.bias", D, zeros=True)),
        c_attn=linear(f"{b}.attn.c_attn", D, 3 * D), attn_proj=linear(f"{b}.attn.c_proj", D, D),
        ln_2=(param(f"{b}.ln_2.weight", D, ones=True), param(f"{b}.ln_2.bias", D, zeros=True)),
        c_fc=linear(f"{b}.mlp.c_fc", D, HIDDEN), mlp_proj=linear(f"{b}.mlp.c_proj", HIDDEN, D)))
ln_f = (param("ln_f.weight", D, ones=True), param("ln_f.bias", D, zeros=True))

def lin(x, wb):
    return x @ wb[0] + wb[1]

def ln(x, wb):
    return torch.nn.functional.layer_norm(x, (D,), wb[0], wb[1], EPS)

def vit(images):
    B = images.shape[0]
    g = IMAGE // PATCH
    x = images.reshape(B, g, PATCH, g, PATCH, CH).permute(0, 1, 3, 2, 4, 5).reshape(B, N, PATCH * PATCH * CH)
    x = lin(x, pe)
    x = torch.cat([cls.expand(B, 1, D), x], dim=1) + pos
    for blk in blocks:
        h = ln(x, blk["ln_1"])
        q, k, v = lin(h, blk["c_attn"]).split(D, dim=2)
        heads = lambda t: t.reshape(B, N + 1, HEADS, D // HEADS).transpose(1, 2)
        a = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(D // HEADS), dim=-1) @ heads(v)
        x = x + lin(a.transpose(1, 2).reshape(B, N + 1, D), blk["attn_proj"])
        h = ln(x, blk["ln_2"])
        x = x + lin(torch.nn.functional.gelu(lin(h, blk["c_fc"])), blk["mlp_proj"])
    return ln(x, ln_f)[:, 0]

images = torch.rand(3, IMAGE, IMAGE, CH, dtype=dt, requires_grad=True)
w = torch.randn(3, D, dtype=dt)
y = vit(images)
(y * w).sum().backward()
tensors = {f"param.{n}": p.detach().contiguous() for n, p in P.items()}
tensors.update({f"grad.{n}": p.grad.contiguous() for n, p in P.items()})
tensors.update({"images": images.detach(), "images_grad": images.grad, "w": w, "output": y.detach()})
save_file(tensors, out)
print(f"wrote {out}: output {tuple(y.shape)}, {len(P)} parameters")
