//! MLM masking-rate schedules (Ankner et al., "Dynamic Masking Rate Schedules for MLM
//! Pretraining", EACL 2024).
//!
//! The rate at training fraction τ is `p(τ) = from · f(τ)`, where `f` is the Composer scheduler
//! of the same name with `alpha_f = to / from` — exactly what the paper's `MLMRateSetter`
//! callback computed. The headline schedule is `linear` 0.30 → 0.15.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::time::{Duration, RunSize};

fn whole() -> Duration {
    Duration::fraction(1.0)
}
fn half() -> Duration {
    Duration::fraction(0.5)
}

/// A masking-rate schedule, tagged by name (`name: linear`).
///
/// ```
/// use kiln_schedules::{MaskingSchedule, RunSize, Duration};
/// let s: MaskingSchedule = serde_json::from_str(r#"{"name": "linear", "from": 0.3, "to": 0.15}"#)?;
/// let r = s.resolve(&RunSize::new(Duration::batches(1000)))?;
/// assert_eq!(r.rate(0.0), 0.3);
/// assert!((r.rate(500.0) - 0.225).abs() < 1e-12);
/// assert!((r.rate(1000.0) - 0.15).abs() < 1e-12);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum MaskingSchedule {
    /// One rate throughout (BERT's 0.15, MosaicBERT's 0.30).
    Constant {
        /// The rate.
        rate: f64,
    },
    /// Linear from `from` to `to` over `t_max`, then `to`.
    Linear {
        /// Initial rate.
        from: f64,
        /// Final rate.
        to: f64,
        /// Length of the change (`1dur`).
        #[serde(default = "whole")]
        t_max: Duration,
    },
    /// Half a cosine from `from` to `to` over `t_max`, then `to`.
    Cosine {
        /// Initial rate.
        from: f64,
        /// Final rate.
        to: f64,
        /// Length of the change (`1dur`).
        #[serde(default = "whole")]
        t_max: Duration,
    },
    /// `from` before `at`, `to` from `at` on.
    Step {
        /// Initial rate.
        from: f64,
        /// Final rate.
        to: f64,
        /// When to switch (`0.5dur`).
        #[serde(default = "half")]
        at: Duration,
    },
}

impl MaskingSchedule {
    /// The schedule's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Constant { .. } => "constant",
            Self::Linear { .. } => "linear",
            Self::Cosine { .. } => "cosine",
            Self::Step { .. } => "step",
        }
    }

    /// Every rate of the schedule.
    fn rates(&self) -> Vec<f64> {
        match self {
            Self::Constant { rate } => vec![*rate],
            Self::Linear { from, to, .. }
            | Self::Cosine { from, to, .. }
            | Self::Step { from, to, .. } => vec![*from, *to],
        }
    }

    /// Turns the schedule's durations into steps of `run`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a rate outside (0, 1) or a zero-length `t_max`; [`Error::Resolve`]
    /// for a duration the run cannot convert.
    pub fn resolve(&self, run: &RunSize) -> Result<ResolvedMasking> {
        for r in self.rates() {
            if !(r > 0.0 && r < 1.0) {
                return Err(Error::Invalid {
                    schedule: self.name(),
                    message: format!(
                        "masking rate {r} is outside (0, 1); write it as a fraction, e.g. 0.15 for 15%"
                    ),
                });
            }
        }
        let positive = |d: &Duration| -> Result<f64> {
            let t = run.steps(d)?;
            if t <= 0.0 {
                return Err(Error::Invalid {
                    schedule: self.name(),
                    message: format!("t_max {d} is zero steps; give the change a positive length"),
                });
            }
            Ok(t)
        };
        Ok(ResolvedMasking(match self {
            Self::Constant { rate } => Resolved::Constant(*rate),
            Self::Linear { from, to, t_max } => Resolved::Linear {
                from: *from,
                to: *to,
                t_max: positive(t_max)?,
            },
            Self::Cosine { from, to, t_max } => Resolved::Cosine {
                from: *from,
                to: *to,
                t_max: positive(t_max)?,
            },
            Self::Step { from, to, at } => Resolved::Step {
                from: *from,
                to: *to,
                at: run.steps(at)?,
            },
        }))
    }
}

/// A masking schedule in steps; read it with [`ResolvedMasking::rate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedMasking(Resolved);

#[derive(Debug, Clone, PartialEq)]
enum Resolved {
    Constant(f64),
    Linear { from: f64, to: f64, t_max: f64 },
    Cosine { from: f64, to: f64, t_max: f64 },
    Step { from: f64, to: f64, at: f64 },
}

impl ResolvedMasking {
    /// The masking rate after `step` optimiser steps.
    pub fn rate(&self, step: f64) -> f64 {
        match self.0 {
            Resolved::Constant(p) => p,
            Resolved::Linear { from, to, t_max } => {
                let f = to / from;
                from * (1.0 + (step / t_max).min(1.0) * (f - 1.0))
            }
            Resolved::Cosine { from, to, t_max } => {
                let f = to / from;
                let x = (step / t_max).clamp(0.0, 1.0);
                from * (f + (1.0 - f) * (1.0 + (x * std::f64::consts::PI).cos()) / 2.0)
            }
            Resolved::Step { from, to, at } => {
                if step < at {
                    from
                } else {
                    to
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_schedules_hit_their_endpoints() {
        let run = RunSize::new(Duration::batches(70_000));
        for name in ["linear", "cosine", "step"] {
            let s: MaskingSchedule =
                serde_json::from_str(&format!(r#"{{"name": "{name}", "from": 0.3, "to": 0.15}}"#))
                    .unwrap();
            let r = s.resolve(&run).unwrap();
            assert!((r.rate(0.0) - 0.3).abs() < 1e-12, "{name}");
            assert!((r.rate(70_000.0) - 0.15).abs() < 1e-12, "{name}");
            assert!((r.rate(1e9) - 0.15).abs() < 1e-12, "{name}");
        }
        let step = MaskingSchedule::Step {
            from: 0.3,
            to: 0.15,
            at: half(),
        }
        .resolve(&run)
        .unwrap();
        assert_eq!((step.rate(34_999.0), step.rate(35_000.0)), (0.3, 0.15));
    }

    #[test]
    fn rates_must_be_fractions() {
        let run = RunSize::new(Duration::batches(10));
        let err = MaskingSchedule::Constant { rate: 15.0 }
            .resolve(&run)
            .unwrap_err()
            .to_string();
        assert!(err.contains("0.15 for 15%"), "{err}");
        assert!(
            MaskingSchedule::Linear {
                from: 0.3,
                to: 0.0,
                t_max: whole()
            }
            .resolve(&run)
            .is_err()
        );
        assert!(
            MaskingSchedule::Linear {
                from: 0.3,
                to: 0.15,
                t_max: Duration::batches(0)
            }
            .resolve(&run)
            .is_err()
        );
        assert!(
            serde_json::from_str::<MaskingSchedule>(
                r#"{"name": "linear", "from": 0.3, "end": 0.15}"#
            )
            .is_err()
        );
    }
}
