//! Data-mix schedules: piecewise phases of per-domain sampling weights.
//!
//! Domain upsampling (Blakeney et al., "Does your data spark joy?", 2024) trains on a base mix
//! until `1 − f` of the run, then on a mix that upsamples the small domain-specific sets for the
//! last fraction `f` (10–20% is best in the paper). The paper switches abruptly; a `ramp` moves
//! linearly from one phase's proportions to the next over the given length instead.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::time::{Duration, RunSize};

const NAME: &str = "data mix";

/// One phase: the weights in force from `from` on (the first phase starts at 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixPhase {
    /// When the phase begins (absent or zero for the first phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Duration>,
    /// Weight per domain; normalised to proportions, so `{web: 8, code: 2}` is 80/20.
    pub weights: BTreeMap<String, f64>,
}

/// A data-mix schedule.
///
/// ```
/// use std::collections::BTreeMap;
/// use kiln_schedules::{DataMix, RunSize, Duration};
/// let base = BTreeMap::from([("web".to_string(), 0.9), ("math".to_string(), 0.1)]);
/// let up = BTreeMap::from([("web".to_string(), 0.5), ("math".to_string(), 0.5)]);
/// let mix = DataMix::upsample_end(base, up, 0.2);
/// let r = mix.resolve(&RunSize::new(Duration::batches(100)))?;
/// assert_eq!(r.domains(), ["math", "web"]);
/// assert_eq!(r.proportions(79.0), [0.1, 0.9]);
/// assert_eq!(r.proportions(80.0), [0.5, 0.5]);
/// # Ok::<(), kiln_schedules::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataMix {
    /// The phases, in order.
    pub phases: Vec<MixPhase>,
    /// Length of a linear transition into each later phase, starting at its `from` (none: an
    /// abrupt switch, as in the paper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Duration>,
}

impl DataMix {
    /// One mix for the whole run.
    pub fn constant(weights: BTreeMap<String, f64>) -> Self {
        Self {
            phases: vec![MixPhase {
                from: None,
                weights,
            }],
            ramp: None,
        }
    }

    /// `base` until `1 − fraction` of the run, `upsampled` for the final `fraction`.
    pub fn upsample_end(
        base: BTreeMap<String, f64>,
        upsampled: BTreeMap<String, f64>,
        fraction: f64,
    ) -> Self {
        Self {
            phases: vec![
                MixPhase {
                    from: None,
                    weights: base,
                },
                MixPhase {
                    from: Some(Duration::fraction(1.0 - fraction)),
                    weights: upsampled,
                },
            ],
            ramp: None,
        }
    }

    /// Checks the schedule and turns its times into steps of `run`.
    ///
    /// # Errors
    /// [`Error::Invalid`] when there are no phases or no domains, a weight is negative or not
    /// finite, a phase's weights sum to zero, phases name different domains, phase starts are
    /// missing or not increasing, or a ramp is longer than the phase it leads into;
    /// [`Error::Resolve`] for times the run cannot convert.
    pub fn resolve(&self, run: &RunSize) -> Result<ResolvedMix> {
        let invalid = |message: String| Error::Invalid {
            schedule: NAME,
            message,
        };
        let first = self
            .phases
            .first()
            .ok_or_else(|| invalid("no phases; give at least one set of weights".into()))?;
        let domains: Vec<String> = first.weights.keys().cloned().collect();
        if domains.is_empty() {
            return Err(invalid("phase 1 names no domains".into()));
        }
        let mut starts = Vec::with_capacity(self.phases.len());
        let mut proportions = Vec::with_capacity(self.phases.len());
        for (i, phase) in self.phases.iter().enumerate() {
            let n = i + 1;
            for d in &domains {
                if !phase.weights.contains_key(d) {
                    return Err(invalid(format!(
                        "phase {n} has no weight for domain `{d}`; give it 0 explicitly to leave it out"
                    )));
                }
            }
            if let Some(extra) = phase
                .weights
                .keys()
                .find(|k| !first.weights.contains_key(*k))
            {
                return Err(invalid(format!(
                    "phase {n} names domain `{extra}`, which phase 1 does not; every phase must list the same domains"
                )));
            }
            for (d, &w) in &phase.weights {
                if !(w.is_finite() && w >= 0.0) {
                    return Err(invalid(format!(
                        "phase {n}: weight {w} for `{d}` must be a finite number ≥ 0"
                    )));
                }
            }
            let sum: f64 = phase.weights.values().sum();
            if sum <= 0.0 {
                return Err(invalid(format!(
                    "phase {n}: the weights sum to 0, so nothing could be sampled"
                )));
            }
            proportions.push(phase.weights.values().map(|w| w / sum).collect::<Vec<_>>());
            let start = match (&phase.from, i) {
                (None, 0) => 0.0,
                (Some(d), 0) => {
                    let s = run.steps(d)?;
                    if s != 0.0 {
                        return Err(invalid(format!("phase 1 must start at 0, not {d}")));
                    }
                    0.0
                }
                (None, _) => {
                    return Err(invalid(format!(
                        "phase {n} needs `from`, the time it begins"
                    )));
                }
                (Some(d), _) => run.steps(d)?,
            };
            if let Some(&prev) = starts.last()
                && start <= prev
            {
                return Err(invalid(format!(
                    "phase {n} starts at step {start}, not after phase {i} (step {prev}); list phases in time order"
                )));
            }
            starts.push(start);
        }
        let ramp = match &self.ramp {
            None => 0.0,
            Some(d) => run.steps(d)?,
        };
        for i in 1..starts.len() {
            let end = starts.get(i + 1).copied().unwrap_or(f64::INFINITY);
            if starts[i] + ramp > end {
                return Err(invalid(format!(
                    "the ramp ({ramp} steps) into phase {} does not finish before phase {} starts",
                    i + 1,
                    i + 2
                )));
            }
        }
        Ok(ResolvedMix {
            domains,
            starts,
            proportions,
            ramp,
        })
    }
}

/// A data mix in steps; read it with [`ResolvedMix::proportions`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedMix {
    domains: Vec<String>,
    starts: Vec<f64>,
    proportions: Vec<Vec<f64>>,
    ramp: f64,
}

impl ResolvedMix {
    /// The domains, sorted by name; [`ResolvedMix::proportions`] follows this order.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Step at which each phase begins.
    pub fn phase_starts(&self) -> &[f64] {
        &self.starts
    }

    /// Sampling proportions (summing to 1) after `step` optimiser steps.
    pub fn proportions(&self, step: f64) -> Vec<f64> {
        let i = self.starts.iter().rposition(|&s| step >= s).unwrap_or(0);
        let now = &self.proportions[i];
        if i == 0 || self.ramp <= 0.0 || step >= self.starts[i] + self.ramp {
            return now.clone();
        }
        let a = (step - self.starts[i]) / self.ramp;
        self.proportions[i - 1]
            .iter()
            .zip(now)
            .map(|(p, q)| p + a * (q - p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn yaml_like_config_with_ramp() {
        let mix: DataMix = serde_json::from_str(
            r#"{"phases": [{"weights": {"web": 8, "code": 1, "math": 1}},
                           {"from": "0.8dur", "weights": {"web": 2, "code": 1, "math": 1}}],
                "ramp": "10ba"}"#,
        )
        .unwrap();
        let r = mix.resolve(&RunSize::new(Duration::batches(100))).unwrap();
        assert_eq!(r.domains(), ["code", "math", "web"]);
        assert_eq!(r.proportions(0.0), [0.1, 0.1, 0.8]);
        let mid = r.proportions(85.0);
        for (x, want) in mid.iter().zip([0.175, 0.175, 0.65]) {
            assert!((x - want).abs() < 1e-12, "{mid:?}");
        }
        assert_eq!(r.proportions(90.0), [0.25, 0.25, 0.5]);
        assert!((r.proportions(85.0).iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn bad_mixes_say_what_is_wrong() {
        let run = RunSize::new(Duration::batches(100));
        let err = |m: DataMix| m.resolve(&run).unwrap_err().to_string();
        assert!(
            err(DataMix {
                phases: vec![],
                ramp: None
            })
            .contains("no phases")
        );
        assert!(err(DataMix::constant(w(&[("web", -1.0), ("code", 2.0)]))).contains("≥ 0"));
        assert!(err(DataMix::constant(w(&[("web", 0.0)]))).contains("sum to 0"));
        assert!(
            err(DataMix::upsample_end(
                w(&[("web", 1.0), ("code", 1.0)]),
                w(&[("web", 1.0)]),
                0.1
            ))
            .contains("give it 0 explicitly")
        );
        assert!(
            err(DataMix::upsample_end(
                w(&[("web", 1.0)]),
                w(&[("web", 1.0), ("cdoe", 1.0)]),
                0.1
            ))
            .contains("`cdoe`")
        );
        let mut late_first = DataMix::upsample_end(w(&[("web", 1.0)]), w(&[("web", 1.0)]), 0.1);
        late_first.phases.swap(0, 1);
        assert!(err(late_first).contains("phase 1 must start at 0"));
        let mut long_ramp = DataMix::upsample_end(w(&[("web", 1.0)]), w(&[("web", 1.0)]), 0.1);
        long_ramp.phases.push(MixPhase {
            from: Some(Duration::batches(95)),
            weights: w(&[("web", 1.0)]),
        });
        long_ramp.ramp = Some(Duration::batches(10));
        assert!(err(long_ramp).contains("does not finish"));
    }
}
