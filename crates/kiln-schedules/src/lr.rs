//! Learning-rate multiplier schedules with Composer's names, parameters and formulas.
//!
//! A schedule returns a multiplier of the base learning rate at a point of training, so schedules
//! compose by product. Build one from its config with [`LrSchedule::resolve`] once the run's size
//! is known: every duration becomes a number of steps then, and inconsistent settings (a warmup
//! longer than `t_max`, a `t_max` shorter than the run, durations the run cannot convert) are
//! errors before training starts.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::time::{Duration, RunSize, Unit};

fn one() -> f64 {
    1.0
}
fn whole() -> Duration {
    Duration::fraction(1.0)
}
fn tenth() -> f64 {
    0.1
}
fn two() -> f64 {
    2.0
}
fn epoch() -> Duration {
    Duration {
        value: 1.0,
        unit: Unit::Epoch,
    }
}

/// A learning-rate multiplier schedule, tagged by its Composer name (`name: cosine_with_warmup`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum LrSchedule {
    /// `alpha` until `t_max`, then 1.
    Constant {
        /// Multiplier while active (1).
        #[serde(default = "one")]
        alpha: f64,
        /// How long (`1dur`).
        #[serde(default = "whole")]
        t_max: Duration,
    },
    /// Linear warmup from 0 to `alpha`, then `alpha`.
    ConstantWithWarmup {
        /// Warmup length.
        t_warmup: Duration,
        /// Multiplier after warmup (1).
        #[serde(default = "one")]
        alpha: f64,
        /// Schedule length (`1dur`).
        #[serde(default = "whole")]
        t_max: Duration,
        /// Scale the warmup by the scale-schedule ratio too (false).
        #[serde(default)]
        scale_warmup: bool,
    },
    /// From `alpha_i` to `alpha_f` linearly over `t_max`.
    Linear {
        /// Start (1).
        #[serde(default = "one")]
        alpha_i: f64,
        /// End (0).
        #[serde(default)]
        alpha_f: f64,
        /// Length (`1dur`).
        #[serde(default = "whole")]
        t_max: Duration,
    },
    /// Linear warmup to `alpha_i`, then linear to `alpha_f` at `t_max`.
    LinearDecayWithWarmup {
        /// Warmup length.
        t_warmup: Duration,
        /// Multiplier at the end of warmup (1).
        #[serde(default = "one")]
        alpha_i: f64,
        /// Multiplier at `t_max` (0).
        #[serde(default)]
        alpha_f: f64,
        /// Length (`1dur`).
        #[serde(default = "whole")]
        t_max: Duration,
        /// Scale the warmup by the scale-schedule ratio too (false).
        #[serde(default)]
        scale_warmup: bool,
    },
    /// Half a cosine from 1 to `alpha_f` over `t_max`.
    Cosine {
        /// Length (`1dur`).
        #[serde(default = "whole")]
        t_max: Duration,
        /// Final multiplier (0).
        #[serde(default)]
        alpha_f: f64,
    },
    /// Linear warmup to 1, then half a cosine to `alpha_f` at `t_max`.
    CosineWithWarmup {
        /// Warmup length.
        t_warmup: Duration,
        /// Length (`1dur`).
        #[serde(default = "whole")]
        t_max: Duration,
        /// Final multiplier (0).
        #[serde(default)]
        alpha_f: f64,
        /// Scale the warmup by the scale-schedule ratio too (false).
        #[serde(default)]
        scale_warmup: bool,
    },
    /// `gamma^⌊t / step_size⌋`.
    Step {
        /// Period.
        step_size: Duration,
        /// Factor per period (0.1).
        #[serde(default = "tenth")]
        gamma: f64,
    },
    /// Multiply by `gamma` at each milestone reached.
    Multistep {
        /// Milestones.
        milestones: Vec<Duration>,
        /// Factor per milestone (0.1).
        #[serde(default = "tenth")]
        gamma: f64,
    },
    /// Linear warmup to 1, then `multistep`.
    MultistepWithWarmup {
        /// Warmup length.
        t_warmup: Duration,
        /// Milestones.
        milestones: Vec<Duration>,
        /// Factor per milestone (0.1).
        #[serde(default = "tenth")]
        gamma: f64,
        /// Scale the warmup by the scale-schedule ratio too (false).
        #[serde(default)]
        scale_warmup: bool,
    },
    /// `gamma^(t / decay_period)`.
    Exponential {
        /// Factor per period.
        gamma: f64,
        /// Period (`1ep`).
        #[serde(default = "epoch")]
        decay_period: Duration,
    },
    /// `alpha_f + (1 − τ)^power · (1 − alpha_f)`.
    Polynomial {
        /// Exponent.
        power: f64,
        /// Length (`1dur`).
        #[serde(default = "whole")]
        t_max: Duration,
        /// Final multiplier (0).
        #[serde(default)]
        alpha_f: f64,
    },
    /// Linear warmup to 1, then polynomial decay to `alpha_f` at `t_max`.
    PolynomialWithWarmup {
        /// Warmup length.
        t_warmup: Duration,
        /// Exponent (2).
        #[serde(default = "two")]
        power: f64,
        /// Length (`1dur`).
        #[serde(default = "whole")]
        t_max: Duration,
        /// Final multiplier (0).
        #[serde(default)]
        alpha_f: f64,
        /// Scale the warmup by the scale-schedule ratio too (false).
        #[serde(default)]
        scale_warmup: bool,
    },
    /// llm-foundry's `inv_sqrt_with_warmup`: linear warmup, inverse-square-root decay towards
    /// `alpha_f_decay` scaled by `t_scale`, then a linear cooldown over the last `t_cooldown` to
    /// `alpha_f_cooldown` (warmup–stable–decay when the decay is slow).
    InvSqrtWithWarmup {
        /// Warmup length (not `dur`).
        t_warmup: Duration,
        /// Time scale of the decay (not `dur`).
        t_scale: Duration,
        /// Cooldown length (not `dur`).
        t_cooldown: Duration,
        /// Length (`1dur`).
        #[serde(default = "whole")]
        t_max: Duration,
        /// Asymptote of the decay (0).
        #[serde(default)]
        alpha_f_decay: f64,
        /// Final multiplier after cooldown (0).
        #[serde(default)]
        alpha_f_cooldown: f64,
    },
}

impl LrSchedule {
    /// Composer's name of the schedule.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Constant { .. } => "constant",
            Self::ConstantWithWarmup { .. } => "constant_with_warmup",
            Self::Linear { .. } => "linear",
            Self::LinearDecayWithWarmup { .. } => "linear_decay_with_warmup",
            Self::Cosine { .. } => "cosine",
            Self::CosineWithWarmup { .. } => "cosine_with_warmup",
            Self::Step { .. } => "step",
            Self::Multistep { .. } => "multistep",
            Self::MultistepWithWarmup { .. } => "multistep_with_warmup",
            Self::Exponential { .. } => "exponential",
            Self::Polynomial { .. } => "polynomial",
            Self::PolynomialWithWarmup { .. } => "polynomial_with_warmup",
            Self::InvSqrtWithWarmup { .. } => "inv_sqrt_with_warmup",
        }
    }

    /// Turns every duration into steps for `run` under scale-schedule ratio `ssr` (1 for none),
    /// with Composer's rules: `run` is the run as trained (its length already multiplied by
    /// `ssr`), `dur` fractions follow it, other times are multiplied by `ssr`, and warmups are not
    /// scaled unless `scale_warmup`.
    ///
    /// # Errors
    /// [`Error::Resolve`] for durations the run cannot convert; [`Error::Invalid`] for a `t_max`
    /// shorter than the run, a warmup longer than `t_max`, a non-positive `ssr` or period, or
    /// `inv_sqrt_with_warmup` with `dur` times or `alpha_f_decay < alpha_f_cooldown`.
    pub fn resolve(&self, run: &RunSize, ssr: f64) -> Result<ResolvedLr> {
        let name = self.name();
        let invalid = |message: String| Error::Invalid {
            schedule: name,
            message,
        };
        if !(ssr.is_finite() && ssr > 0.0) {
            return Err(invalid(format!(
                "scale_schedule_ratio must be positive, got {ssr}"
            )));
        }
        // `run` is the run as trained (already shortened or lengthened by `ssr`, as Composer's
        // trainer does to `max_duration`); like Composer, the scaled `t_max` must cover it.
        let total = run.total_steps()?;
        let s = |d: &Duration| run.scaled_steps(d, ssr);
        let warm = |d: &Duration, scale: bool| run.scaled_steps(d, if scale { ssr } else { 1.0 });
        let t_max_checked = |d: &Duration| -> Result<f64> {
            let t = s(d)?;
            if t < total {
                return Err(invalid(format!(
                    "t_max {d} ({t} steps after scaling) is shorter than the run ({total} steps), so the schedule would not cover it"
                )));
            }
            Ok(t)
        };
        let warmup = |w: &Duration, scale: bool, t_max: f64| -> Result<(f64, f64)> {
            let t_cmp = run.steps(w)?;
            let t_ramp = warm(w, scale)?;
            if t_cmp > t_max {
                return Err(invalid(format!(
                    "t_warmup {w} ({t_cmp} steps) is longer than t_max ({t_max} steps)"
                )));
            }
            Ok((t_cmp, t_ramp))
        };
        Ok(ResolvedLr(match self {
            Self::Constant { alpha, t_max } => Resolved::Constant {
                alpha: *alpha,
                t_max: s(t_max)?,
            },
            Self::ConstantWithWarmup {
                t_warmup,
                alpha,
                t_max,
                scale_warmup,
            } => {
                let tm = t_max_checked(t_max)?;
                let (tw, ramp) = warmup(t_warmup, *scale_warmup, tm)?;
                Resolved::LinearWarmup {
                    tw,
                    ramp,
                    alpha_i: *alpha,
                    alpha_f: *alpha,
                    t_max: tm,
                }
            }
            Self::Linear {
                alpha_i,
                alpha_f,
                t_max,
            } => Resolved::Linear {
                alpha_i: *alpha_i,
                alpha_f: *alpha_f,
                t_max: s(t_max)?,
            },
            Self::LinearDecayWithWarmup {
                t_warmup,
                alpha_i,
                alpha_f,
                t_max,
                scale_warmup,
            } => {
                let tm = t_max_checked(t_max)?;
                let (tw, ramp) = warmup(t_warmup, *scale_warmup, tm)?;
                Resolved::LinearWarmup {
                    tw,
                    ramp,
                    alpha_i: *alpha_i,
                    alpha_f: *alpha_f,
                    t_max: tm,
                }
            }
            Self::Cosine { t_max, alpha_f } => Resolved::Cosine {
                t_max: s(t_max)?,
                alpha_f: *alpha_f,
            },
            Self::CosineWithWarmup {
                t_warmup,
                t_max,
                alpha_f,
                scale_warmup,
            } => {
                let tm = t_max_checked(t_max)?;
                let (tw, ramp) = warmup(t_warmup, *scale_warmup, tm)?;
                Resolved::CosineWarmup {
                    tw,
                    ramp,
                    t_max: tm,
                    alpha_f: *alpha_f,
                }
            }
            Self::Step { step_size, gamma } => {
                let p = s(step_size)?;
                if p <= 0.0 {
                    return Err(invalid("step_size must be positive".into()));
                }
                Resolved::Step {
                    period: p,
                    gamma: *gamma,
                }
            }
            Self::Multistep { milestones, gamma } => Resolved::Multistep {
                milestones: milestones.iter().map(s).collect::<Result<_>>()?,
                gamma: *gamma,
            },
            Self::MultistepWithWarmup {
                t_warmup,
                milestones,
                gamma,
                scale_warmup,
            } => {
                let (tw, ramp) = warmup(t_warmup, *scale_warmup, f64::INFINITY)?;
                Resolved::MultistepWarmup {
                    tw,
                    ramp,
                    milestones: milestones.iter().map(s).collect::<Result<_>>()?,
                    gamma: *gamma,
                }
            }
            Self::Exponential {
                gamma,
                decay_period,
            } => {
                let p = s(decay_period)?;
                if p <= 0.0 {
                    return Err(invalid("decay_period must be positive".into()));
                }
                Resolved::Exponential {
                    period: p,
                    gamma: *gamma,
                }
            }
            Self::Polynomial {
                power,
                t_max,
                alpha_f,
            } => Resolved::Polynomial {
                power: *power,
                t_max: s(t_max)?,
                alpha_f: *alpha_f,
            },
            Self::PolynomialWithWarmup {
                t_warmup,
                power,
                t_max,
                alpha_f,
                scale_warmup,
            } => {
                let tm = t_max_checked(t_max)?;
                let (tw, ramp) = warmup(t_warmup, *scale_warmup, tm)?;
                Resolved::PolynomialWarmup {
                    tw,
                    ramp,
                    power: *power,
                    t_max: tm,
                    alpha_f: *alpha_f,
                }
            }
            Self::InvSqrtWithWarmup {
                t_warmup,
                t_scale,
                t_cooldown,
                t_max,
                alpha_f_decay,
                alpha_f_cooldown,
            } => {
                if alpha_f_decay < alpha_f_cooldown {
                    return Err(invalid(format!(
                        "alpha_f_decay ({alpha_f_decay}) must be ≥ alpha_f_cooldown ({alpha_f_cooldown})"
                    )));
                }
                for (n, d) in [
                    ("t_warmup", t_warmup),
                    ("t_scale", t_scale),
                    ("t_cooldown", t_cooldown),
                ] {
                    if d.unit == Unit::Duration {
                        return Err(invalid(format!(
                            "{n} cannot be a fraction of the run (`dur`); give batches, samples or tokens"
                        )));
                    }
                }
                let tw = run.steps(t_warmup)?;
                let ts = s(t_scale)?;
                if ts <= 0.0 {
                    return Err(invalid("t_scale must be positive".into()));
                }
                Resolved::InvSqrt {
                    tw,
                    t_scale: ts,
                    t_cooldown: s(t_cooldown)?,
                    t_max: s(t_max)?,
                    alpha_f_decay: *alpha_f_decay,
                    alpha_f_cooldown: *alpha_f_cooldown,
                }
            }
        }))
    }
}

/// A schedule with every duration in steps; evaluate it with [`ResolvedLr::multiplier`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedLr(Resolved);

#[derive(Debug, Clone, PartialEq)]
enum Resolved {
    Constant {
        alpha: f64,
        t_max: f64,
    },
    Linear {
        alpha_i: f64,
        alpha_f: f64,
        t_max: f64,
    },
    /// `tw`: warmup end compared against; `ramp`: the warmup ramp's length (scaled with
    /// `scale_warmup`).
    LinearWarmup {
        tw: f64,
        ramp: f64,
        alpha_i: f64,
        alpha_f: f64,
        t_max: f64,
    },
    Cosine {
        t_max: f64,
        alpha_f: f64,
    },
    CosineWarmup {
        tw: f64,
        ramp: f64,
        t_max: f64,
        alpha_f: f64,
    },
    Step {
        period: f64,
        gamma: f64,
    },
    Multistep {
        milestones: Vec<f64>,
        gamma: f64,
    },
    MultistepWarmup {
        tw: f64,
        ramp: f64,
        milestones: Vec<f64>,
        gamma: f64,
    },
    Exponential {
        period: f64,
        gamma: f64,
    },
    Polynomial {
        power: f64,
        t_max: f64,
        alpha_f: f64,
    },
    PolynomialWarmup {
        tw: f64,
        ramp: f64,
        power: f64,
        t_max: f64,
        alpha_f: f64,
    },
    InvSqrt {
        tw: f64,
        t_scale: f64,
        t_cooldown: f64,
        t_max: f64,
        alpha_f_decay: f64,
        alpha_f_cooldown: f64,
    },
}

/// Composer's `_cosine_anneal`: cos on [0, π] stretched to [0, 1] → [max_y, min_y], x clipped.
fn cosine_anneal(x: f64, min_y: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    min_y + (1.0 - min_y) * (1.0 + (x * std::f64::consts::PI).cos()) / 2.0
}

/// `LinearScheduler(alpha_i = 0, alpha_f = top, t_max = ramp)`.
fn ramp(t: f64, ramp: f64, top: f64) -> f64 {
    top * (t / ramp).min(1.0)
}

/// Fraction of (tw, t_max] elapsed, clipped to 1; 0 when t_max ≤ tw.
fn after_warmup(t: f64, tw: f64, t_max: f64) -> f64 {
    if t_max > tw {
        ((t - tw) / (t_max - tw)).min(1.0)
    } else {
        0.0
    }
}

impl ResolvedLr {
    /// The multiplier after `step` optimiser steps (fractional steps allowed).
    pub fn multiplier(&self, step: f64) -> f64 {
        let t = step;
        match &self.0 {
            Resolved::Constant { alpha, t_max } => {
                if t < *t_max {
                    *alpha
                } else {
                    1.0
                }
            }
            Resolved::Linear {
                alpha_i,
                alpha_f,
                t_max,
            } => alpha_i + (t / t_max).min(1.0) * (alpha_f - alpha_i),
            Resolved::LinearWarmup {
                tw,
                ramp: r,
                alpha_i,
                alpha_f,
                t_max,
            } => {
                if t < *tw {
                    ramp(t, *r, *alpha_i)
                } else {
                    alpha_i + after_warmup(t, *tw, *t_max) * (alpha_f - alpha_i)
                }
            }
            Resolved::Cosine { t_max, alpha_f } => cosine_anneal(t / t_max, *alpha_f),
            Resolved::CosineWarmup {
                tw,
                ramp: r,
                t_max,
                alpha_f,
            } => {
                if t < *tw {
                    ramp(t, *r, 1.0)
                } else {
                    cosine_anneal(after_warmup(t, *tw, *t_max), *alpha_f)
                }
            }
            Resolved::Step { period, gamma } => gamma.powi((t / period).trunc() as i32),
            Resolved::Multistep { milestones, gamma } => milestones
                .iter()
                .filter(|&&m| t >= m)
                .fold(1.0, |f, _| f * gamma),
            Resolved::MultistepWarmup {
                tw,
                ramp: r,
                milestones,
                gamma,
            } => {
                if t < *tw {
                    ramp(t, *r, 1.0)
                } else {
                    milestones
                        .iter()
                        .filter(|&&m| t >= m)
                        .fold(1.0, |f, _| f * gamma)
                }
            }
            Resolved::Exponential { period, gamma } => gamma.powf(t / period),
            Resolved::Polynomial {
                power,
                t_max,
                alpha_f,
            } => alpha_f + (1.0 - (t / t_max).min(1.0)).powf(*power) * (1.0 - alpha_f),
            Resolved::PolynomialWarmup {
                tw,
                ramp: r,
                power,
                t_max,
                alpha_f,
            } => {
                if t < *tw {
                    ramp(t, *r, 1.0)
                } else {
                    alpha_f + (1.0 - after_warmup(t, *tw, *t_max)).powf(*power) * (1.0 - alpha_f)
                }
            }
            Resolved::InvSqrt {
                tw,
                t_scale,
                t_cooldown,
                t_max,
                alpha_f_decay,
                alpha_f_cooldown,
            } => {
                if t < *tw {
                    return ramp(t, *tw, 1.0);
                }
                let shift = t_scale - tw;
                let cooldown_start = (t_max - t_cooldown).max(*tw);
                let decay =
                    |x: f64| alpha_f_decay + (1.0 - alpha_f_decay) / ((x + shift) / t_scale).sqrt();
                if t < cooldown_start {
                    return decay(t);
                }
                let alpha_i = decay(cooldown_start);
                if *t_cooldown == 0.0 {
                    return alpha_i;
                }
                let frac = ((t - cooldown_start) / t_cooldown).min(1.0);
                alpha_i + frac * (alpha_f_cooldown - alpha_i)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunSize {
        RunSize::new(Duration::batches(1000)).with_steps_per_epoch(100)
    }

    #[test]
    fn parses_composer_style_configs() {
        let s: LrSchedule = serde_json::from_str(
            r#"{"name": "cosine_with_warmup", "t_warmup": "0.06dur", "alpha_f": 0.1}"#,
        )
        .unwrap();
        assert_eq!(s.name(), "cosine_with_warmup");
        let r = s.resolve(&run(), 1.0).unwrap();
        assert_eq!(r.multiplier(0.0), 0.0);
        assert!((r.multiplier(60.0) - 1.0).abs() < 1e-12);
        assert!((r.multiplier(1000.0) - 0.1).abs() < 1e-12);
        let err = serde_json::from_str::<LrSchedule>(
            r#"{"name": "cosine_with_warmup", "t_warmup": "1ba", "alpha_final": 0.1}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("alpha_final"), "{err}");
        assert!(serde_json::from_str::<LrSchedule>(r#"{"name": "onecycle"}"#).is_err());
    }

    #[test]
    fn incompatible_settings_fail_before_training() {
        let too_short = LrSchedule::LinearDecayWithWarmup {
            t_warmup: Duration::batches(10),
            alpha_i: 1.0,
            alpha_f: 0.0,
            t_max: Duration::batches(500),
            scale_warmup: false,
        };
        assert!(
            too_short
                .resolve(&run(), 1.0)
                .unwrap_err()
                .to_string()
                .contains("shorter than the run")
        );
        let long_warmup = LrSchedule::CosineWithWarmup {
            t_warmup: Duration::batches(2000),
            t_max: Duration::fraction(1.0),
            alpha_f: 0.0,
            scale_warmup: false,
        };
        assert!(
            long_warmup
                .resolve(&run(), 1.0)
                .unwrap_err()
                .to_string()
                .contains("longer than t_max")
        );
        let tokens = LrSchedule::CosineWithWarmup {
            t_warmup: "1000tok".parse().unwrap(),
            t_max: Duration::fraction(1.0),
            alpha_f: 0.0,
            scale_warmup: false,
        };
        assert!(matches!(
            tokens.resolve(&run(), 1.0),
            Err(Error::Resolve { .. })
        ));
        let dur = LrSchedule::InvSqrtWithWarmup {
            t_warmup: Duration::fraction(0.1),
            t_scale: Duration::batches(10),
            t_cooldown: Duration::batches(10),
            t_max: Duration::fraction(1.0),
            alpha_f_decay: 0.0,
            alpha_f_cooldown: 0.0,
        };
        assert!(dur.resolve(&run(), 1.0).is_err());
    }
}
