//! Records the git commit the binary is built from (`FMLAB_BUILD_COMMIT`), with `-dirty` when the
//! tracked files differ from it. The ledger writes this, not the commit of whatever folder the
//! binary later runs in: a binary carried to another machine ran this code, not that folder's.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let v = if commit.is_empty() { String::new() } else if dirty { format!("{commit}-dirty") } else { commit };
    println!("cargo:rustc-env=FMLAB_BUILD_COMMIT={v}");
    // Re-run when HEAD moves, the index changes (commit, add) or any crate's source changes (the
    // dirty flag); the cli crate is rebuilt on those anyway, so this costs one `git status`.
    if let Some(top) = git(&["rev-parse", "--show-toplevel"]) {
        for p in [".git/HEAD", ".git/index", "crates"] {
            println!("cargo:rerun-if-changed={top}/{p}");
        }
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={top}/.git/{r}");
        }
    }
}
