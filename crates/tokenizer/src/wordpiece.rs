//! WordPiece, as BERT uses it (and HF `tokenizers` implements it for `tokenizer.json`):
//!
//! 1. normalize (BertNormalizer): drop NUL, U+FFFD and control chars; whitespace → ' '; pad CJK
//!    ideographs with spaces; optionally strip accents (NFD, then drop nonspacing marks) and
//!    lowercase (accents are stripped when lowercasing unless `strip_accents` is set to false);
//! 2. pre-tokenize (BertPreTokenizer): split on whitespace, isolate each punctuation char;
//! 3. WordPiece: greedy longest match from the left, continuation pieces prefixed `##`; a word with
//!    no complete cover (or longer than `max_input_chars_per_word` chars) becomes `[UNK]`;
//! 4. post-process: `[CLS] … [SEP]`, truncated to `max_len` tokens including them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use unicode_normalization::UnicodeNormalization;

use crate::Error;

pub struct WordPiece {
    vocab: HashMap<String, u32>,
    inv: Vec<String>,
    unk: u32,
    cls: u32,
    sep: u32,
    pad: u32,
    prefix: String,
    max_chars: usize,
    lowercase: bool,
    strip_accents: bool,
    chinese_chars: bool,
    clean_text: bool,
}

/// Token ids and the attention mask of one encoded text.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoding {
    pub ids: Vec<u32>,
}

fn ranges(re: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    match regex_syntax::Parser::new().parse(re).expect("class").kind() {
        HirKind::Class(Class::Unicode(c)) => c.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect(),
        _ => unreachable!(),
    }
}

fn in_ranges(r: &[(u32, u32)], c: char) -> bool {
    let cp = c as u32;
    let i = r.partition_point(|x| x.0 <= cp);
    i > 0 && r[i - 1].1 >= cp
}

struct Tables {
    other: Vec<(u32, u32)>,
    punct: Vec<(u32, u32)>,
    mark_nonspacing: Vec<(u32, u32)>,
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| Tables { other: ranges(r"\p{C}"), punct: ranges(r"\p{P}"), mark_nonspacing: ranges(r"\p{Mn}") })
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && in_ranges(&tables().other, c)
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || in_ranges(&tables().punct, c)
}

fn is_chinese_char(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

impl WordPiece {
    /// Reads a HF `tokenizer.json` whose model is WordPiece (BERT-family).
    pub fn from_hf_json(path: &Path) -> Result<WordPiece, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not JSON: {e}")))?;
        let m = &v["model"];
        if m["type"] != "WordPiece" {
            return Err(Error::file(path, format!("model.type is {}, expected WordPiece", m["type"])));
        }
        let vocab: HashMap<String, u32> = serde_json::from_value(m["vocab"].clone()).map_err(|e| Error::file(path, format!("model.vocab: {e}")))?;
        let mut inv = vec![String::new(); vocab.values().max().map_or(0, |x| *x as usize + 1)];
        for (k, &i) in &vocab {
            inv[i as usize] = k.clone();
        }
        let id = |t: &str| vocab.get(t).copied().ok_or_else(|| Error::file(path, format!("vocabulary has no {t}")));
        let unk_tok = m["unk_token"].as_str().unwrap_or("[UNK]");
        let n = &v["normalizer"];
        let lowercase = n["lowercase"].as_bool().unwrap_or(true);
        Ok(WordPiece {
            unk: id(unk_tok)?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            pad: id("[PAD]")?,
            prefix: m["continuing_subword_prefix"].as_str().unwrap_or("##").to_string(),
            max_chars: m["max_input_chars_per_word"].as_u64().unwrap_or(100) as usize,
            lowercase,
            // null = follow `lowercase`, as BERT does.
            strip_accents: n["strip_accents"].as_bool().unwrap_or(lowercase),
            chinese_chars: n["handle_chinese_chars"].as_bool().unwrap_or(true),
            clean_text: n["clean_text"].as_bool().unwrap_or(true),
            vocab,
            inv,
        })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }
    pub fn vocab_size(&self) -> usize {
        self.inv.len()
    }
    pub fn token(&self, id: u32) -> Option<&str> {
        self.inv.get(id as usize).map(|s| s.as_str())
    }

    pub fn normalize(&self, text: &str) -> String {
        let mut s = String::with_capacity(text.len());
        for c in text.chars() {
            if self.clean_text {
                if c == '\0' || c == '\u{fffd}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) {
                    s.push(' ');
                    continue;
                }
            }
            if self.chinese_chars && is_chinese_char(c) {
                s.push(' ');
                s.push(c);
                s.push(' ');
            } else {
                s.push(c);
            }
        }
        if self.strip_accents {
            let t = tables();
            s = s.nfd().filter(|&c| !in_ranges(&t.mark_nonspacing, c)).collect();
        }
        if self.lowercase {
            s = s.to_lowercase();
        }
        s
    }

    fn word_pieces(&self, word: &str, out: &mut Vec<u32>) {
        let chars: Vec<(usize, char)> = word.char_indices().collect();
        if chars.len() > self.max_chars {
            out.push(self.unk);
            return;
        }
        let start_len = out.len();
        let mut start = 0;
        let mut key = String::new();
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                let (a, b) = (chars[start].0, if end < chars.len() { chars[end].0 } else { word.len() });
                key.clear();
                if start > 0 {
                    key.push_str(&self.prefix);
                }
                key.push_str(&word[a..b]);
                if let Some(&id) = self.vocab.get(&key) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => out.push(id),
                None => {
                    out.truncate(start_len);
                    out.push(self.unk);
                    return;
                }
            }
            start = end;
        }
    }

    /// Ids of `[CLS] text [SEP]`, at most `max_len` of them.
    pub fn encode(&self, text: &str, max_len: usize) -> Encoding {
        let norm = self.normalize(text);
        let mut ids = vec![self.cls];
        for word in norm.split(is_whitespace).filter(|w| !w.is_empty()) {
            let mut start = 0;
            for (i, c) in word.char_indices() {
                if is_punctuation(c) {
                    if start < i {
                        self.word_pieces(&word[start..i], &mut ids);
                    }
                    self.word_pieces(&word[i..i + c.len_utf8()], &mut ids);
                    start = i + c.len_utf8();
                }
            }
            if start < word.len() {
                self.word_pieces(&word[start..], &mut ids);
            }
        }
        ids.truncate(max_len.max(2) - 1);
        ids.push(self.sep);
        Encoding { ids }
    }
}
