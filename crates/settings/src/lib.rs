//! Every `FMLAB_*` environment setting in one table, with its default and what it does, read
//! once (at the first lookup of any setting) and never again: nothing reads the environment on a
//! hot path, and `fmlab settings` prints the table. A lookup of a name that is not in the table
//! is a programmer bug and panics; a test holds the crates' sources to the table.
//!
//! Kernel toggles that benchmarks and tests also flip from code are `Switch`es: a call's answer
//! if one was given, else the environment's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::OnceLock;

/// One setting: its variable, its default (as the code applies it) and what it does.
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

const fn s(name: &'static str, default: &'static str, doc: &'static str) -> Setting {
    Setting { name, default, doc }
}

/// The table, grouped: paths, then kernel choices (on unless "0"), then diagnostics.
pub const ALL: &[Setting] = &[
    s("FMLAB_CACHE", "the first of ./.cache/fmlab, <repo of the binary>/.cache/fmlab, ~/.cache/fmlab that exists", "where fetched assets (corpora, tokenizers, weights) live; compiled kernels go in its kernels/ unless FMLAB_KERNEL_CACHE is set"),
    s("FMLAB_KERNEL_CACHE", "$FMLAB_CACHE/kernels, else ~/.cache/fmlab/kernels", "where NVRTC-compiled kernels are kept, keyed by source hash and GPU arch"),
    s("FMLAB_CUDA_LIBS", "(unset)", "':'-separated folders searched first for libcuda, libnvrtc and libcublasLt"),
    s("FMLAB_CUDA_DEFINES", "(unset)", "','-separated NAME=VALUE defines for every kernel compile (e.g. FA_WARPS=8)"),
    s("FMLAB_FLASH", "on", "flash attention where its kernels take the inputs; 0: the composite attention everywhere"),
    s("FMLAB_FLASH_SM90", "on", "head_dim-32 flash attention on Hopper by the wgmma kernels (flash_sm90.cu); 0: the mma.sync kernels"),
    s("FMLAB_CE_SM90", "on", "the fused classifier's Hopper kernels (classifier_sm90.cu); 0: a cuBLASLt logits GEMM and a cross-entropy kernel"),
    s("FMLAB_CE_DH", "on", "the Hopper classifier's gradient pass also makes dH = g·W; 0: a GEMM reads g back"),
    s("FMLAB_CE_SMEM", "on", "the classifier's cross-entropy streams rows through shared memory (ce_stream); 0: the two-pass kernel"),
    s("FMLAB_MLP_SM90", "on", "the GELU MLP's backward by one Hopper kernel (mlp_sm90.cu); 0: cuBLASLt's DGELU epilogue and a column sum"),
    s("FMLAB_MLP_RECOMPUTE", "on", "the Hopper MLP keeps no pre-activation and its backward makes it again; 0: keep it"),
    s("FMLAB_EPILOGUE", "on", "biases and GELU on cuBLASLt epilogues (linear, mlp_gelu); 0: separate ops"),
    s("FMLAB_DW_SPLIT", "on", "mixed-precision weight gradients as f32 GEMMs with the bias gradient from a column sum; 0: the bias-gradient epilogue"),
    s("FMLAB_LN_SUMS", "on", "bias gradients taken from the column sums the fused LayerNorm backward makes; 0: colsum16 passes"),
    s("FMLAB_GEMM_TUNE", "1", "cuBLASLt heuristics tried per GEMM shape (1-32); above 1 the fastest is timed and kept"),
    s("FMLAB_GRAPH_MEMSETS", "(unset)", "'keep': CUDA graphs keep cuBLASLt's memset nodes instead of replacing them by kernel nodes"),
    s("FMLAB_CUDA_SYNC", "(unset)", "set: synchronize after every kernel launch, so a fault names its kernel (slow; not inside graph capture)"),
    s("FMLAB_CUDA_PROFILE", "(unset)", "set (not 0): time every kernel and copy with events and print a profile per step"),
    s("FMLAB_GEMM_LOG", "(unset)", "set: log each GEMM's shape, layout and chosen algorithm"),
    s("FMLAB_GEMM_TUNE_LOG", "(unset)", "set: log the autotuner's timings"),
    s("FMLAB_MEMSET_LOG", "(unset)", "set: log every device memset"),
];

fn values() -> &'static HashMap<&'static str, Option<String>> {
    static V: OnceLock<HashMap<&'static str, Option<String>>> = OnceLock::new();
    V.get_or_init(|| ALL.iter().map(|s| (s.name, std::env::var(s.name).ok())).collect())
}

fn lookup(name: &str) -> Option<&'static str> {
    match values().get(name) {
        Some(v) => v.as_deref(),
        None => panic!("setting {name} is not in fmlab-settings' table (crates/settings/src/lib.rs)"),
    }
}

/// The setting's value as the environment gave it at the first lookup, if it was set.
pub fn string(name: &str) -> Option<String> {
    lookup(name).map(str::to_string)
}

/// A default-on toggle: on unless set to "0".
pub fn on(name: &str) -> bool {
    lookup(name).is_none_or(|v| v != "0")
}

/// A default-off flag: on when set to anything but "0".
pub fn enabled(name: &str) -> bool {
    lookup(name).is_some_and(|v| v != "0")
}

/// Whether the variable was set at all (to anything, "0" included).
pub fn present(name: &str) -> bool {
    lookup(name).is_some()
}

/// The table as text (`fmlab settings`): each setting, its value here, its default, what it does.
pub fn table() -> String {
    let mut out = String::from("| setting | here | default | what it does |\n|---|---|---|---|\n");
    for s in ALL {
        let here = lookup(s.name).unwrap_or("-");
        out.push_str(&format!("| {} | {} | {} | {} |\n", s.name, here, s.default, s.doc));
    }
    out
}

/// A process-wide on/off for a kernel path that benchmarks and tests compare against its
/// alternative: set by a call (`set(Some(on))`), else the environment's default-on toggle
/// (`on`). `set(None)` goes back to the environment's answer.
pub struct Switch {
    /// 0: the environment's answer; 1: on; 2: off.
    set: AtomicU8,
    name: &'static str,
    /// The environment's answer, looked up once (switches are read on every kernel launch).
    env: OnceLock<bool>,
}

impl Switch {
    pub const fn new(name: &'static str) -> Self {
        Switch { set: AtomicU8::new(0), name, env: OnceLock::new() }
    }

    pub fn set(&self, on: Option<bool>) {
        self.set.store(on.map_or(0, |on| if on { 1 } else { 2 }), Relaxed);
    }

    pub fn on(&self) -> bool {
        match self.set.load(Relaxed) {
            0 => *self.env.get_or_init(|| on(self.name)),
            s => s == 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_overrides_the_environment_and_none_restores_it() {
        static S: Switch = Switch::new("FMLAB_MLP_RECOMPUTE");
        let env = on("FMLAB_MLP_RECOMPUTE");
        S.set(Some(false));
        assert!(!S.on());
        S.set(Some(true));
        assert!(S.on());
        S.set(None);
        assert_eq!(S.on(), env, "back to the environment's answer");
    }

    #[test]
    #[should_panic(expected = "not in fmlab-settings' table")]
    fn an_unregistered_name_is_a_bug() {
        on("FMLAB_NO_SUCH_SETTING");
    }

    /// Every `FMLAB_` name the crates' sources use is in the table (build-time and test-only
    /// names aside), and every name in the table is used somewhere.
    #[test]
    fn the_table_matches_the_sources() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut used = std::collections::BTreeSet::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                if p.is_dir() {
                    if name != "tests" && name != "examples" && name != "settings" {
                        stack.push(p);
                    }
                } else if name.ends_with(".rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for (i, _) in text.match_indices("\"FMLAB_") {
                        let n: String = text[i + 1..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
                        used.insert((n, p.display().to_string()));
                    }
                }
            }
        }
        let known: std::collections::BTreeSet<&str> = ALL.iter().map(|s| s.name).collect();
        for (n, file) in &used {
            assert!(known.contains(n.as_str()) || n == "FMLAB_BUILD_COMMIT", "{file} uses {n}, which is not in the settings table");
        }
        for k in &known {
            assert!(used.iter().any(|(n, _)| n == k), "{k} is in the table but no source uses it");
        }
    }
}
