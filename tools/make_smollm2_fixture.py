#!/usr/bin/env python3
"""Reference fixture for fmlab's SmolLM2-135M-Instruct: transformers loading the same GGUF
(dequantized to f32) — token ids of 230 texts, the rendered chat prompt, last-position logits of
two prompts, and 64 greedily generated tokens for each.

usage: python3 tools/make_smollm2_fixture.py [GGUF] [OUT_DIR]
   GGUF default .cache/fmlab/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-assets.sh smollm2)
needs: pip install torch transformers gguf accelerate safetensors (CPU)
"""
import json, os, sys
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf = sys.argv[1] if len(sys.argv) > 1 else ".cache/fmlab/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
out = sys.argv[2] if len(sys.argv) > 2 else "crates/models/tests/fixtures"
d, f = os.path.dirname(gguf), os.path.basename(gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()

texts = json.load(open(f"{out}/minilm_tokens.json"))["sentences"] + [
    "def f(x):\n    return x ** 2  # square", "int main() { return 0; }", "12345 67.89 1,000,000 2024-11-23",
    "<|im_start|>user\nhi<|im_end|>", "  leading and trailing  ", "tabs\tand\nnewlines", "CamelCaseWords and snake_case_words",
    "ÀÉÎÕÜ àéîõü", "🙂🙃 emoji", "The year 1999 and 2000.",
]
ids = [tok.encode(t, add_special_tokens=False) for t in texts]
chat = tok.apply_chat_template([{"role": "user", "content": "What is the tallest mountain in the world?"}], tokenize=False, add_generation_prompt=True)
prompts = ["The capital of France is", chat]
tensors, gen = {}, []
with torch.no_grad():
    for i, p in enumerate(prompts):
        x = torch.tensor([tok.encode(p, add_special_tokens=False)])
        tensors[f"logits{i}"] = model(x).logits[0, -1].contiguous().float()
        # An explicit all-ones mask: <|im_end|> (id 2) is also the pad id, and without a mask
        # generate() would treat the chat prompt's <|im_end|> tokens as padding and hide them.
        mask = torch.ones_like(x)
        g = model.generate(x, attention_mask=mask, max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=tok.eos_token_id, use_cache=False)
        gen.append(g[0, x.shape[1]:].tolist())
        gc = model.generate(x, attention_mask=mask, max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=tok.eos_token_id, use_cache=True)[0, x.shape[1]:].tolist()
        first = next((k for k, (a, b) in enumerate(zip(gen[-1], gc)) if a != b), None)
        print(f"prompt {i}: transformers generate() with its KV cache " + ("agrees" if first is None else f"departs at token {first}"))
json.dump({"texts": texts, "ids": ids, "chat_prompt": chat, "prompts": prompts,
           "prompt_ids": [tok.encode(p, add_special_tokens=False) for p in prompts], "greedy": gen},
          open(f"{out}/smollm2.json", "w"), ensure_ascii=False)
save_file(tensors, f"{out}/smollm2_logits.safetensors")
print("chat prompt:", repr(chat))
print("greedy 0:", repr(tok.decode(gen[0])))
print("greedy 1:", repr(tok.decode(gen[1])))
