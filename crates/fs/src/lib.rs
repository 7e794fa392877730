//! Crash-safe writes. Every artifact fmlab writes (tokenizers, checkpoints, shards, indexes) goes
//! through `write_atomic`: the bytes go to a temporary file in the same directory, are fsynced,
//! and the file is renamed over the target. A crash leaves the old file or the new one, never a
//! torn one, and a failed write removes its temporary file.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The temporary name for `path`: hidden, in the same directory (so the rename stays on one
/// filesystem), unique per process.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Writes the file through `fill`, then atomically replaces `path` with it (its folder is made
/// first if need be: an `--out runs/new/file` needs no mkdir).
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut io::BufWriter<File>) -> io::Result<()>) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = temp_path(path);
    let res = (|| {
        let mut w = io::BufWriter::new(File::create(&tmp)?);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The SHA-256 of a file's contents, as 64 lowercase hex digits (read in 1 MiB chunks).
pub fn sha256_file(path: &Path) -> io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Damaged copies of a file's bytes for the readers' robustness tests: `n` cases, seeded, each a
/// truncation, 1–4 flipped bits, a run of bytes overwritten with 0xff (huge lengths and counts),
/// or random bytes. A reader must turn every one into an error, never a panic or an abort.
pub fn mutations(bytes: &[u8], seed: u64, n: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move |m: usize| -> usize {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as usize % m.max(1)
    };
    (0..n).map(move |case| {
        let mut b = bytes.to_vec();
        match case % 4 {
            0 => b.truncate(next(bytes.len())),
            1 if !b.is_empty() => {
                for _ in 0..1 + next(4) {
                    let i = next(b.len());
                    b[i] ^= 1 << next(8);
                }
            }
            2 if !b.is_empty() => {
                // Mostly in the header, where lengths and counts live.
                let i = next(b.len().min(256));
                let len = (1 + next(8)).min(b.len() - i);
                b[i..i + len].fill(0xff);
            }
            _ => b = (0..next(300)).map(|_| next(256) as u8).collect(),
        }
        b
    })
}

/// The readers' robustness check, for tests: `read` must accept the undamaged file `good` and
/// turn each of `cases` damaged copies (`mutations`) into an error whose message names the
/// file (`name`); a panic inside `read` fails the calling test. The file is written under the
/// system temp folder.
pub fn check_reader_survives_damage(name: &str, good: &[u8], seed: u64, cases: usize, read: impl Fn(&Path) -> Result<(), String>) {
    let d = std::env::temp_dir().join(format!("fmlab-fuzz-{}-{}-{seed}", std::process::id(), name.replace(['/', '.'], "_")));
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
    let p = d.join(name);
    std::fs::write(&p, good).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    read(&p).unwrap_or_else(|e| panic!("the undamaged {name} does not read: {e}"));
    for (i, b) in mutations(good, seed, cases).enumerate() {
        std::fs::write(&p, &b).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        if let Err(e) = read(&p) {
            assert!(e.contains(name), "case {i}: the error does not name the file: {e}");
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// `write_atomic_with` for bytes already in memory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_vectors() {
        let d = std::env::temp_dir().join(format!("fmlab-fs-sha-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        // Longer than one read chunk.
        std::fs::write(&p, vec![b'a'; 1_000_000]).unwrap();
        assert_eq!(sha256_file(&p).unwrap(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn replaces_atomically_and_cleans_up_on_failure() {
        let d = std::env::temp_dir().join(format!("fmlab-fs-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("a.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let e = write_atomic_with(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("simulated crash"))
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"two", "a failed write leaves the old file");
        assert!(!temp_path(&p).exists(), "and no temporary file");
    }
}
