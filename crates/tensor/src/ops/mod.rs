//! The fused ops, one file each: its `CustomOp` (CPU forward, CUDA launch, backward), the public
//! `Tensor` method that picks it or its `_slow` twin, and the twin itself, composed of primitives,
//! that the tests hold it to. Each op's CUDA source sits beside it (gelu.rs, gelu.cu) as a kernel
//! `Module` (cuda/kernel.rs), listed in `MODULES`.
//!
//! - `cross_entropy`, `softmax` (scaled, causal), `layer_norm` (+ the residual add), `gelu`
//! - `linear` and `mlp` (bias and GELU on cuBLASLt epilogues, the Hopper MLP backward)
//! - `classifier` (LM head + cross-entropy in row chunks), `flash` (flash attention) behind
//!   `attention`, whose mask is `mask`
//! - `multi_tensor`: the optimizer step's kernels (AdamW, gradient norm, casts); no backward
//!
//! Files here import the core and each other downwards only (classifier → linear,
//! cross_entropy; mlp → linear, gelu, sm90; attention → flash → mask).

pub(crate) mod attention;
pub(crate) mod classifier;
pub(crate) mod contrastive;
pub(crate) mod cross_entropy;
pub(crate) mod flash;
pub(crate) mod gelu;
pub(crate) mod layer_norm;
pub(crate) mod linear;
pub(crate) mod mask;
pub(crate) mod mlp;
pub(crate) mod multi_tensor;
pub(crate) mod sm90;
pub(crate) mod softmax;

/// The fused ops' kernel modules (a device loads each on first use).
pub(crate) const MODULES: &[&crate::cuda::kernel::Module] = &[
    &cross_entropy::KERNELS,
    &classifier::KERNELS,
    &classifier::KERNELS_SM90,
    &softmax::KERNELS,
    &layer_norm::KERNELS,
    &gelu::KERNELS,
    &linear::KERNELS,
    &mlp::KERNELS_SM90,
    &flash::KERNELS,
    &flash::KERNELS_SM90,
    &multi_tensor::KERNELS,
];

/// Every kernel module: the core's and the fused ops'.
pub(crate) fn all_modules() -> impl Iterator<Item = &'static crate::cuda::kernel::Module> {
    crate::cuda::kernel::CORE.iter().chain(MODULES.iter()).copied()
}

/// Compiles every kernel module for `arch` without a GPU (only libnvrtc is needed): the check
/// that the sources build, run by the test command with NVRTC fetched by pip. The sm_90a modules
/// compile along with `arch` sm_90.
pub fn compile_all(arch: &str) -> Result<usize, crate::cuda::CudaError> {
    use crate::cuda::kernel::Arch;
    let mut total = 0;
    for m in all_modules() {
        let karch = match m.arch {
            Arch::Device => arch,
            Arch::Sm90a if arch == "sm_90" => "sm_90a",
            Arch::Sm90a => continue,
        };
        total += crate::cuda::nvrtc_cubin(m.name, &m.source(), karch)?.len();
    }
    Ok(total)
}

pub use attention::{attention, attention_slow};
pub use mask::AttnMask;
pub use mlp::MlpGelu;
pub use multi_tensor::{adamw_update, adamw_update_all, adamw_update_all_dev, cast_all, clip_coef, sum_squares_all, AdamItem};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::kernel::{Module, COMMON};

    /// The names after `__global__ void` (and any `__launch_bounds__(…)`) in a source.
    fn defined(src: &str) -> Vec<String> {
        let mut out = Vec::new();
        for part in src.split("__global__").skip(1) {
            // `void` and `__launch_bounds__(…)` come in either order.
            let mut rest = part.trim_start();
            loop {
                if let Some(r) = rest.strip_prefix("void") {
                    rest = r.trim_start();
                } else if let Some(r) = rest.strip_prefix("__launch_bounds__") {
                    let mut depth = 0;
                    let mut end = r.len();
                    for (i, c) in r.char_indices() {
                        match c {
                            '(' => depth += 1,
                            ')' => {
                                depth -= 1;
                                if depth == 0 {
                                    end = i + 1;
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    rest = r[end..].trim_start();
                } else {
                    break;
                }
            }
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '#').collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
        out
    }

    /// Whether the defined name `d` (with `##` pasting) belongs to the family `stem`: the stem,
    /// then nothing, a number, `_` + more, or a paste.
    fn in_family(d: &str, stem: &str) -> bool {
        let Some(rest) = d.strip_prefix(stem) else { return false };
        rest.is_empty() || rest.starts_with('_') || rest.starts_with("##") || rest.starts_with(|c: char| c.is_ascii_digit())
    }

    /// Each module lists every entry point its sources define, and each listed stem is defined.
    #[test]
    fn module_entries_match_their_sources() {
        let all: Vec<&Module> = all_modules().collect();
        assert!(all.len() >= 14, "{} modules", all.len());
        for m in &all {
            // FA_HELPERS_ONLY drops flash.cu's own kernels from flash_sm90's unit.
            let src: String = m.sources.concat();
            let src = if src.contains("#define FA_HELPERS_ONLY") { src.replace(include_str!("flash.cu"), "") } else { src };
            let names = defined(&src);
            assert!(!names.is_empty(), "module {}: no kernels found", m.name);
            for d in &names {
                // The most specific stem: `copy_w16` is not a `copy`.
                assert!(m.entries.iter().any(|s| in_family(d, s)), "module {}: kernel `{d}` is defined but not in `entries`", m.name);
            }
            for s in m.entries {
                assert!(names.iter().any(|d| in_family(d, s)), "module {}: entry `{s}` has no definition in its sources", m.name);
            }
        }
        let mut names: Vec<&str> = all.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "two modules share a name");
    }

    /// NVRTC does not fold a division by a zero literal: `-1.0 / 0.0` became an IEEE division
    /// with a slow-path call at every use, once per masked score in flash attention and once per
    /// 8 logits in the fused classifier (measured: flash forward 0.31 → 0.13 ms with this and the
    /// other fixes of that commit). Infinities are written by their bits (`inf_of`, `FA_INF`).
    #[test]
    fn kernel_sources_spell_infinities_by_their_bits() {
        let mut files: Vec<(&str, &str)> = vec![("common.cuh", COMMON)];
        for m in all_modules() {
            files.extend(m.sources.iter().map(|s| (m.name, *s)));
        }
        for (name, src) in files {
            for (i, line) in src.lines().enumerate() {
                let code = line.split("//").next().unwrap().replace(' ', "");
                for pat in ["/0.0", "/0.f", "/0)", "/0;"] {
                    assert!(!code.contains(pat), "{name}:{}: a division by a zero literal ({pat}) compiles to a runtime IEEE division: {line}", i + 1);
                }
            }
        }
    }
}
