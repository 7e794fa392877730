//! BPE training.
//!
//! 1. Count chunks: text is read in blocks (~4 MiB, cut at a line end) so corpora larger than RAM
//!    stream through; blocks are pre-tokenized and counted in parallel (rayon), special-token
//!    strings are cut out first so they never take part in merges. Memory is bounded by the number
//!    of distinct chunks, not by corpus size.
//! 2. Merge: each distinct chunk is a word of symbols with a count. Pair counts are kept in a map
//!    and a lazy max-heap; merging pair (a, b) only revisits the words that contain it (an index
//!    pair → words) and updates the counts of the pairs around each occurrence — never a recount.
//!
//! Determinism: the result depends only on the input bytes and the config. The pair to merge is
//! the one with the highest count; ties go to the smallest `(left id, right id)`. Ids: bytes are
//! 0..=255 (id = byte value), merges take 256.. in merge order, specials come last.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::fxhash::FxHashMap;
use crate::pretok::{Pattern, PreTokenizer};
use crate::{Error, Tokenizer};

#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Total vocabulary: 256 bytes + merges + specials.
    pub vocab_size: usize,
    pub specials: Vec<String>,
    /// Stop when the best pair occurs fewer times than this.
    pub min_frequency: u64,
    pub pattern: Pattern,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { vocab_size: 8192, specials: vec!["<|endoftext|>".into()], min_frequency: 2, pattern: Pattern::Gpt2 }
    }
}

impl TrainConfig {
    fn check(&self) -> Result<(), Error> {
        let min = 256 + self.specials.len();
        if self.vocab_size < min {
            return Err(Error::Config(format!(
                "--vocab-size {} is too small: it must be at least 256 bytes + {} special tokens = {min}",
                self.vocab_size,
                self.specials.len()
            )));
        }
        // Ids are u32 and stored as i32 in token shards.
        if self.vocab_size >= 1 << 31 {
            return Err(Error::Config(format!("--vocab-size {} is too large: it must be below 2^31 = {}", self.vocab_size, 1u64 << 31)));
        }
        if self.specials.iter().any(|s| s.is_empty()) {
            return Err(Error::Config("a special token is the empty string".into()));
        }
        Ok(())
    }
}

const BLOCK: usize = 4 << 20;

/// Counts pre-tokenized chunks of one block of text.
fn count_block(pre: &PreTokenizer, specials: &[String], text: &str) -> FxHashMap<Box<str>, u64> {
    fn add<'t>(pre: &PreTokenizer, counts: &mut FxHashMap<&'t str, u64>, t: &'t str) {
        pre.split(t, |c| *counts.entry(c).or_insert(0) += 1);
    }
    let mut counts: FxHashMap<&str, u64> = FxHashMap::default();
    let mut rest = text;
    while let Some((p, len)) = specials.iter().filter_map(|s| rest.find(s.as_str()).map(|p| (p, s.len()))).min() {
        add(pre, &mut counts, &rest[..p]);
        rest = &rest[p + len..];
    }
    add(pre, &mut counts, rest);
    counts.into_iter().map(|(k, v)| (k.into(), v)).collect()
}

fn merge_counts(into: &mut FxHashMap<Box<str>, u64>, from: FxHashMap<Box<str>, u64>) {
    for (k, v) in from {
        *into.entry(k).or_insert(0) += v;
    }
}

/// Streams the files block by block and returns chunk counts and the number of bytes read.
pub fn count_files(paths: &[PathBuf], cfg: &TrainConfig) -> Result<(FxHashMap<Box<str>, u64>, u64), Error> {
    let pre = PreTokenizer::new(&cfg.pattern)?;
    let mut total = FxHashMap::default();
    let mut nbytes = 0u64;
    // Blocks are processed a batch at a time (one per thread, times two) so memory stays bounded.
    let batch = rayon::current_num_threads() * 2;
    let size: u64 = paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let progress = fmlab_progress::bar(size, "counting words (bytes)");
    for path in paths {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut carry: Vec<u8> = Vec::new();
        let mut eof = false;
        while !eof {
            let mut blocks: Vec<String> = Vec::new();
            while blocks.len() < batch && !eof {
                let mut buf = std::mem::take(&mut carry);
                let start = buf.len();
                buf.resize(start + BLOCK, 0);
                let mut filled = start;
                while filled < buf.len() {
                    let k = f.read(&mut buf[filled..]).map_err(|e| Error::io(path, e))?;
                    if k == 0 {
                        eof = true;
                        break;
                    }
                    filled += k;
                }
                buf.truncate(filled);
                nbytes += (filled - start) as u64;
                // Cut after the last newline so no chunk (or special token) straddles blocks;
                // a block with no newline at all is cut at a UTF-8 boundary instead.
                if !eof {
                    let cut = match buf.iter().rposition(|&b| b == b'\n') {
                        Some(p) => p + 1,
                        None => (0..=buf.len()).rev().find(|&i| i == buf.len() || (buf[i] as i8) >= -0x40).unwrap_or(buf.len()),
                    };
                    carry = buf.split_off(cut);
                }
                let text = String::from_utf8(buf).map_err(|e| {
                    Error::file(path, format!("not valid UTF-8 near byte {}", nbytes as usize - filled + e.utf8_error().valid_up_to()))
                })?;
                blocks.push(text);
            }
            let counts: Vec<_> = blocks.par_iter().map(|b| count_block(&pre, &cfg.specials, b)).collect();
            progress.inc(blocks.iter().map(|b| b.len() as u64).sum());
            for c in counts {
                merge_counts(&mut total, c);
            }
        }
    }
    Ok((total, nbytes))
}

/// Trains on files (streamed).
pub fn train_from_files(paths: &[PathBuf], cfg: &TrainConfig) -> Result<Tokenizer, Error> {
    cfg.check()?;
    for p in paths {
        if !Path::new(p).is_file() {
            return Err(Error::file(p, "no such file (--input)"));
        }
    }
    let (counts, nbytes) = count_files(paths, cfg)?;
    if nbytes == 0 || counts.is_empty() {
        return Err(Error::Config(format!("the corpus is empty ({} input files, 0 bytes of text) (--input)", paths.len())));
    }
    train_from_counts(counts, cfg)
}

/// Trains on in-memory texts.
pub fn train_from_texts(texts: &[&str], cfg: &TrainConfig) -> Result<Tokenizer, Error> {
    cfg.check()?;
    let pre = PreTokenizer::new(&cfg.pattern)?;
    let parts: Vec<_> = texts.par_iter().map(|t| count_block(&pre, &cfg.specials, t)).collect();
    let mut counts = FxHashMap::default();
    for c in parts {
        merge_counts(&mut counts, c);
    }
    if counts.is_empty() {
        return Err(Error::Config("the corpus is empty".into()));
    }
    train_from_counts(counts, cfg)
}

struct Word {
    syms: Vec<u32>,
    count: i64,
}

/// The merge loop over counted chunks.
pub fn train_from_counts(counts: FxHashMap<Box<str>, u64>, cfg: &TrainConfig) -> Result<Tokenizer, Error> {
    cfg.check()?;
    // Sort the words so that everything after is independent of hash-map order.
    let mut items: Vec<(Box<str>, u64)> = counts.into_iter().collect();
    items.sort_unstable();
    let mut words: Vec<Word> =
        items.iter().map(|(s, c)| Word { syms: s.bytes().map(|b| b as u32).collect(), count: *c as i64 }).collect();
    drop(items);

    let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let n_merges = cfg.vocab_size - 256 - cfg.specials.len();

    let mut pair_count: FxHashMap<(u32, u32), i64> = FxHashMap::default();
    let mut where_: FxHashMap<(u32, u32), Vec<u32>> = FxHashMap::default();
    for (wi, w) in words.iter().enumerate() {
        for p in w.syms.windows(2) {
            let k = (p[0], p[1]);
            *pair_count.entry(k).or_insert(0) += w.count;
            let list = where_.entry(k).or_default();
            // A word can hold a pair twice; list it once (windows visit a word's pairs in a row
            // only for repeats like "aaa", so checking the last entry is enough).
            if list.last() != Some(&(wi as u32)) {
                list.push(wi as u32);
            }
        }
    }
    let mut heap: BinaryHeap<(i64, Reverse<(u32, u32)>)> =
        pair_count.iter().map(|(&p, &c)| (c, Reverse(p))).collect();

    // Merges stop when no pair is frequent enough, usually long before n_merges: reserve no
    // more than a corpus could use, not what a large --vocab-size asks for.
    let mut merges = Vec::with_capacity(n_merges.min(1 << 16));
    let mut changed: FxHashMap<(u32, u32), ()> = FxHashMap::default();
    let progress = fmlab_progress::bar(n_merges as u64, "merges");
    while merges.len() < n_merges {
        let Some((c, Reverse(pair))) = heap.pop() else { break };
        let cur = pair_count.get(&pair).copied().unwrap_or(0);
        if cur != c {
            // Stale entry (the count dropped since it was pushed); requeue at the true count.
            if cur > 0 {
                heap.push((cur, Reverse(pair)));
            }
            continue;
        }
        if (c as u64) < cfg.min_frequency.max(1) {
            break;
        }
        let new_id = vocab.len() as u32;
        let mut bytes = vocab[pair.0 as usize].clone();
        bytes.extend_from_slice(&vocab[pair.1 as usize]);
        vocab.push(bytes);
        merges.push((pair.0, pair.1, new_id));
        progress.inc(1);

        changed.clear();
        let word_ids = where_.remove(&pair).unwrap_or_default();
        for wi in word_ids {
            let w = &mut words[wi as usize];
            if !w.syms.windows(2).any(|p| p[0] == pair.0 && p[1] == pair.1) {
                continue; // stale index entry
            }
            // Subtract the word's old pairs, rewrite it, add its new pairs. Words are short, so
            // this local diff is cheaper and simpler than tracking each neighbour by hand.
            for p in w.syms.windows(2) {
                *pair_count.get_mut(&(p[0], p[1])).unwrap() -= w.count;
            }
            let mut out = Vec::with_capacity(w.syms.len());
            let mut i = 0;
            while i < w.syms.len() {
                if i + 1 < w.syms.len() && w.syms[i] == pair.0 && w.syms[i + 1] == pair.1 {
                    out.push(new_id);
                    i += 2;
                } else {
                    out.push(w.syms[i]);
                    i += 1;
                }
            }
            w.syms = out;
            for p in w.syms.windows(2) {
                let k = (p[0], p[1]);
                *pair_count.entry(k).or_insert(0) += w.count;
                if k.0 == new_id || k.1 == new_id {
                    let list = where_.entry(k).or_default();
                    if list.last() != Some(&wi) {
                        list.push(wi);
                    }
                    changed.insert(k, ());
                }
            }
        }
        pair_count.remove(&pair);
        // Only pairs with the new symbol can have grown; the others are fixed lazily on pop.
        let mut grown: Vec<(u32, u32)> = changed.keys().copied().collect();
        grown.sort_unstable();
        for k in grown {
            let c = pair_count[&k];
            if c > 0 {
                heap.push((c, Reverse(k)));
            }
        }
    }

    let mut specials = Vec::new();
    for s in &cfg.specials {
        specials.push((s.clone(), vocab.len() as u32));
        vocab.push(s.as_bytes().to_vec());
    }
    Tokenizer::from_parts(vocab, merges, specials, cfg.pattern.clone())
}
