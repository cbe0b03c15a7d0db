//! Training time in Composer's units, and its resolution to steps once the run's size is known.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A unit of training time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Optimiser steps (`ba`).
    Batch,
    /// Passes over the training data (`ep`).
    Epoch,
    /// Training examples (`sp`).
    Sample,
    /// Training tokens (`tok`).
    Token,
    /// A fraction of the whole run (`dur`).
    Duration,
}

impl Unit {
    /// The suffix (`ba`, `ep`, `sp`, `tok`, `dur`).
    pub const fn suffix(self) -> &'static str {
        match self {
            Self::Batch => "ba",
            Self::Epoch => "ep",
            Self::Sample => "sp",
            Self::Token => "tok",
            Self::Duration => "dur",
        }
    }
}

/// An amount of training time: `100ba`, `3ep`, `1000sp`, `2e9tok`, `0.06dur`.
///
/// ```
/// use kiln_schedules::{Duration, RunSize};
/// let warmup: Duration = "0.06dur".parse()?;
/// let run = RunSize::new("70000ba".parse()?).with_samples_per_step(4096);
/// assert_eq!(run.steps(&warmup)?, 4200.0);
/// assert_eq!(run.steps(&"4096sp".parse()?)?, 1.0);
/// # Ok::<(), kiln_schedules::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Duration {
    /// The amount.
    pub value: f64,
    /// The unit.
    pub unit: Unit,
}

impl Duration {
    /// `n` steps.
    pub const fn batches(n: u64) -> Self {
        Self {
            value: n as f64,
            unit: Unit::Batch,
        }
    }

    /// A fraction of the run.
    pub const fn fraction(f: f64) -> Self {
        Self {
            value: f,
            unit: Unit::Duration,
        }
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.value, self.unit.suffix())
    }
}

impl FromStr for Duration {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let text = s.trim();
        let err = |reason: &str| Error::Parse {
            text: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (unit, number) = [
            ("dur", Unit::Duration),
            ("tok", Unit::Token),
            ("ba", Unit::Batch),
            ("ep", Unit::Epoch),
            ("sp", Unit::Sample),
        ]
        .into_iter()
        .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (unit, n.trim())))
        .ok_or_else(|| err("no unit"))?;
        let value: f64 = number
            .replace('_', "")
            .parse()
            .map_err(|_| err("the amount is not a number"))?;
        if !(value.is_finite() && value >= 0.0) {
            return Err(err("the amount must be a finite number of zero or more"));
        }
        if unit != Unit::Duration && value.fract() != 0.0 {
            return Err(err(
                "batches, epochs, samples and tokens are whole numbers (only `dur` takes fractions)",
            ));
        }
        Ok(Self { value, unit })
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What is known about a run, to turn durations into steps.
///
/// Resolution follows Composer's `_convert_time`: a `dur` fraction of a run measured in epochs
/// becomes `int(f · steps_per_epoch · epochs)` steps, otherwise `int(f · max)` in the run's unit;
/// epochs become `n · steps_per_epoch` steps; then the scale-schedule ratio multiplies and
/// truncates (`int(t · ssr)`) every time except `dur` fractions, which follow the (already
/// scaled) run length. Samples and tokens become fractional steps with the fixed batch size and
/// sequence length, so comparisons and fractions are exactly Composer's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSize {
    /// Length of the run.
    pub max_duration: Duration,
    /// Steps per epoch (dataloader length).
    pub steps_per_epoch: Option<u64>,
    /// Samples per optimiser step (global batch size).
    pub samples_per_step: Option<u64>,
    /// Tokens per optimiser step.
    pub tokens_per_step: Option<u64>,
}

impl RunSize {
    /// A run of `max_duration` (not `dur`).
    pub fn new(max_duration: Duration) -> Self {
        Self {
            max_duration,
            steps_per_epoch: None,
            samples_per_step: None,
            tokens_per_step: None,
        }
    }

    /// Sets the steps per epoch.
    #[must_use]
    pub fn with_steps_per_epoch(mut self, n: u64) -> Self {
        self.steps_per_epoch = Some(n);
        self
    }

    /// Sets the samples per step.
    #[must_use]
    pub fn with_samples_per_step(mut self, n: u64) -> Self {
        self.samples_per_step = Some(n);
        self
    }

    /// Sets the tokens per step.
    #[must_use]
    pub fn with_tokens_per_step(mut self, n: u64) -> Self {
        self.tokens_per_step = Some(n);
        self
    }

    /// Total steps of the run.
    ///
    /// # Errors
    /// [`Error::Resolve`] if the run length is a `dur` or cannot be converted.
    pub fn total_steps(&self) -> Result<f64> {
        if self.max_duration.unit == Unit::Duration {
            return Err(Error::Resolve {
                duration: self.max_duration.to_string(),
                reason: "the run's length cannot itself be a fraction of the run".into(),
            });
        }
        self.convert(
            self.max_duration.value,
            self.max_duration.unit,
            &self.max_duration,
        )
    }

    /// Steps of `d` (without a scale-schedule ratio).
    ///
    /// # Errors
    /// [`Error::Resolve`] if a needed size is unknown.
    pub fn steps(&self, d: &Duration) -> Result<f64> {
        self.scaled_steps(d, 1.0)
    }

    /// Steps of `d` under scale-schedule ratio `ssr` (Composer's rules; see the type's docs).
    ///
    /// # Errors
    /// [`Error::Resolve`] if a needed size is unknown.
    pub fn scaled_steps(&self, d: &Duration, ssr: f64) -> Result<f64> {
        let (value, unit) = match d.unit {
            Unit::Duration => {
                let m = self.max_duration;
                return if m.unit == Unit::Epoch {
                    let spe = self.need(self.steps_per_epoch, d, "steps per epoch")?;
                    Ok((d.value * spe as f64 * m.value).trunc())
                } else {
                    self.convert((d.value * m.value).trunc(), m.unit, d)
                };
            }
            Unit::Epoch => (
                d.value * self.need(self.steps_per_epoch, d, "steps per epoch")? as f64,
                Unit::Batch,
            ),
            u => (d.value, u),
        };
        self.convert((value * ssr).trunc(), unit, d)
    }

    fn convert(&self, value: f64, unit: Unit, d: &Duration) -> Result<f64> {
        Ok(match unit {
            Unit::Batch => value,
            Unit::Epoch => value * self.need(self.steps_per_epoch, d, "steps per epoch")? as f64,
            Unit::Sample => value / self.need(self.samples_per_step, d, "samples per step")? as f64,
            Unit::Token => value / self.need(self.tokens_per_step, d, "tokens per step")? as f64,
            Unit::Duration => unreachable!("handled by the caller"),
        })
    }

    fn need(&self, v: Option<u64>, d: &Duration, what: &str) -> Result<u64> {
        match v {
            Some(n) if n > 0 => Ok(n),
            _ => Err(Error::Resolve {
                duration: d.to_string(),
                reason: format!("{what} is not known for this run"),
            }),
        }
    }
}

/// Where training is: steps, samples and tokens so far, and the run's total steps.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Progress {
    /// Optimiser steps completed.
    pub step: u64,
    /// Total steps of the run.
    pub total_steps: u64,
}

impl Progress {
    /// Fraction of the run completed (0 to 1).
    pub fn fraction(&self) -> f64 {
        if self.total_steps == 0 {
            1.0
        } else {
            (self.step as f64 / self.total_steps as f64).min(1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        for (s, v, u) in [
            ("100ba", 100.0, Unit::Batch),
            ("3ep", 3.0, Unit::Epoch),
            ("1000sp", 1000.0, Unit::Sample),
            ("2e9tok", 2e9, Unit::Token),
            ("0.06dur", 0.06, Unit::Duration),
            (" 1_000ba ", 1000.0, Unit::Batch),
        ] {
            let d: Duration = s.parse().unwrap();
            assert_eq!((d.value, d.unit), (v, u), "{s}");
        }
        for bad in ["100", "ba", "1.5ba", "-1ba", "x dur", "1e400tok"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
        let d: Duration = serde_json::from_str("\"0.5dur\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"0.5dur\"");
    }

    #[test]
    fn unknown_sizes_are_errors_at_resolution() {
        let run = RunSize::new("1000ba".parse().unwrap());
        let err = run.steps(&"3ep".parse().unwrap()).unwrap_err().to_string();
        assert!(err.contains("steps per epoch"), "{err}");
        assert!(run.steps(&"2e9tok".parse().unwrap()).is_err());
        assert!(RunSize::new(Duration::fraction(0.5)).total_steps().is_err());
        assert_eq!(run.steps(&"0.25dur".parse().unwrap()).unwrap(), 250.0);
    }
}
