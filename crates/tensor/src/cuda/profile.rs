//! Per-kernel time breakdown for finding where a step's time goes: with FMLAB_CUDA_PROFILE=1,
//! every launch and GEMM is bracketed by two events recorded on its stream, and the GPU time
//! between them is added to its kernel's row when the table is read. Nothing waits in between,
//! so the step runs as it would unprofiled, but for the host's cost of recording two events per
//! launch (about a microsecond each), which matters only where the step is host-bound.
//! (Before session 8 the launches were bracketed by synchronizations instead, which added ~9 µs
//! of idle GPU per launch to each row.)

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cudarc::driver::{result as drv, sys};

use super::CudaDevice;

pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| crate::settings::enabled("FMLAB_CUDA_PROFILE"))
}

#[derive(Default)]
struct State {
    /// kernel → (calls, seconds)
    table: HashMap<String, (u64, f64)>,
    /// Bracketed launches not yet read back: (kernel, start event, end event).
    open: Vec<(String, usize, usize)>,
    /// Events to reuse.
    spare: Vec<usize>,
}

// The events are only touched under the mutex.
unsafe impl Send for State {}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn event(st: &mut State) -> Option<usize> {
    if let Some(e) = st.spare.pop() {
        return Some(e);
    }
    drv::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).ok().map(|e| e as usize)
}

fn record(e: usize, dev: &CudaDevice) -> bool {
    unsafe { drv::event::record(e as sys::CUevent, dev.cu_stream()) }.is_ok()
}

pub(crate) struct Scope<'a> {
    dev: &'a CudaDevice,
    name: &'a str,
    start: Option<usize>,
}

impl<'a> Scope<'a> {
    pub fn new(dev: &'a CudaDevice, name: &'a str) -> Scope<'a> {
        // Inside a graph capture nothing runs: there is nothing to time.
        let start = (enabled() && !dev.is_capturing()).then(|| {
            dev.bind();
            let mut g = STATE.lock().unwrap();
            event(g.get_or_insert_with(State::default)).filter(|&e| record(e, dev))
        });
        Scope { dev, name, start: start.flatten() }
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        let Some(start) = self.start else { return };
        let mut g = STATE.lock().unwrap();
        let st = g.get_or_insert_with(State::default);
        match event(st).filter(|&e| record(e, self.dev)) {
            Some(end) => st.open.push((self.name.to_string(), start, end)),
            None => st.spare.push(start),
        }
    }
}

/// Reads back every bracketed launch (waits for each end event) into the table.
fn settle(st: &mut State) {
    for (name, a, b) in std::mem::take(&mut st.open) {
        let ms = unsafe { drv::event::synchronize(b as sys::CUevent) }.and_then(|_| unsafe { drv::event::elapsed(a as sys::CUevent, b as sys::CUevent) });
        if let Ok(ms) = ms {
            let e = st.table.entry(name).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += ms as f64 * 1e-3;
        }
        st.spare.extend([a, b]);
    }
}

/// Clears the table (call after warm-up).
pub fn reset() {
    let mut g = STATE.lock().unwrap();
    if let Some(st) = g.as_mut() {
        settle(st);
        st.table.clear();
    }
}

/// Rows (kernel, calls, seconds of GPU time), largest first; empty unless FMLAB_CUDA_PROFILE is
/// set. Waits for the bracketed work to finish.
pub fn report() -> Vec<(String, u64, f64)> {
    let mut g = STATE.lock().unwrap();
    let Some(st) = g.as_mut() else { return Vec::new() };
    settle(st);
    let mut v: Vec<(String, u64, f64)> = st.table.iter().map(|(k, (n, t))| (k.clone(), *n, *t)).collect();
    v.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap());
    v
}
