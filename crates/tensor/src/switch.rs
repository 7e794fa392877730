//! `Switch`: a process-wide on/off for a kernel path that benchmarks and tests compare against
//! its alternative. Set by a call (`set(Some(on))`), or else from an environment variable read
//! once: on unless it is "0". `set(None)` goes back to the environment's answer.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::OnceLock;

pub(crate) struct Switch {
    /// 0: the environment's answer; 1: on; 2: off.
    set: AtomicU8,
    env: &'static str,
    read: OnceLock<bool>,
}

impl Switch {
    pub(crate) const fn new(env: &'static str) -> Self {
        Switch { set: AtomicU8::new(0), env, read: OnceLock::new() }
    }

    pub(crate) fn set(&self, on: Option<bool>) {
        self.set.store(on.map_or(0, |on| if on { 1 } else { 2 }), Relaxed);
    }

    pub(crate) fn on(&self) -> bool {
        match self.set.load(Relaxed) {
            0 => *self.read.get_or_init(|| std::env::var_os(self.env).is_none_or(|v| v != "0")),
            s => s == 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Switch;

    #[test]
    fn set_overrides_the_environment_and_none_restores_it() {
        static S: Switch = Switch::new("FMLAB_TEST_SWITCH_NEVER_SET");
        assert!(S.on(), "unset in the environment: on");
        S.set(Some(false));
        assert!(!S.on());
        S.set(Some(true));
        assert!(S.on());
        S.set(None);
        assert!(S.on(), "back to the environment's answer");
    }
}
