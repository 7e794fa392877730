//! The BPE model: vocabulary, ranked merges, special tokens; encode and decode.

use std::collections::BinaryHeap;
use std::cmp::Reverse;

use rayon::prelude::*;

use crate::fxhash::FxHashMap;
use crate::pretok::{Pattern, PreTokenizer};
use crate::Error;

/// A byte-level BPE tokenizer.
///
/// Ids index `vocab` (the bytes of each token). The 256 single bytes are tokens (`byte_ids`);
/// every other ordinary token is the result of one merge `(left, right) -> id`, applied in rank
/// order. Special tokens are whole strings matched before pre-tokenization.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    pub(crate) vocab: Vec<Vec<u8>>,
    pub(crate) byte_ids: [u32; 256],
    /// Merges in rank order: `merges[rank] = (left, right, new_id)`.
    pub(crate) merges: Vec<(u32, u32, u32)>,
    /// `(left, right) -> (rank, new_id)`.
    pub(crate) merge_map: FxHashMap<(u32, u32), (u32, u32)>,
    /// `(text, id)`, longest first so that a special that is a prefix of another loses the tie.
    pub(crate) specials: Vec<(String, u32)>,
    pub(crate) pretok: PreTokenizer,
}

/// Which special tokens `encode` recognizes in text. Special strings that are not allowed are
/// encoded as ordinary text.
#[derive(Clone, Debug)]
pub enum AllowedSpecial<'a> {
    All,
    None,
    Only(&'a [&'a str]),
}

impl AllowedSpecial<'_> {
    fn allows(&self, s: &str) -> bool {
        match self {
            AllowedSpecial::All => true,
            AllowedSpecial::None => false,
            AllowedSpecial::Only(list) => list.contains(&s),
        }
    }
}

/// Chunks with at most this many bytes are merged by a linear scan; longer ones (long runs of
/// spaces or symbols) by a heap, which keeps them O(n log n).
const LINEAR_MAX: usize = 96;
/// Chunks longer than this are not cached (they are rare and would bloat the cache).
const CACHE_MAX_LEN: usize = 64;
const CACHE_MAX_ENTRIES: usize = 1 << 18;

impl Tokenizer {
    /// Builds a tokenizer and checks its invariants: merge parts and results exist, the 256
    /// bytes are present, specials are in the vocabulary. Used by every loader.
    pub fn from_parts(
        vocab: Vec<Vec<u8>>,
        merges: Vec<(u32, u32, u32)>,
        specials: Vec<(String, u32)>,
        pattern: Pattern,
    ) -> Result<Tokenizer, Error> {
        let n = vocab.len() as u32;
        let mut byte_ids = [u32::MAX; 256];
        let special_ids: std::collections::HashSet<u32> = specials.iter().map(|s| s.1).collect();
        for (id, t) in vocab.iter().enumerate() {
            if t.len() == 1 && !special_ids.contains(&(id as u32)) && byte_ids[t[0] as usize] == u32::MAX {
                byte_ids[t[0] as usize] = id as u32;
            }
        }
        // Some vocabularies (SmolLM's) lack tokens for bytes that never occur in UTF-8 text; such
        // bytes are dropped when encoding, as HF's BPE does without an unknown token.
        if byte_ids.iter().all(|&i| i == u32::MAX) {
            return Err(Error::Format("vocabulary has no single-byte tokens".into()));
        }
        let mut merge_map = FxHashMap::default();
        for (rank, &(l, r, new)) in merges.iter().enumerate() {
            if l >= n || r >= n || new >= n {
                return Err(Error::Format(format!("merge {rank} refers to an id outside the vocabulary (size {n})")));
            }
            let mut joined = vocab[l as usize].clone();
            joined.extend_from_slice(&vocab[r as usize]);
            if joined != vocab[new as usize] {
                return Err(Error::Format(format!(
                    "merge {rank} ({l} + {r}) does not produce the bytes of token {new}"
                )));
            }
            // A pair listed twice keeps its first (lowest) rank, as GPT-2's code does.
            merge_map.entry((l, r)).or_insert((rank as u32, new));
        }
        for (s, id) in &specials {
            if *id >= n || vocab[*id as usize] != s.as_bytes() {
                return Err(Error::Format(format!("special token {s:?} is not token {id} of the vocabulary")));
            }
        }
        let mut specials = specials;
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let pretok = PreTokenizer::new(&pattern)?;
        Ok(Tokenizer { vocab, byte_ids, merges, merge_map, specials, pretok })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.vocab.get(id as usize).map(|v| v.as_slice())
    }
    pub fn merges(&self) -> &[(u32, u32, u32)] {
        &self.merges
    }
    pub fn specials(&self) -> &[(String, u32)] {
        &self.specials
    }
    pub fn special_id(&self, s: &str) -> Option<u32> {
        self.specials.iter().find(|x| x.0 == s).map(|x| x.1)
    }
    pub fn pattern(&self) -> Pattern {
        self.pretok.pattern()
    }
    pub fn pretokenizer(&self) -> &PreTokenizer {
        &self.pretok
    }

    /// A reusable encoder with its own chunk cache (one per thread).
    pub fn encoder(&self) -> Encoder<'_> {
        Encoder { tok: self, cache: FxHashMap::default(), syms: Vec::new() }
    }

    /// Encodes text with no special tokens recognized.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        self.encoder().encode_ordinary(text)
    }

    /// Encodes text, recognizing the allowed special tokens.
    pub fn encode(&self, text: &str, allowed: &AllowedSpecial) -> Vec<u32> {
        self.encoder().encode(text, allowed)
    }

    /// Like `encode` with all specials allowed, but fails if the text contains any special
    /// token string (tiktoken's default "disallowed" behaviour, for untrusted text).
    pub fn encode_checked(&self, text: &str) -> Result<Vec<u32>, Error> {
        if let Some((s, _)) = self.specials.iter().find(|(s, _)| text.contains(s.as_str())) {
            return Err(Error::DisallowedSpecial(s.clone()));
        }
        Ok(self.encode_ordinary(text))
    }

    /// Encodes arbitrary bytes. Valid UTF-8 runs are encoded as text (no specials); each maximal
    /// run of invalid bytes is its own chunk, merged as raw bytes.
    pub fn encode_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        self.encoder().encode_bytes(bytes)
    }

    /// Encodes many texts in parallel (one encoder and cache per worker thread).
    pub fn encode_batch(&self, texts: &[&str], allowed: &AllowedSpecial) -> Vec<Vec<u32>> {
        texts.par_iter().map_init(|| self.encoder(), |enc, t| enc.encode(t, allowed)).collect()
    }

    /// Decodes ids to bytes, exactly (lossless for any input that was encoded).
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let t = self.vocab.get(id as usize).ok_or(Error::UnknownId(id, self.vocab.len()))?;
            out.extend_from_slice(t);
        }
        Ok(out)
    }

    /// Decodes ids to a string; byte sequences that are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, Error> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// Finds the first allowed special token at or after `from`: (start, end, id).
    fn next_special(&self, text: &str, from: usize, allowed: &AllowedSpecial) -> Option<(usize, usize, u32)> {
        let mut best: Option<(usize, usize, u32)> = None;
        for (s, id) in &self.specials {
            if !allowed.allows(s) {
                continue;
            }
            // Searching only up to the best start found so far keeps this linear in practice.
            let hay_end = best.map_or(text.len(), |b| (b.0 + s.len()).min(text.len()));
            if let Some(p) = text[from..hay_end].find(s.as_str()) {
                let start = from + p;
                // Specials are sorted longest first, so an equal start keeps the longer one.
                if best.is_none_or(|b| start < b.0) {
                    best = Some((start, start + s.len(), *id));
                }
            }
        }
        best
    }

    /// Merges one chunk's bytes into token ids, appending to `out`.
    fn bpe_into(&self, piece: &[u8], syms: &mut Vec<u32>, out: &mut Vec<u32>) {
        syms.clear();
        syms.extend(piece.iter().map(|&b| self.byte_ids[b as usize]).filter(|&i| i != u32::MAX));
        if syms.len() <= 1 {
            out.extend_from_slice(syms);
            return;
        }
        if syms.len() <= LINEAR_MAX {
            self.merge_linear(syms);
        } else {
            self.merge_heap(syms);
        }
        out.extend_from_slice(syms);
    }

    #[inline]
    fn rank(&self, l: u32, r: u32) -> (u32, u32) {
        match self.merge_map.get(&(l, r)) {
            Some(&x) => x,
            None => (u32::MAX, 0),
        }
    }

    /// Repeatedly merges the lowest-ranked adjacent pair (leftmost on ties). `ranks[i]` caches the
    /// rank of pair (i, i+1) so each merge costs two lookups and one scan.
    fn merge_linear(&self, syms: &mut Vec<u32>) {
        let mut ranks: [(u32, u32); LINEAR_MAX] = [(u32::MAX, 0); LINEAR_MAX];
        let mut n = syms.len();
        for i in 0..n - 1 {
            ranks[i] = self.rank(syms[i], syms[i + 1]);
        }
        while n > 1 {
            let mut best = 0;
            let mut best_rank = ranks[0].0;
            for (i, r) in ranks[1..n - 1].iter().enumerate() {
                if r.0 < best_rank {
                    best_rank = r.0;
                    best = i + 1;
                }
            }
            if best_rank == u32::MAX {
                break;
            }
            syms[best] = ranks[best].1;
            syms.remove(best + 1);
            if best + 2 < n - 1 {
                ranks.copy_within(best + 2..n - 1, best + 1);
            }
            n -= 1;
            if best + 1 < n {
                ranks[best] = self.rank(syms[best], syms[best + 1]);
            }
            if best > 0 {
                ranks[best - 1] = self.rank(syms[best - 1], syms[best]);
            }
        }
    }

    /// The same merge order with a min-heap over (rank, position) and a linked list.
    fn merge_heap(&self, syms: &mut Vec<u32>) {
        let n = syms.len();
        let mut next: Vec<usize> = (1..=n).collect(); // n = end
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            let (r, _) = self.rank(syms[i], syms[i + 1]);
            if r != u32::MAX {
                heap.push(Reverse((r, i, syms[i], syms[i + 1])));
            }
        }
        while let Some(Reverse((r, i, l, rt))) = heap.pop() {
            let j = next.get(i).copied().unwrap_or(n);
            // Stale entry: the left or right symbol changed since it was pushed.
            if !alive[i] || j >= n || syms[i] != l || syms[j] != rt {
                continue;
            }
            syms[i] = self.rank(l, rt).1;
            debug_assert_eq!(self.rank(l, rt).0, r);
            alive[j] = false;
            let k = next[j];
            next[i] = k;
            if k < n {
                prev[k] = i;
                let (r2, _) = self.rank(syms[i], syms[k]);
                if r2 != u32::MAX {
                    heap.push(Reverse((r2, i, syms[i], syms[k])));
                }
            }
            let p = prev[i];
            if p < n {
                let (r2, _) = self.rank(syms[p], syms[i]);
                if r2 != u32::MAX {
                    heap.push(Reverse((r2, p, syms[p], syms[i])));
                }
            }
        }
        let mut w = 0;
        for i in 0..n {
            if alive[i] {
                syms[w] = syms[i];
                w += 1;
            }
        }
        syms.truncate(w);
    }
}

/// Encoding state that is worth keeping between calls: the chunk → ids cache and a scratch
/// buffer. Not shared between threads (no locks on the hot path).
pub struct Encoder<'a> {
    tok: &'a Tokenizer,
    cache: FxHashMap<Box<[u8]>, Box<[u32]>>,
    syms: Vec<u32>,
}

impl Encoder<'_> {
    #[inline]
    fn encode_chunk(&mut self, piece: &[u8], out: &mut Vec<u32>) {
        if piece.len() == 1 {
            let id = self.tok.byte_ids[piece[0] as usize];
            if id != u32::MAX {
                out.push(id);
            }
            return;
        }
        if piece.len() <= CACHE_MAX_LEN {
            if let Some(ids) = self.cache.get(piece) {
                out.extend_from_slice(ids);
                return;
            }
        }
        let start = out.len();
        self.tok.bpe_into(piece, &mut self.syms, out);
        if piece.len() <= CACHE_MAX_LEN && self.cache.len() < CACHE_MAX_ENTRIES {
            self.cache.insert(piece.into(), out[start..].into());
        }
    }

    pub fn encode_ordinary_into(&mut self, text: &str, out: &mut Vec<u32>) {
        let tok = self.tok;
        tok.pretok.split(text, |chunk| self.encode_chunk(chunk.as_bytes(), out));
    }

    pub fn encode_ordinary(&mut self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3);
        self.encode_ordinary_into(text, &mut out);
        out
    }

    pub fn encode_into(&mut self, text: &str, allowed: &AllowedSpecial, out: &mut Vec<u32>) {
        let mut pos = 0;
        if !matches!(allowed, AllowedSpecial::None) && !self.tok.specials.is_empty() {
            while let Some((s, e, id)) = self.tok.next_special(text, pos, allowed) {
                self.encode_ordinary_into(&text[pos..s], out);
                out.push(id);
                pos = e;
            }
        }
        self.encode_ordinary_into(&text[pos..], out);
    }

    pub fn encode(&mut self, text: &str, allowed: &AllowedSpecial) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3);
        self.encode_into(text, allowed, &mut out);
        out
    }

    pub fn encode_bytes(&mut self, mut bytes: &[u8]) -> Vec<u32> {
        let mut out = Vec::with_capacity(bytes.len() / 3);
        while !bytes.is_empty() {
            match std::str::from_utf8(bytes) {
                Ok(s) => {
                    self.encode_ordinary_into(s, &mut out);
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: from_utf8 on the prefix cannot fail.
                    self.encode_ordinary_into(std::str::from_utf8(&bytes[..valid]).unwrap(), &mut out);
                    // The maximal run of invalid bytes: keep consuming error spans.
                    let mut end = valid;
                    loop {
                        match std::str::from_utf8(&bytes[end..]) {
                            Err(e2) if e2.valid_up_to() == 0 => {
                                end += e2.error_len().unwrap_or(bytes.len() - end);
                            }
                            _ => break,
                        }
                    }
                    self.tok.bpe_into(&bytes[valid..end], &mut self.syms, &mut out);
                    bytes = &bytes[end..];
                }
            }
        }
        out
    }
}
