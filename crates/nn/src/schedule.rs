//! Learning-rate schedules, as functions of the optimizer step (0-based).

use std::f64::consts::PI;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    Constant { lr: f64 },
    /// Linear warmup from lr/warmup to lr over `warmup` steps, then cosine decay to `min_lr` at
    /// step `total`, constant after.
    WarmupCosine { lr: f64, min_lr: f64, warmup: u64, total: u64 },
    /// Warmup–stable–decay: warmup, constant `lr`, then linear decay to `min_lr` over the last
    /// `decay` steps before `total`.
    Wsd { lr: f64, min_lr: f64, warmup: u64, decay: u64, total: u64 },
}

impl Schedule {
    pub fn lr_at(&self, step: u64) -> f64 {
        match *self {
            Schedule::Constant { lr } => lr,
            Schedule::WarmupCosine { lr, min_lr, warmup, total } => {
                if step < warmup {
                    lr * (step + 1) as f64 / warmup as f64
                } else if step >= total {
                    min_lr
                } else {
                    let p = (step - warmup) as f64 / (total - warmup).max(1) as f64;
                    min_lr + 0.5 * (1.0 + (PI * p).cos()) * (lr - min_lr)
                }
            }
            Schedule::Wsd { lr, min_lr, warmup, decay, total } => {
                let decay_start = total.saturating_sub(decay);
                if step < warmup {
                    lr * (step + 1) as f64 / warmup as f64
                } else if step < decay_start {
                    lr
                } else if step >= total {
                    min_lr
                } else {
                    let p = (step - decay_start) as f64 / decay.max(1) as f64;
                    lr + (min_lr - lr) * p
                }
            }
        }
    }
}
