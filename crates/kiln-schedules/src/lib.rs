//! Composer-style training time and the schedules that depend on it.
//!
//! Training time has a unit: optimiser steps (`100ba`), epochs (`3ep`), samples (`1000sp`),
//! tokens (`2e9tok`) or a fraction of the run (`0.06dur`), as in MosaicML Composer. A
//! [`Duration`] is parsed from such a string (or serde), and turned into steps once the run's
//! sizes are known ([`RunSize`]). Schedules are configured with durations and resolved against
//! the run *before* training starts, so a `1ep` warmup on a run without epochs, or a warmup
//! longer than the schedule, is an error then rather than a surprise at step 50 000.
//!
//! ```
//! use kiln_schedules::{Duration, LrSchedule, MaskingSchedule, RunSize};
//!
//! // BERT pretraining as in Ankner et al.: 70k steps of 4096 sequences, 6% warmup, linear decay
//! // to 0.02, and a masking rate falling linearly from 30% to 15%.
//! let run = RunSize::new("70000ba".parse()?).with_samples_per_step(4096);
//! let lr: LrSchedule = serde_json::from_str(
//!     r#"{"name": "linear_decay_with_warmup", "t_warmup": "0.06dur", "alpha_f": 0.02}"#,
//! )?;
//! let lr = lr.resolve(&run, 1.0)?;
//! let masking = MaskingSchedule::Linear { from: 0.30, to: 0.15, t_max: Duration::fraction(1.0) }
//!     .resolve(&run)?;
//! assert_eq!(lr.multiplier(2100.0), 0.5);
//! assert!((masking.rate(35_000.0) - 0.225).abs() < 1e-12);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is inside
//! - [`Duration`], [`Unit`], [`RunSize`] — time and its resolution to steps, with Composer's
//!   truncation and scale-schedule-ratio rules.
//! - [`LrSchedule`] — the LR multipliers of Composer (`constant`, `linear`, `cosine`, `step`,
//!   `multistep`, `exponential`, `polynomial` and their `_with_warmup` forms) and llm-foundry's
//!   `inv_sqrt_with_warmup` (warmup–stable–decay), with Composer's names, parameters, defaults
//!   and formulas, checked against Composer itself by a generated fixture.
//! - [`MaskingSchedule`] — MLM masking rates: constant, linear, cosine, step.
//! - [`DataMix`] — per-domain sampling proportions in phases (domain upsampling at the end of
//!   pretraining), with an optional linear ramp.
//!
//! # Errors
//! Every bad configuration is an [`Error`] that names the schedule, the value and what would be
//! valid; nothing here panics on user input.

#![warn(missing_docs)]

mod error;
pub mod lr;
pub mod masking;
pub mod mix;
pub mod time;

pub use error::{Error, Result};
pub use lr::{LrSchedule, ResolvedLr};
pub use masking::{MaskingSchedule, ResolvedMasking};
pub use mix::{DataMix, MixPhase, ResolvedMix};
pub use time::{Duration, Progress, RunSize, Unit};

// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
