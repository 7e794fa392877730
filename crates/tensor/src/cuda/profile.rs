//! Per-kernel time breakdown for finding where a step's time goes: with FMLAB_CUDA_PROFILE=1,
//! every launch and GEMM is bracketed by stream synchronizations and its wall time added to its
//! kernel's row. This serializes the host and device, so totals exceed an unprofiled step; the
//! shares are what it is for.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use super::CudaDevice;

pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FMLAB_CUDA_PROFILE").is_some_and(|v| v != "0"))
}

static TABLE: Mutex<Option<HashMap<String, (u64, f64)>>> = Mutex::new(None);

pub(crate) struct Scope<'a> {
    dev: &'a CudaDevice,
    name: &'a str,
    t: Option<Instant>,
}

impl<'a> Scope<'a> {
    pub fn new(dev: &'a CudaDevice, name: &'a str) -> Scope<'a> {
        // Inside a graph capture nothing runs: there is nothing to time.
        let t = (enabled() && !dev.is_capturing()).then(|| {
            let _ = dev.stream.synchronize();
            Instant::now()
        });
        Scope { dev, name, t }
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.t {
            let _ = self.dev.stream.synchronize();
            let dt = t.elapsed().as_secs_f64();
            let mut g = TABLE.lock().unwrap();
            let e = g.get_or_insert_with(HashMap::new).entry(self.name.to_string()).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += dt;
        }
    }
}

/// Clears the table (call after warm-up).
pub fn reset() {
    *TABLE.lock().unwrap() = None;
}

/// Rows (kernel, calls, seconds), largest first; empty unless FMLAB_CUDA_PROFILE is set.
pub fn report() -> Vec<(String, u64, f64)> {
    let g = TABLE.lock().unwrap();
    let mut v: Vec<(String, u64, f64)> = g.as_ref().map(|m| m.iter().map(|(k, (n, t))| (k.clone(), *n, *t)).collect()).unwrap_or_default();
    v.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap());
    v
}
