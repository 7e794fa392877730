//! Typed kernel ids: what a launch names instead of a string.
//!
//! A `Module` is one NVRTC compilation unit: its sources (common.cuh goes first), the architecture
//! it is built for, and the stems of the entry points it defines. A `Kernel` is one family of entry
//! points of one module — `unary` stands for unary_f32, unary_bf16, … — made by `Module::kernel`,
//! which refuses at compile time a stem its module does not list (a test holds each module's list
//! to its source text, both ways). A launch takes a `KernelId`: the kernel and the numbers and
//! dtypes that complete its name (`unary` + BF16 → unary_bf16, `lmce_lse_k` + 4 → lmce_lse_k4,
//! `cast` + F32 + BF16 → cast_f32_bf16), so the device looks it up in its own module, without
//! formatting a name per launch.
//!
//! A device compiles and loads a module the first time one of its kernels is launched, so no
//! list of modules is needed to run: the primitives' modules are defined here, each fused op's
//! beside the op in ops/, and a new fused op touches no file of the core. `ops::all_modules`
//! lists them all for the checks (the sources compile, the entries match them).

use crate::DType;

/// The target a module is compiled for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Arch {
    /// The device's own architecture (sm_80, sm_90, …).
    Device,
    /// `sm_90a` on an sm_90 device (wgmma, TMA), absent elsewhere: `CudaDevice::has_module`.
    Sm90a,
}

pub(crate) struct Module {
    pub name: &'static str,
    /// Concatenated after common.cuh, in order.
    pub sources: &'static [&'static str],
    pub arch: Arch,
    /// The stems of its `extern "C" __global__` entry points.
    pub entries: &'static [&'static str],
}

impl Module {
    /// The family `stem` of this module; a compile-time error where the module does not list it.
    pub const fn kernel(&'static self, stem: &'static str) -> Kernel {
        let mut i = 0;
        while i < self.entries.len() {
            if str_eq(self.entries[i], stem) {
                return Kernel { module: self, stem };
            }
            i += 1;
        }
        panic!("a kernel stem that its module's `entries` does not list");
    }

    /// Its sources after common.cuh, as NVRTC compiles them (without the tuning defines).
    pub fn source(&self) -> String {
        let mut s = format!("{}\n", COMMON);
        for p in self.sources {
            s.push_str(p);
        }
        s
    }
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A family of entry points of one module.
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    pub module: &'static Module,
    stem: &'static str,
}

impl PartialEq for Kernel {
    fn eq(&self, o: &Kernel) -> bool {
        self.stem == o.stem && self.module.name == o.module.name
    }
}
impl Eq for Kernel {}
impl std::hash::Hash for Kernel {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.module.name.hash(h);
        self.stem.hash(h);
    }
}

impl Kernel {
    /// `stem_<dtype>`.
    pub fn of(self, d: DType) -> KernelId {
        KernelId::from(self).of(d)
    }
    /// `stem_<a>_<b>` (cast_f32_bf16, ln_fwd_bf16_f32).
    pub fn of2(self, a: DType, b: DType) -> KernelId {
        KernelId::from(self).of(a).of(b)
    }
    /// `stem<n>` (lmce_lse_k4, fa_fwd_d64).
    pub fn n(self, n: u32) -> KernelId {
        KernelId::from(self).n(n)
    }
}

/// One entry point: a kernel family and what completes its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct KernelId {
    pub kernel: Kernel,
    nums: [u32; 3],
    n_nums: u8,
    types: [Option<DType>; 2],
}

impl From<Kernel> for KernelId {
    fn from(kernel: Kernel) -> KernelId {
        KernelId { kernel, nums: [0; 3], n_nums: 0, types: [None; 2] }
    }
}

impl KernelId {
    /// A number: the first right after the stem, the others after `_` (mlp_dgelu_rc_k4_1_0).
    pub fn n(mut self, n: u32) -> KernelId {
        assert!((self.n_nums as usize) < self.nums.len() && self.types[0].is_none(), "kernel id {self}: numbers come before dtypes, at most 3");
        self.nums[self.n_nums as usize] = n;
        self.n_nums += 1;
        self
    }
    /// Two dtype suffixes.
    pub fn of2(self, a: DType, b: DType) -> KernelId {
        self.of(a).of(b)
    }
    /// A dtype suffix, `_<name>`.
    pub fn of(mut self, d: DType) -> KernelId {
        let slot = self.types.iter().position(|t| t.is_none()).unwrap_or_else(|| panic!("kernel id {self}: at most 2 dtypes"));
        self.types[slot] = Some(d);
        self
    }
}

impl std::fmt::Display for KernelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kernel.stem)?;
        for (i, n) in self.nums[..self.n_nums as usize].iter().enumerate() {
            if i > 0 {
                f.write_str("_")?;
            }
            write!(f, "{n}")?;
        }
        for t in self.types.iter().flatten() {
            write!(f, "_{}", t.name())?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for KernelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (module {})", self, self.kernel.module.name)
    }
}

/// Prepended to every module.
pub(crate) const COMMON: &str = include_str!("kernels/common.cuh");

pub(crate) static ELEMENTWISE_KERNELS: Module = Module {
    name: "elementwise",
    sources: &[include_str!("kernels/elementwise.cu")],
    arch: Arch::Device,
    entries: &["unary", "unary_vec", "binary", "binary_vec", "binary_rowbc", "cmp", "where", "copy", "copy_w16", "fill", "cast", "memset_elems"],
};
pub(crate) static REDUCE_KERNELS: Module = Module { name: "reduce", sources: &[include_str!("kernels/reduce.cu")], arch: Arch::Device, entries: &["reduce", "reduce_all_part", "reduce_cols", "reduce_cols_final"] };
pub(crate) static INDEX_KERNELS: Module = Module { name: "index", sources: &[include_str!("kernels/index.cu")], arch: Arch::Device, entries: &["index_select", "index_add", "gather", "scatter_add"] };

/// The primitives' modules.
pub(crate) const CORE: &[&Module] = &[&ELEMENTWISE_KERNELS, &REDUCE_KERNELS, &INDEX_KERNELS];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_spell_the_kernel_names() {
        assert_eq!(ELEMENTWISE_KERNELS.kernel("unary").of(DType::BF16).to_string(), "unary_bf16");
        assert_eq!(ELEMENTWISE_KERNELS.kernel("cast").of2(DType::F32, DType::BF16).to_string(), "cast_f32_bf16");
        assert_eq!(KernelId::from(ELEMENTWISE_KERNELS.kernel("memset_elems")).to_string(), "memset_elems");
        assert_eq!(REDUCE_KERNELS.kernel("reduce").n(4).n(1).n(0).to_string(), "reduce4_1_0");
        assert_eq!(INDEX_KERNELS.kernel("gather").n(2).of(DType::F16).of(DType::F32).to_string(), "gather2_f16_f32");
    }
}
