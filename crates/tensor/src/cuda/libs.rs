//! Finding the CUDA libraries at run time.
//!
//! cudarc (`dynamic-loading`) dlopen()s libcuda, libnvrtc and libcublasLt by bare soname, which
//! only finds them on the loader path. The lent GPU machine keeps them in the toolkit folder and in
//! PyTorch's pip wheels, off that path. We dlopen each by full path first (RTLD_GLOBAL): glibc then
//! answers cudarc's later dlopen of the same soname with the library already loaded, so no
//! LD_LIBRARY_PATH and no re-exec are needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::CudaError;

/// (soname, what it is for)
const LIBS: &[(&str, &str)] = &[("libcuda.so.1", "the NVIDIA driver"), ("libnvrtc.so.13", "NVRTC, the run-time kernel compiler"), ("libcublasLt.so.13", "cuBLASLt, the GEMM library")];

/// Folders searched, in order: $FMLAB_CUDA_LIBS (':'-separated), the toolkit ($CUDA_HOME,
/// /usr/local/cuda), the NVIDIA wheels of any Python environment under /opt, /usr and the home
/// folder, then the system library folders.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    if let Some(s) = crate::settings::string("FMLAB_CUDA_LIBS") {
        v.extend(s.split(':').filter(|p| !p.is_empty()).map(PathBuf::from));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(h) = std::env::var(var) {
            v.push(Path::new(&h).join("lib64"));
        }
    }
    v.push("/usr/local/cuda/lib64".into());
    v.push("/usr/local/cuda/targets/x86_64-linux/lib".into());
    let mut py_roots: Vec<PathBuf> = vec![];
    // Python environments: <root>/lib/python3.*/{site,dist}-packages/nvidia/cu13/lib
    let mut env_roots: Vec<PathBuf> = vec!["/usr".into(), "/usr/local".into()];
    if let Ok(home) = std::env::var("HOME") {
        env_roots.push(Path::new(&home).join(".local"));
    }
    for top in ["/opt"] {
        if let Ok(rd) = std::fs::read_dir(top) {
            for e in rd.flatten() {
                env_roots.push(e.path());
                env_roots.push(e.path().join(".venv"));
                env_roots.push(e.path().join("venv"));
            }
        }
    }
    for r in env_roots {
        let lib = r.join("lib");
        if let Ok(rd) = std::fs::read_dir(&lib) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("python3") {
                    for sp in ["site-packages", "dist-packages"] {
                        py_roots.push(e.path().join(sp).join("nvidia"));
                    }
                }
            }
        }
    }
    for p in py_roots {
        v.push(p.join("cu13").join("lib"));
        v.push(p.join("cublas").join("lib"));
        v.push(p.join("cuda_nvrtc").join("lib"));
    }
    v.extend(["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/nvidia/lib64"].map(PathBuf::from));
    v
}

fn open_global(p: &Path) -> bool {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    match unsafe { Library::open(Some(p), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(lib) => {
            std::mem::forget(lib); // stays loaded for the life of the process
            true
        }
        Err(_) => false,
    }
}

fn load(soname: &str, what: &str) -> Result<(), CudaError> {
    // Already on the loader path (ld.so.cache, LD_LIBRARY_PATH)?
    if open_global(Path::new(soname)) {
        return Ok(());
    }
    let dirs = search_dirs();
    if dirs.iter().map(|d| d.join(soname)).any(|p| p.is_file() && open_global(&p)) {
        return Ok(());
    }
    let searched: Vec<String> = dirs.iter().filter(|d| d.is_dir()).map(|d| d.display().to_string()).collect();
    Err(CudaError::LibraryMissing {
        lib: soname.to_string(),
        what: what.to_string(),
        searched: if searched.is_empty() { "(none of the usual folders exist)".into() } else { searched.join(", ") },
    })
}

/// Loads every library once; the error names the first missing one and where it looked.
pub fn preload() -> Result<(), CudaError> {
    static DONE: OnceLock<Result<(), CudaError>> = OnceLock::new();
    DONE.get_or_init(|| LIBS.iter().try_for_each(|(s, w)| load(s, w))).clone()
}

/// Only NVRTC (compiling kernels needs no driver or GPU).
pub fn preload_nvrtc() -> Result<(), CudaError> {
    static DONE: OnceLock<Result<(), CudaError>> = OnceLock::new();
    DONE.get_or_init(|| load(LIBS[1].0, LIBS[1].1)).clone()
}
