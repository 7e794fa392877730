//! Progress of a long job, shown the same way by every crate: on a terminal an indicatif bar with
//! rate and ETA; otherwise (CI, logs, pipes) a plain line on stderr at most every 10% and every
//! 5 s, and only once the job has run for 2 s (short jobs say nothing). Safe to advance from many
//! threads at once (rayon loops).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Bar {
    what: String,
    len: u64,
    done: AtomicU64,
    start: Instant,
    bar: Option<indicatif::ProgressBar>,
    /// Plain mode: when the last line was printed, and at what count.
    last: Mutex<(Instant, u64)>,
}

/// A reporter for `len` units of `what` ("tokenizing documents", "windows").
pub fn bar(len: u64, what: &str) -> Bar {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(len);
        b.set_style(indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} ({per_sec}, ETA {eta})").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
        b.set_message(what.to_string());
        b
    });
    let now = Instant::now();
    Bar { what: what.to_string(), len, done: AtomicU64::new(0), start: now, bar, last: Mutex::new((now, 0)) }
}

impl Bar {
    /// `n` more units done.
    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(b) = &self.bar {
            b.inc(n);
            return;
        }
        let now = Instant::now();
        if now - self.start < Duration::from_secs(2) {
            return;
        }
        let Ok(mut last) = self.last.try_lock() else { return };
        let step = (self.len / 10).max(1);
        if done >= last.1 + step && now - last.0 >= Duration::from_secs(5) || (done >= self.len && last.1 < self.len) {
            *last = (now, done);
            let secs = (now - self.start).as_secs_f64();
            let eta = if done > 0 { secs * (self.len.saturating_sub(done)) as f64 / done as f64 } else { 0.0 };
            eprintln!("{}: {done}/{} ({:.0}%), {secs:.0}s elapsed, ETA {eta:.0}s", self.what, self.len, 100.0 * done as f64 / self.len.max(1) as f64);
        }
    }

    /// Clears the bar (a terminal) when the job is done.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_across_threads() {
        let b = super::bar(1000, "test");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..250).for_each(|_| b.inc(1)));
            }
        });
        assert_eq!(b.done.load(std::sync::atomic::Ordering::Relaxed), 1000);
    }
}
