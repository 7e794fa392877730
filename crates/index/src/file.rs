//! The index file, little-endian:
//! ```text
//! magic b"FMLABHNS"  version u32 = 1
//! header: metric u32, dim u32, M u32, M0 u32, ef_construction u32, seed u64, n u64,
//!         entry u32 (u32::MAX if empty), max_level u32, upper_words u64, payload_bytes u64
//! levels      n × u8
//! deleted     n × u8
//! level-0     n × (1 + M0 + dim) × u32      (the packed arena, vectors as f32 bits)
//! upper       upper_words × u32             (layers 1..=L of each point with L > 0, in id order)
//! payloads    payload_bytes of JSON (an array of objects, or empty)
//! checksum    u64 over every byte after the magic and version
//! ```
//! Written to a temporary file, fsynced and renamed; loaded through a memory map and checked
//! (size, version, checksum) before use.

use std::path::Path;
use std::sync::Mutex;

use crate::distance::{self, Metric};
use crate::filter::Payload;
use crate::hnsw::{Hnsw, HnswParams};
use crate::IndexError;

const MAGIC: &[u8; 8] = b"FMLABHNS";
const VERSION: u32 = 1;

/// A 64-bit multiply-xorshift checksum over 8-byte words (fast enough for 100s of MB).
fn checksum(b: &[u8]) -> u64 {
    let mut h: u64 = 0x9E3779B97F4A7C15 ^ b.len() as u64;
    let words = b.chunks_exact(8);
    let rest = words.remainder();
    for w in words {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0xBF58476D1CE4E5B9).rotate_left(29);
    }
    for &x in rest {
        h = (h ^ x as u64).wrapping_mul(0x94D049BB133111EB);
    }
    h ^ (h >> 31)
}

pub fn save(h: &Hnsw, payloads: Option<&[Payload]>, path: &Path) -> Result<(), IndexError> {
    use std::io::Write;
    let n = h.len();
    let (arena, upper) = (&h.arena, &h.upper);
    let upper_words = upper.len();
    let payload_json = match payloads {
        Some(p) => serde_json::to_vec(p).map_err(|e| IndexError::Format(format!("payloads: {e}")))?,
        None => Vec::new(),
    };
    let (entry, max_level) = h.entry.lock().unwrap().map_or((u32::MAX, 0), |(e, l)| (e, l as u32));
    let mut body = Vec::with_capacity(64 + n * 2 + arena.len() * 4 + upper_words * 4 + payload_json.len());
    for x in [h.metric.code(), h.dim as u32, h.m as u32, h.m0 as u32, h.ef_construction as u32] {
        body.extend_from_slice(&x.to_le_bytes());
    }
    body.extend_from_slice(&h.seed.to_le_bytes());
    body.extend_from_slice(&(n as u64).to_le_bytes());
    body.extend_from_slice(&entry.to_le_bytes());
    body.extend_from_slice(&max_level.to_le_bytes());
    body.extend_from_slice(&(upper_words as u64).to_le_bytes());
    body.extend_from_slice(&(payload_json.len() as u64).to_le_bytes());
    body.extend_from_slice(&h.levels);
    body.extend(h.deleted.iter().map(|&d| d as u8));
    for w in arena {
        body.extend_from_slice(&w.to_le_bytes());
    }
    for w in upper {
        body.extend_from_slice(&w.to_le_bytes());
    }
    body.extend_from_slice(&payload_json);
    let sum = checksum(&body);
    fmlab_fs::write_atomic_with(path, |f| {
        f.write_all(MAGIC)?;
        f.write_all(&VERSION.to_le_bytes())?;
        f.write_all(&body)?;
        f.write_all(&sum.to_le_bytes())
    })
    .map_err(|e| IndexError::file(path, e))
}

pub fn load(path: &Path) -> Result<(Hnsw, Option<Vec<Payload>>), IndexError> {
    let f = std::fs::File::open(path).map_err(|e| IndexError::file(path, e))?;
    // SAFETY: the map is read-only and dropped before return; a concurrent truncation by another
    // process is the only hazard, as with any mmap.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| IndexError::file(path, e))?;
    let b: &[u8] = &map;
    let bad = |m: &str| IndexError::file(path, format!("{m} (not an fmlab index, or truncated/corrupted)"));
    if b.len() < 12 + 8 || &b[..8] != MAGIC {
        return Err(bad("bad magic"));
    }
    let version = u32::from_le_bytes(b[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(IndexError::file(path, format!("index format version {version}; this fmlab reads version {VERSION}")));
    }
    let body = &b[12..b.len() - 8];
    let stored = u64::from_le_bytes(b[b.len() - 8..].try_into().unwrap());
    if checksum(body) != stored {
        return Err(bad("checksum mismatch"));
    }
    let mut pos = 0usize;
    let mut take = |k: usize| -> Result<&[u8], IndexError> {
        let s = body.get(pos..pos + k).ok_or_else(|| bad("short body"))?;
        pos += k;
        Ok(s)
    };
    let u32_ = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap());
    let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap());
    let metric = Metric::from_code(u32_(take(4)?)).ok_or_else(|| bad("unknown metric"))?;
    let dim = u32_(take(4)?) as usize;
    let m = u32_(take(4)?) as usize;
    let m0 = u32_(take(4)?) as usize;
    let efc = u32_(take(4)?) as usize;
    let seed = u64_(take(8)?);
    let n = u64_(take(8)?) as usize;
    let entry = u32_(take(4)?);
    let max_level = u32_(take(4)?) as usize;
    let upper_words = u64_(take(8)?) as usize;
    let payload_bytes = u64_(take(8)?) as usize;
    if m0 != 2 * m || dim == 0 {
        return Err(bad("inconsistent header"));
    }
    let mut h = Hnsw::empty(metric, dim, HnswParams { m, ef_construction: efc, seed });
    h.levels = take(n)?.to_vec();
    h.deleted = take(n)?.iter().map(|&d| d != 0).collect();
    h.n_deleted = h.deleted.iter().filter(|&&d| d).count();
    let arena: Vec<u32> = take(n * h.rec * 4)?.chunks_exact(4).map(u32_).collect();
    let flat: Vec<u32> = take(upper_words * 4)?.chunks_exact(4).map(u32_).collect();
    let payloads = if payload_bytes > 0 {
        let p: Vec<Payload> = serde_json::from_slice(take(payload_bytes)?).map_err(|e| bad(&format!("payloads: {e}")))?;
        Some(p)
    } else {
        None
    };
    h.arena = arena;
    h.set_upper_layout();
    if h.upper.len() != flat.len() {
        return Err(bad("upper layers do not match the levels"));
    }
    h.upper = flat;
    h.refresh_ptrs();
    h.locks = (0..n).map(|_| Mutex::new(())).collect();
    *h.entry.lock().unwrap() = if entry == u32::MAX { None } else { Some((entry, max_level)) };
    let _ = distance::select; // kernel chosen again for this CPU by Hnsw::empty
    Ok((h, payloads))
}
