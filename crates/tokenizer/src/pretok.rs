//! Pre-tokenization: splitting text into the chunks that BPE merges never cross.
//!
//! GPT-2's pattern is
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! run by a backtracking engine (leftmost alternative wins). [`split_gpt2`] is a hand-written
//! scanner with exactly that behaviour — it is several times faster than the regex engine and is
//! checked against the regex itself on random strings (tests/parity.rs). The Unicode classes come
//! from `regex-syntax`, the same tables the regex engine (and tiktoken) use, so the two agree on
//! every code point.
//!
//! Other patterns (GPT-4's cl100k, or any user regex) run through `fancy-regex`.

use std::sync::OnceLock;

use crate::Error;

/// The GPT-2 pre-tokenizer regex (also tiktoken's r50k_base).
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// GPT-4's pre-tokenizer regex (tiktoken's cl100k_base).
pub const CL100K_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// SmolLM's pre-tokenizer (HF: `Digits(individual_digits)` then GPT-2's `ByteLevel` regex): GPT-2's
/// pattern with every digit its own chunk. Splitting digits first and then running GPT-2's regex on
/// the pieces gives the same chunks as this single pattern (a digit can no longer absorb a leading
/// space, and `\s+(?!\S)` already leaves the space before a digit on its own).
pub const SMOLLM_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Which pre-tokenizer a vocabulary was trained with.
#[derive(Clone, Debug)]
pub enum Pattern {
    Gpt2,
    Cl100k,
    /// Any regex (fancy-regex syntax), e.g. read from a HF `tokenizer.json`.
    Custom(String),
}

impl Pattern {
    /// Name stored in our file format: "gpt2", "cl100k", or the regex itself.
    pub fn name(&self) -> &str {
        match self {
            Pattern::Gpt2 => "gpt2",
            Pattern::Cl100k => "cl100k",
            Pattern::Custom(re) => re,
        }
    }

    pub fn from_name(name: &str) -> Pattern {
        match name {
            "gpt2" | GPT2_PATTERN => Pattern::Gpt2,
            "cl100k" | CL100K_PATTERN => Pattern::Cl100k,
            re => Pattern::Custom(re.to_string()),
        }
    }

    pub fn regex_source(&self) -> &str {
        match self {
            Pattern::Gpt2 => GPT2_PATTERN,
            Pattern::Cl100k => CL100K_PATTERN,
            Pattern::Custom(re) => re,
        }
    }
}

/// A compiled pre-tokenizer.
#[derive(Clone, Debug)]
pub enum PreTokenizer {
    Gpt2,
    Regex { pattern: Pattern, re: fancy_regex::Regex },
}

impl PreTokenizer {
    pub fn new(pattern: &Pattern) -> Result<PreTokenizer, Error> {
        match pattern {
            Pattern::Gpt2 => Ok(PreTokenizer::Gpt2),
            p => {
                let re = fancy_regex::Regex::new(p.regex_source()).map_err(|e| {
                    Error::Format(format!("pre-tokenizer regex {:?}: {e}", p.regex_source()))
                })?;
                Ok(PreTokenizer::Regex { pattern: p.clone(), re })
            }
        }
    }

    pub fn pattern(&self) -> Pattern {
        match self {
            PreTokenizer::Gpt2 => Pattern::Gpt2,
            PreTokenizer::Regex { pattern, .. } => pattern.clone(),
        }
    }

    /// Calls `f` on each chunk of `text`, in order; the chunks concatenate to `text`.
    #[inline]
    pub fn split<'t>(&self, text: &'t str, mut f: impl FnMut(&'t str)) {
        match self {
            PreTokenizer::Gpt2 => split_gpt2(text, f),
            PreTokenizer::Regex { re, .. } => {
                let mut pos = 0;
                while pos < text.len() {
                    // A backtracking limit hit on pathological input: keep the rest as one chunk
                    // rather than lose text.
                    match re.find_from_pos(text, pos) {
                        Ok(Some(m)) if m.end() > pos => {
                            if m.start() > pos {
                                f(&text[pos..m.start()]);
                            }
                            f(m.as_str());
                            pos = m.end();
                        }
                        _ => {
                            f(&text[pos..]);
                            break;
                        }
                    }
                }
            }
        }
    }
}

// ---- Unicode classes ---------------------------------------------------------------------------

const C_OTHER: u8 = 0;
const C_LETTER: u8 = 1;
const C_NUMBER: u8 = 2;
const C_SPACE: u8 = 3;

struct Classes {
    ascii: [u8; 128],
    /// Sorted, disjoint (start, end, class) ranges for non-ASCII code points.
    ranges: Vec<(u32, u32, u8)>,
}

fn class_ranges(re: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::Parser::new().parse(re).expect("valid unicode class");
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => {
            c.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect()
        }
        k => panic!("expected a unicode class for {re}, got {k:?}"),
    }
}

fn classes() -> &'static Classes {
    static C: OnceLock<Classes> = OnceLock::new();
    C.get_or_init(|| {
        let mut ranges = Vec::new();
        for (re, class) in [(r"\p{L}", C_LETTER), (r"\p{N}", C_NUMBER), (r"\s", C_SPACE)] {
            for (a, b) in class_ranges(re) {
                ranges.push((a, b, class));
            }
        }
        ranges.sort_unstable();
        let mut ascii = [C_OTHER; 128];
        for (i, slot) in ascii.iter_mut().enumerate() {
            *slot = lookup(&ranges, i as u32);
        }
        // The classes are disjoint (no code point is both a letter and a space), so a binary
        // search over the merged list is exact.
        Classes { ascii, ranges }
    })
}

fn lookup(ranges: &[(u32, u32, u8)], cp: u32) -> u8 {
    let i = ranges.partition_point(|r| r.0 <= cp);
    if i > 0 && ranges[i - 1].1 >= cp {
        ranges[i - 1].2
    } else {
        C_OTHER
    }
}

#[inline(always)]
fn class_of(cls: &Classes, c: char) -> u8 {
    let cp = c as u32;
    if cp < 128 {
        cls.ascii[cp as usize]
    } else {
        lookup(&cls.ranges, cp)
    }
}

// ---- the GPT-2 scanner -------------------------------------------------------------------------

/// Decodes the char at byte offset `i` (which must be a char boundary), returning it and its
/// length in bytes.
#[inline(always)]
fn char_at(s: &str, i: usize) -> (char, usize) {
    let b = s.as_bytes()[i];
    if b < 128 {
        return (b as char, 1);
    }
    let c = s[i..].chars().next().unwrap();
    (c, c.len_utf8())
}

/// Splits `text` exactly as the GPT-2 regex does (see the module docs).
pub fn split_gpt2<'t>(text: &'t str, mut f: impl FnMut(&'t str)) {
    let cls = classes();
    let bytes = text.as_bytes();
    let n = bytes.len();
    // End of the run of class `class` starting at byte offset `i`.
    let run_end = |mut i: usize, class: u8| -> usize {
        while i < n {
            let (c, l) = char_at(text, i);
            if class_of(cls, c) != class {
                break;
            }
            i += l;
        }
        i
    };
    let mut i = 0;
    while i < n {
        let start = i;
        let b = bytes[i];
        // 1. contractions: 's 't 're 've 'm 'll 'd (case-sensitive).
        if b == b'\'' && i + 1 < n {
            let rest = &bytes[i + 1..];
            let l = match rest[0] {
                b's' | b't' | b'm' | b'd' => 2,
                b'r' | b'v' if rest.len() > 1 && rest[1] == b'e' => 3,
                b'l' if rest.len() > 1 && rest[1] == b'l' => 3,
                _ => 0,
            };
            if l > 0 {
                f(&text[i..i + l]);
                i += l;
                continue;
            }
        }
        // 2-4. ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional U+0020, then a run of
        // one class. Which alternative applies is decided by the first char after the space.
        let body = if b == b' ' && i + 1 < n { i + 1 } else { i };
        let (c, _) = char_at(text, body);
        let class = class_of(cls, c);
        if class != C_SPACE {
            i = run_end(body, class);
            f(&text[start..i]);
            continue;
        }
        // 5-6. whitespace. The char at `i` is whitespace (a lone ' ' before a non-space was
        // handled above). `\s+(?!\S)`: the whole run if it reaches the end of the text, else the
        // run minus its last char, which then prefixes the next chunk; a run of one char before
        // a non-space falls to `\s+` and is taken whole.
        let end = run_end(i, C_SPACE);
        if end == n {
            i = end;
        } else {
            // Step back one char.
            let mut last = end - 1;
            while !text.is_char_boundary(last) {
                last -= 1;
            }
            i = if last > start { last } else { end };
        }
        f(&text[start..i]);
    }
}
