#!/usr/bin/env python3
"""Reference fixture for fmlab's all-MiniLM-L6-v2: token ids (HF fast tokenizer, as
sentence-transformers calls it) and sentence embeddings (sentence-transformers: BERT → mean pooling
→ L2 normalize) for 220 varied sentences.

usage: python3 tools/make_minilm_fixture.py [MODEL_DIR] [OUT_DIR]
   MODEL_DIR default .cache/fmlab/minilm (scripts/fetch-assets.sh minilm); OUT_DIR default
   crates/models/tests/fixtures. needs: pip install torch sentence-transformers safetensors (CPU).
"""
import json, sys, itertools
import torch
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer

model_dir = sys.argv[1] if len(sys.argv) > 1 else ".cache/fmlab/minilm"
out = sys.argv[2] if len(sys.argv) > 2 else "crates/models/tests/fixtures"

hand = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "Rust is a systems programming language focused on safety.",
    "How do I reset my password?",
    "Café déjà vu: naïve façade, résumé, coöperate, Ångström.",
    "Größenwahn und Straßenbahn in München.",
    "北京是中国的首都。",
    "東京タワーは東京にあります。",
    "한국어 문장도 포함합니다.",
    "Привет, как дела?",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "I love pizza 🍕 and tacos 🌮!!!",
    "Emoji only: 😀😃😄😁",
    "e-mail: someone@example.com, url: https://example.org/path?q=1&x=2",
    "Numbers: 3.14159, 2,718, 1e-9, -42, 007.",
    "Tabs\tand\nnewlines\r\nand   multiple    spaces.",
    "UPPERCASE WORDS SHOULD BE LOWERCASED.",
    "Hyphen-ated words and under_scores and slashes/too.",
    "Quotes: \"double\", 'single', «guillemets», „low-high“.",
    "Parentheses (like this) [and this] {and this}.",
    "Unbelievably antidisestablishmentarianism supercalifragilisticexpialidocious.",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "A" * 120,
    "Zero\u200bwidth\u200bspace and soft\u00adhyphen.",
    "Control\u0007chars\u0000removed\ufffd?",
    "",
    "   ",
    "?",
    "Ellipsis… em—dash – en-dash.",
    "Math: ∑ x² ≤ ∞, α+β=γ, √2 ≈ 1.414.",
    "Currency: $100, €50, £20, ¥1000, ₹500.",
    "The cat sat on the mat. The dog sat on the log.",
    "Machine learning models embed sentences into vectors.",
    "Vector databases index embeddings with HNSW graphs.",
    "What is the capital of France? Paris is the capital of France.",
    "She sells sea shells by the sea shore.",
    " ".join(["long"] * 300),  # longer than 256 tokens: truncated
]
subjects = ["The scientist", "A child", "My neighbour", "The old fisherman", "Our team", "The robot"]
verbs = ["discovered", "painted", "repaired", "described", "ignored", "celebrated"]
objects = ["a new planet", "the broken bridge", "an ancient map", "the quiet forest", "a strange signal", "the winning goal"]
tails = ["yesterday.", "in the morning!", "with great care.", "— nobody knows why.", "(again)", "for the first time?"]
gen = [f"{s} {v} {o} {t}" for s, v, o, t in itertools.islice(itertools.product(subjects, verbs, objects, tails), 0, None, 7)]
sentences = hand + gen[: 220 - len(hand)]
assert len(sentences) >= 200

m = SentenceTransformer(model_dir, device="cpu")
ids = [m.tokenizer(s, truncation=True, max_length=m.max_seq_length)["input_ids"] for s in sentences]
emb = m.encode(sentences, batch_size=32, convert_to_tensor=True, normalize_embeddings=False).float().cpu()
json.dump({"max_seq_length": m.max_seq_length, "sentences": sentences, "ids": ids}, open(f"{out}/minilm_tokens.json", "w"), ensure_ascii=False)
save_file({"embeddings": emb.contiguous()}, f"{out}/minilm_embeddings.safetensors")
print(f"wrote {len(sentences)} sentences; embeddings {tuple(emb.shape)}; max_seq_length {m.max_seq_length}")
