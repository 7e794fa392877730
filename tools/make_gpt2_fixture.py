#!/usr/bin/env python3
"""Reference fixture for fmlab's GPT-2: a tiny HF GPT2LMHeadModel, its logits, loss, every
gradient, and the losses of 10 AdamW steps (llm.c's test_gpt2 pattern).

usage: python3 tools/make_gpt2_fixture.py [OUT]   (default crates/models/tests/fixtures/gpt2_tiny.safetensors)
needs: pip install torch transformers safetensors   (CPU is enough; runs in seconds)

AdamW settings and the decay rule match fmlab's defaults: decay on matrices only, not on biases,
LayerNorm gains or the wte/wpe embedding tables.
"""
import sys
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

out = sys.argv[1] if len(sys.argv) > 1 else "crates/models/tests/fixtures/gpt2_tiny.safetensors"
torch.manual_seed(1234)
cfg = GPT2Config(vocab_size=96, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                 activation_function="gelu_new", tie_word_embeddings=True,
                 bos_token_id=0, eos_token_id=0)
model = GPT2LMHeadModel(cfg).float()
# Non-trivial LayerNorm parameters and biases, so their gradients are tested for real.
with torch.no_grad():
    for n, p in model.named_parameters():
        if n.endswith(".bias") or "ln_" in n:
            p.add_(0.05 * torch.randn_like(p))
model.train()

B, T = 2, 12
ids = torch.randint(0, cfg.vocab_size, (B, T))
targets = torch.randint(0, cfg.vocab_size, (B, T))
targets[1, 3] = -100  # one ignored position

params = {n.removeprefix("transformer."): p for n, p in model.named_parameters()}
tensors = {f"param.{n}": p.detach().clone().contiguous() for n, p in params.items()}

logits = model(ids).logits
loss = torch.nn.functional.cross_entropy(logits.view(-1, cfg.vocab_size), targets.view(-1), ignore_index=-100)
loss.backward()
tensors.update({f"grad.{n}": p.grad.detach().clone().contiguous() for n, p in params.items()})
tensors["ids"] = ids.to(torch.int32)
tensors["targets"] = targets.to(torch.int32)
tensors["logits"] = logits.detach().contiguous()
tensors["loss"] = loss.detach().reshape(1)

decay = [p for n, p in params.items() if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
no_decay = [p for n, p in params.items() if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n)]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False, fused=False)
losses = []
for step in range(10):
    opt.zero_grad()
    l = torch.nn.functional.cross_entropy(model(ids).logits.view(-1, cfg.vocab_size), targets.view(-1), ignore_index=-100)
    l.backward()
    opt.step()
    losses.append(l.item())
tensors["losses_adamw"] = torch.tensor(losses, dtype=torch.float32)
tensors.update({f"after.{n}": p.detach().clone().contiguous() for n, p in params.items()})
save_file(tensors, out, metadata={"config": cfg.to_json_string(), "torch": torch.__version__})
print(f"wrote {out}: loss {loss.item():.6f}, 10-step losses {[round(x, 5) for x in losses]}")
