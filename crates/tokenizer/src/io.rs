//! Tokenizer files: GPT-2's originals, tiktoken rank files, HF `tokenizer.json`, and ours.
//!
//! Our format (`.fmtok`), little-endian:
//! ```text
//! magic  b"FMLABTOK"   version u32 = 1
//! pattern: u32 len, utf-8 ("gpt2", "cl100k" or a regex)
//! n_tokens u32, then per token: u32 len, bytes          (id = position)
//! n_merges u32, then per merge: u32 left, u32 right, u32 new_id   (rank = position)
//! n_specials u32, then per special: u32 id              (its text is the token's bytes)
//! ```
//! Written to a temporary name and renamed, so a crash never leaves a half-written file.

use std::collections::HashMap;
use std::path::Path;

use crate::bytelevel;
use crate::fxhash::FxHashMap;
use crate::pretok::Pattern;
use crate::{Error, Tokenizer};

const MAGIC: &[u8; 8] = b"FMLABTOK";
const VERSION: u32 = 1;

/// A format error found while reading `path` becomes an error naming the file.
fn in_file(path: &Path) -> impl Fn(Error) -> Error + '_ {
    move |e| match e {
        Error::Format(m) => Error::file(path, m),
        e => e,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

fn read_string(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Writes `bytes` to `path` atomically (see `fmlab_fs`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    fmlab_fs::write_atomic(path, bytes).map_err(|e| Error::io(path, e))
}

impl Tokenizer {
    /// Loads GPT-2's original `encoder.json` and `vocab.bpe`. `<|endoftext|>` is the special.
    pub fn from_gpt2_files(encoder_json: &Path, vocab_bpe: &Path) -> Result<Tokenizer, Error> {
        let enc: HashMap<String, u32> = serde_json::from_str(&read_string(encoder_json)?)
            .map_err(|e| Error::file(encoder_json, format!("not a JSON object of token → id: {e}")))?;
        let bpe = read_string(vocab_bpe)?;
        build_from_str_vocab(&enc, bpe.lines().skip_while(|l| l.starts_with("#version")).filter(|l| !l.is_empty()).map(|l| {
            l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| {
                Error::file(vocab_bpe, format!("merge line {l:?} is not two tokens separated by a space"))
            })
        }), &["<|endoftext|>"], Pattern::Gpt2)
        .map_err(in_file(encoder_json))
    }

    /// Loads a tiktoken rank file (`base64-token rank` per line); merges are recovered by running
    /// BPE on each token with only lower ranks, as tiktoken's conversion to HF does.
    pub fn from_tiktoken_file(path: &Path, pattern: Pattern, specials: &[(&str, u32)]) -> Result<Tokenizer, Error> {
        let text = read_string(path)?;
        let mut ranked: Vec<(u32, Vec<u8>)> = Vec::new();
        for (ln, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let (b64, rank) = line.split_once(' ').ok_or_else(|| Error::file(path, format!("line {}: expected `base64 rank`", ln + 1)))?;
            let bytes = base64_decode(b64).ok_or_else(|| Error::file(path, format!("line {}: bad base64 {b64:?}", ln + 1)))?;
            let rank: u32 = rank.trim().parse().map_err(|_| Error::file(path, format!("line {}: bad rank {rank:?}", ln + 1)))?;
            ranked.push((rank, bytes));
        }
        from_ranks(ranked, specials, pattern).map_err(in_file(path))
    }

    /// Reads the BPE part of a HF `tokenizer.json` (byte-level models: GPT-2, RoBERTa, Llama 3,
    /// SmolLM...). Added tokens marked `special` become specials.
    pub fn from_hf_json(path: &Path) -> Result<Tokenizer, Error> {
        let v: serde_json::Value = serde_json::from_str(&read_string(path)?).map_err(|e| Error::file(path, format!("not JSON: {e}")))?;
        let model = &v["model"];
        if model["type"].as_str() != Some("BPE") {
            return Err(Error::file(path, format!("model.type is {}, only BPE is supported", model["type"])));
        }
        let vocab: HashMap<String, u32> = serde_json::from_value(model["vocab"].clone())
            .map_err(|e| Error::file(path, format!("model.vocab: {e}")))?;
        let merges = model["merges"].as_array().ok_or_else(|| Error::file(path, "model.merges is missing"))?;
        let pair = |m: &serde_json::Value| -> Option<(String, String)> {
            match m {
                serde_json::Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
                serde_json::Value::Array(a) if a.len() == 2 => Some((a[0].as_str()?.to_string(), a[1].as_str()?.to_string())),
                _ => None,
            }
        };
        let merges = merges.iter().map(|m| pair(m).ok_or_else(|| Error::file(path, format!("model.merges entry {m} is not a pair"))));
        let mut vocab = vocab;
        let mut special_names = Vec::new();
        for t in v["added_tokens"].as_array().into_iter().flatten() {
            if let (Some(content), Some(id)) = (t["content"].as_str(), t["id"].as_u64()) {
                vocab.insert(content.to_string(), id as u32);
                special_names.push(content.to_string());
            }
        }
        let names: Vec<&str> = special_names.iter().map(|s| s.as_str()).collect();
        build_from_str_vocab(&vocab, merges, &names, hf_pattern(&v)).map_err(in_file(path))
    }

    /// A byte-level BPE from parallel lists, as GGUF stores it (`tokenizer.ggml.tokens`,
    /// `tokenizer.ggml.merges` as "a b", and the ids that are special: llama.cpp's CONTROL and
    /// USER_DEFINED token types).
    pub fn from_byte_level_lists(tokens: &[String], merges: &[String], special_ids: &[u32], pattern: Pattern) -> Result<Tokenizer, Error> {
        let enc: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        if enc.len() != tokens.len() {
            return Err(Error::Format("duplicate token strings in the vocabulary".into()));
        }
        let names: Vec<&str> = special_ids.iter().filter_map(|&i| tokens.get(i as usize).map(|s| s.as_str())).collect();
        build_from_str_vocab(
            &enc,
            merges.iter().map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| Error::Format(format!("merge {m:?} is not two tokens")))),
            &names,
            pattern,
        )
    }

    /// Loads our own format.
    pub fn load(path: &Path) -> Result<Tokenizer, Error> {
        let data = read(path)?;
        let bad = |m: &str| Error::file(path, format!("{m} (not an fmlab tokenizer file, or truncated)"));
        let mut r = Reader { data: &data, pos: 0 };
        if r.take(8).map(|m| m != MAGIC).unwrap_or(true) {
            return Err(bad("bad magic"));
        }
        let version = r.u32().ok_or_else(|| bad("no version"))?;
        if version != VERSION {
            return Err(Error::file(path, format!("tokenizer format version {version}; this fmlab reads version {VERSION}")));
        }
        let plen = r.u32().ok_or_else(|| bad("no pattern"))? as usize;
        let pattern = String::from_utf8(r.take(plen).ok_or_else(|| bad("short pattern"))?.to_vec()).map_err(|_| bad("pattern is not UTF-8"))?;
        let n = r.u32().ok_or_else(|| bad("no token count"))? as usize;
        let mut vocab = Vec::with_capacity(n.min(1 << 24));
        for _ in 0..n {
            let l = r.u32().ok_or_else(|| bad("short vocabulary"))? as usize;
            vocab.push(r.take(l).ok_or_else(|| bad("short vocabulary"))?.to_vec());
        }
        let m = r.u32().ok_or_else(|| bad("no merge count"))? as usize;
        let mut merges = Vec::with_capacity(m.min(1 << 24));
        for _ in 0..m {
            let (a, b, c) = (r.u32(), r.u32(), r.u32());
            merges.push(a.zip(b).zip(c).map(|((a, b), c)| (a, b, c)).ok_or_else(|| bad("short merges"))?);
        }
        let s = r.u32().ok_or_else(|| bad("no special count"))? as usize;
        let mut specials = Vec::new();
        for _ in 0..s {
            let id = r.u32().ok_or_else(|| bad("short specials"))?;
            let t = vocab.get(id as usize).ok_or_else(|| bad("special id out of range"))?;
            specials.push((String::from_utf8(t.clone()).map_err(|_| bad("special is not UTF-8"))?, id));
        }
        if r.pos != data.len() {
            return Err(bad("trailing bytes"));
        }
        Tokenizer::from_parts(vocab, merges, specials, Pattern::from_name(&pattern)).map_err(in_file(path))
    }

    /// Saves in our own format (atomically).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        let put = |out: &mut Vec<u8>, x: u32| out.extend_from_slice(&x.to_le_bytes());
        put(&mut out, VERSION);
        let p = self.pattern();
        put(&mut out, p.name().len() as u32);
        out.extend_from_slice(p.name().as_bytes());
        put(&mut out, self.vocab.len() as u32);
        for t in &self.vocab {
            put(&mut out, t.len() as u32);
            out.extend_from_slice(t);
        }
        put(&mut out, self.merges.len() as u32);
        for &(a, b, c) in &self.merges {
            put(&mut out, a);
            put(&mut out, b);
            put(&mut out, c);
        }
        let mut specials: Vec<u32> = self.specials.iter().map(|s| s.1).collect();
        specials.sort_unstable();
        put(&mut out, specials.len() as u32);
        for id in specials {
            put(&mut out, id);
        }
        write_atomic(path, &out)
    }

    /// Exports a HF `tokenizer.json` (byte-level BPE) that HF `tokenizers` can load.
    pub fn to_hf_json(&self) -> serde_json::Value {
        use serde_json::json;
        let special_ids: std::collections::HashSet<u32> = self.specials.iter().map(|s| s.1).collect();
        let mut vocab = serde_json::Map::new();
        for (id, t) in self.vocab.iter().enumerate() {
            if !special_ids.contains(&(id as u32)) {
                vocab.insert(bytelevel::encode_str(t), json!(id));
            }
        }
        let merges: Vec<String> = self
            .merges
            .iter()
            .map(|&(a, b, _)| format!("{} {}", bytelevel::encode_str(&self.vocab[a as usize]), bytelevel::encode_str(&self.vocab[b as usize])))
            .collect();
        let mut specials = self.specials.clone();
        specials.sort_by_key(|s| s.1);
        let added: Vec<_> = specials
            .iter()
            .map(|(s, id)| json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
            .collect();
        let pre_tokenizer = match self.pattern() {
            Pattern::Gpt2 => json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
            p => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": p.regex_source()}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
            ]}),
        };
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        })
    }

    pub fn save_hf_json(&self, path: &Path) -> Result<(), Error> {
        let s = serde_json::to_string(&self.to_hf_json()).expect("json");
        write_atomic(path, s.as_bytes())
    }
}

/// The pre-tokenizer of a HF tokenizer.json: a `Split` regex if there is one; SmolLM's
/// `Digits(individual_digits)` + ByteLevel; else GPT-2's.
fn hf_pattern(v: &serde_json::Value) -> Pattern {
    fn has_digits(p: &serde_json::Value) -> bool {
        (p["type"] == "Digits" && p["individual_digits"] == true) || p["pretokenizers"].as_array().is_some_and(|a| a.iter().any(has_digits))
    }
    if has_digits(&v["pre_tokenizer"]) {
        return Pattern::Custom(crate::pretok::SMOLLM_PATTERN.to_string());
    }
    fn find(p: &serde_json::Value) -> Option<String> {
        if p["type"] == "Split" {
            return p["pattern"]["Regex"].as_str().map(|s| s.to_string());
        }
        p["pretokenizers"].as_array()?.iter().find_map(find)
    }
    find(&v["pre_tokenizer"]).map(|re| Pattern::from_name(&re)).unwrap_or(Pattern::Gpt2)
}

/// Builds a tokenizer from a byte-level string vocabulary (GPT-2 file chars) and merges given as
/// string pairs. Tokens named in `special_names` keep their literal text.
fn build_from_str_vocab(
    enc: &HashMap<String, u32>,
    merges: impl Iterator<Item = Result<(String, String), Error>>,
    special_names: &[&str],
    pattern: Pattern,
) -> Result<Tokenizer, Error> {
    let n = enc.values().max().map_or(0, |m| *m as usize + 1);
    if n != enc.len() {
        return Err(Error::Format(format!("vocabulary ids are not contiguous: {} tokens, max id {}", enc.len(), n as i64 - 1)));
    }
    let mut vocab = vec![Vec::new(); n];
    let mut specials = Vec::new();
    for (s, &id) in enc {
        if special_names.contains(&s.as_str()) {
            vocab[id as usize] = s.as_bytes().to_vec();
            specials.push((s.clone(), id));
        } else {
            vocab[id as usize] = bytelevel::decode_str(s)
                .ok_or_else(|| Error::Format(format!("token {s:?} (id {id}) has a char outside GPT-2's byte table")))?;
        }
    }
    let mut out = Vec::new();
    for m in merges {
        let (a, b) = m?;
        let get = |s: &str| enc.get(s).copied().ok_or_else(|| Error::Format(format!("merge part {s:?} is not in the vocabulary")));
        let (ia, ib) = (get(&a)?, get(&b)?);
        let ic = get(&format!("{a}{b}"))?;
        out.push((ia, ib, ic));
    }
    Tokenizer::from_parts(vocab, out, specials, pattern)
}

/// Builds a tokenizer from tiktoken-style ranks (rank = id). Each multi-byte token's merge is
/// found by BPE-encoding its bytes with the lower ranks only: the two parts left are the merge.
fn from_ranks(mut ranked: Vec<(u32, Vec<u8>)>, specials: &[(&str, u32)], pattern: Pattern) -> Result<Tokenizer, Error> {
    ranked.sort();
    let n_ord = ranked.len();
    for (i, (r, _)) in ranked.iter().enumerate() {
        if *r as usize != i {
            return Err(Error::Format(format!("ranks are not 0..{n_ord} (rank {r} at position {i})")));
        }
    }
    let rank_of: FxHashMap<&[u8], u32> = ranked.iter().map(|(r, b)| (b.as_slice(), *r)).collect();
    let mut merges = Vec::new();
    for (rank, bytes) in &ranked {
        if bytes.len() < 2 {
            continue;
        }
        let mut parts: Vec<&[u8]> = bytes.chunks(1).collect();
        // tiktoken's merge rule: the adjacent pair whose concatenation has the lowest rank.
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..parts.len() - 1 {
                let joined = &bytes[offset(bytes, parts[i])..offset(bytes, parts[i + 1]) + parts[i + 1].len()];
                if let Some(&r) = rank_of.get(joined) {
                    if r < *rank && best.is_none_or(|b| r < b.0) {
                        best = Some((r, i));
                    }
                }
            }
            match best {
                Some((_, i)) => {
                    let s = offset(bytes, parts[i]);
                    parts[i] = &bytes[s..s + parts[i].len() + parts[i + 1].len()];
                    parts.remove(i + 1);
                }
                None => break,
            }
        }
        if parts.len() != 2 {
            return Err(Error::Format(format!("token of rank {rank} cannot be built from two lower-ranked tokens")));
        }
        merges.push((rank_of[parts[0]], rank_of[parts[1]], *rank));
    }
    merges.sort_by_key(|m| m.2);
    let mut vocab: Vec<Vec<u8>> = ranked.into_iter().map(|(_, b)| b).collect();
    let mut sp = Vec::new();
    for &(s, id) in specials {
        if id as usize >= vocab.len() {
            vocab.resize(id as usize + 1, Vec::new());
        }
        vocab[id as usize] = s.as_bytes().to_vec();
        sp.push((s.to_string(), id));
    }
    if vocab.iter().any(|v| v.is_empty()) {
        return Err(Error::Format("special token ids leave gaps in the vocabulary".into()));
    }
    Tokenizer::from_parts(vocab, merges, sp, pattern)
}

fn offset(base: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - base.as_ptr() as usize
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let nbytes = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        for i in 0..nbytes {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// Encodes bytes as base64 (for writing tiktoken rank files).
pub fn base64_encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut acc = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            acc |= (b as u32) << (16 - 8 * i);
        }
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((acc >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Tokenizer {
    /// Writes a tiktoken rank file. Only valid when ids equal ranks (tokens built in id order),
    /// which holds for GPT-2 and for vocabularies trained here.
    pub fn to_tiktoken_ranks(&self) -> String {
        let special: std::collections::HashSet<u32> = self.specials.iter().map(|s| s.1).collect();
        let mut s = String::new();
        for (id, t) in self.vocab.iter().enumerate() {
            if !special.contains(&(id as u32)) {
                s.push_str(&base64_encode(t));
                s.push(' ');
                s.push_str(&id.to_string());
                s.push('\n');
            }
        }
        s
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.data.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
}
