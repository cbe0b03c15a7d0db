//! Distillation as a kiln-train algorithm: at `AfterLoss`, inside a window of the run and every
//! n-th step, the teacher's logits for the micro-batch are compared with the student's and the
//! loss becomes `ce_weight·loss + kd_weight·T²·D`.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_schedules::Duration;
use kiln_train::{Algorithm, Context, Event, IGNORE_INDEX, StepOutput};
use serde_json::{Value, json};

use crate::cache::TopKCache;
use crate::error::{Error, Result};
use crate::loss::{Divergence, KdLoss, Missing, sparse_forward_kl};

/// A teacher: logits for the rows of a student's micro-batch.
pub trait Teacher {
    /// `[N, C]` logits aligned with the student's prediction rows (`output.predictions`), on
    /// `device` (the student's), as constants. Reads the inputs (`output.inputs`) for a live
    /// model, or the example ids (`output.example_ids`) for cached logits. `call` counts the
    /// teacher's calls over the run (checkpointed by [`Distill`]): randomness keyed on it
    /// survives a resume.
    ///
    /// # Errors
    /// A message (missing inputs, a vocabulary or row count that does not fit).
    fn logits(
        &mut self,
        output: &StepOutput,
        device: &Device,
        call: u64,
    ) -> std::result::Result<Tensor<2>, String>;

    /// Floating-point operations of the last call's forward, if known (logged per step).
    fn last_flops(&self) -> Option<f64> {
        None
    }
}

/// Several teachers: one sampled per call (O(1) cost: the cheap ensemble of Blakeney et al.) or
/// their logits averaged (every member runs).
pub struct Ensemble {
    members: Vec<Box<dyn Teacher>>,
    mode: EnsembleMode,
    last: Option<usize>,
}

/// How an [`Ensemble`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsembleMode {
    /// One member per call, drawn from `seed` and the call's index.
    Sample {
        /// Seed of the draw.
        seed: u64,
    },
    /// The mean of every member's logits.
    Average,
}

impl Ensemble {
    /// An ensemble of `members`.
    ///
    /// # Errors
    /// [`Error::Config`] for no member.
    pub fn new(members: Vec<Box<dyn Teacher>>, mode: EnsembleMode) -> Result<Self> {
        if members.is_empty() {
            return Err(Error::Config {
                message: "an ensemble needs at least one teacher".into(),
            });
        }
        Ok(Self {
            members,
            mode,
            last: None,
        })
    }

    /// The member the `call`-th sampled call uses.
    pub fn sampled(&self, seed: u64, call: u64) -> usize {
        // splitmix64 of (seed, call): uniform enough for a handful of members
        let mut z = seed ^ call.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % self.members.len() as u64) as usize
    }
}

impl Teacher for Ensemble {
    fn logits(
        &mut self,
        output: &StepOutput,
        device: &Device,
        call: u64,
    ) -> std::result::Result<Tensor<2>, String> {
        match self.mode {
            EnsembleMode::Sample { seed } => {
                let i = self.sampled(seed, call);
                self.last = Some(i);
                self.members[i].logits(output, device, call)
            }
            EnsembleMode::Average => {
                self.last = None;
                let n = self.members.len() as f64;
                let mut sum: Option<Tensor<2>> = None;
                for m in &mut self.members {
                    let l = m.logits(output, device, call)?;
                    sum = Some(match sum {
                        Some(s) => s + l,
                        None => l,
                    });
                }
                Ok(sum.expect("at least one member").div_scalar(n))
            }
        }
    }

    fn last_flops(&self) -> Option<f64> {
        match self.last {
            Some(i) => self.members[i].last_flops(),
            None => self.members.iter().map(|m| m.last_flops()).sum(),
        }
    }
}

/// When distillation runs: from `start` to `end` (Composer durations: `0.25dur`, `500ba`, `1ep`,
/// resolved against the run like the LR schedule), every `every`-th step of that span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// First step (inclusive): ⌈start⌉ in steps, at least step 1.
    pub start: Duration,
    /// Last step (inclusive): ⌊end⌋ in steps.
    pub end: Duration,
    /// Distil every n-th step of the window (1: every step).
    pub every: u64,
}

impl Window {
    /// The whole run, every step.
    pub fn always() -> Self {
        Self {
            start: Duration::fraction(0.0),
            end: Duration::fraction(1.0),
            every: 1,
        }
    }

    /// The first `fraction` of the run, every step (the "distil early" strategy).
    pub fn early(fraction: f64) -> Self {
        Self {
            start: Duration::fraction(0.0),
            end: Duration::fraction(fraction),
            every: 1,
        }
    }

    /// Whether step `step` (1-based) distils, with `start` and `end` resolved to `first` and
    /// `last` steps (fractional: ⌈first⌉ ≤ step ≤ ⌊last⌋, step ≥ 1) and (step − ⌈first⌉) a
    /// multiple of `every`.
    pub fn active(&self, step: u64, first: f64, last: f64) -> bool {
        let first = (first.ceil() as u64).max(1);
        let last = last.floor() as u64;
        step >= first && step <= last && (step - first).is_multiple_of(self.every)
    }

    fn resolve(&self, run: &kiln_train::RunPlan) -> std::result::Result<(f64, f64), String> {
        let start = run
            .steps(&self.start)
            .map_err(|e| format!("distillation window start {}: {e}", self.start))?;
        let end = run
            .steps(&self.end)
            .map_err(|e| format!("distillation window end {}: {e}", self.end))?;
        if start > end {
            return Err(format!(
                "the distillation window starts at {} ({start} steps) after it ends at {} ({end} steps)",
                self.start, self.end
            ));
        }
        Ok((start, end))
    }
}

/// The distillation algorithm. Logged per step: `kd_loss` (the divergence term before its weight),
/// `teacher_forwards` (cumulative), `teacher_seconds` (this step) and `teacher_flops` (this step,
/// when the teacher knows it). The counters are checkpointed.
pub struct Distill {
    loss: KdLoss,
    source: Source,
    window: Window,
    forwards: u64,
    seconds: f64,
}

/// Where the teacher's distribution comes from.
enum Source {
    Live(Box<dyn Teacher>),
    Cached(Box<TopKCache>, Missing),
}

impl Distill {
    /// Distils from `teacher` with `loss` inside `window`.
    ///
    /// # Errors
    /// [`Error::Config`] for negative weights, T ≤ 0 or `every` = 0 (a window that ends before it
    /// starts, or a unit the run cannot resolve, stops the run at its first step, naming both).
    pub fn new(loss: KdLoss, teacher: Box<dyn Teacher>, window: Window) -> Result<Self> {
        Self::with_source(loss, Source::Live(teacher), window)
    }

    /// Distils from a teacher's cached top-k ([`TopKCache`], made by a capture pass) with the
    /// sparse forward KL, `missing` deciding the tail; the examples are found by the step
    /// output's example ids, so the cache follows the data order, shuffles and resumes included.
    /// Check the cache against the run's data first ([`TopKCache::check`]).
    ///
    /// # Errors
    /// As [`new`](Self::new); [`Error::Config`] when `loss` is not the forward KL or its
    /// temperature is not the cache's.
    pub fn cached(
        loss: KdLoss,
        cache: TopKCache,
        missing: Missing,
        window: Window,
    ) -> Result<Self> {
        if loss.divergence != Divergence::ForwardKl {
            return Err(Error::Config {
                message: format!(
                    "a top-k cache gives the forward KL only ({:?} needs the teacher's whole distribution: use a live teacher)",
                    loss.divergence
                ),
            });
        }
        let t = cache.spec().temperature;
        if (loss.temperature - t).abs() > 1e-12 {
            return Err(Error::Config {
                message: format!(
                    "the cache holds log-probabilities at temperature {t}, the loss asks for {}: capture the cache at the run's temperature",
                    loss.temperature
                ),
            });
        }
        Self::with_source(loss, Source::Cached(Box::new(cache), missing), window)
    }

    fn with_source(loss: KdLoss, source: Source, window: Window) -> Result<Self> {
        let bad = |message: String| Err(Error::Config { message });
        if !(loss.ce_weight >= 0.0 && loss.kd_weight >= 0.0) {
            return bad(format!(
                "weights must be ≥ 0 (ce_weight {}, kd_weight {})",
                loss.ce_weight, loss.kd_weight
            ));
        }
        if !(loss.temperature.is_finite() && loss.temperature > 0.0) {
            return bad(format!("temperature {} must be positive", loss.temperature));
        }
        if window.every == 0 {
            return bad(format!(
                "the window {}..{} distils every {} steps; give at least 1",
                window.start, window.end, window.every
            ));
        }
        Ok(Self {
            loss,
            source,
            window,
            forwards: 0,
            seconds: 0.0,
        })
    }

    /// Teacher calls so far.
    pub fn teacher_forwards(&self) -> u64 {
        self.forwards
    }

    /// Seconds spent in the teacher so far (this process).
    pub fn teacher_seconds(&self) -> f64 {
        self.seconds
    }
}

/// 1 for rows whose target counts, 0 for [`IGNORE_INDEX`] rows.
fn row_weights(targets: &Tensor<1, Int>) -> Tensor<1> {
    targets.clone().not_equal_elem(IGNORE_INDEX).float()
}

impl<M> Algorithm<M> for Distill {
    fn name(&self) -> &str {
        "distill"
    }

    fn on_event(
        &mut self,
        event: Event,
        ctx: &mut Context<'_, M>,
    ) -> std::result::Result<(), String> {
        if event != Event::AfterLoss {
            return Ok(());
        }
        let (first, last) = self.window.resolve(ctx.run)?;
        if !self.window.active(ctx.state.step + 1, first, last) {
            return Ok(());
        }
        let out = ctx
            .output
            .as_deref_mut()
            .ok_or("distillation: no step output at AfterLoss")?;
        let predictions = out.predictions.clone().ok_or(
            "distillation needs the student's logits: the task's forward must return predictions (StepOutput::with_predictions)",
        )?;
        let device = predictions.logits.device();
        let weights = row_weights(&predictions.targets);
        let started = Instant::now();
        let (d, flops) = match &mut self.source {
            Source::Live(teacher) => {
                let logits = teacher.logits(out, &device, self.forwards)?;
                let d = crate::loss::divergence(
                    predictions.logits.clone(),
                    logits,
                    Some(weights),
                    self.loss.temperature,
                    self.loss.divergence,
                )
                .map_err(|e| e.to_string())?;
                (d, teacher.last_flops())
            }
            Source::Cached(cache, missing) => {
                let ids = out.example_ids.as_ref().ok_or(
                    "a cached teacher finds examples by id: the task must report them (StepOutput::with_example_ids)",
                )?;
                let sparse = cache.rows(ids, &device).map_err(|e| e.to_string())?;
                let d = sparse_forward_kl(
                    predictions.logits.clone(),
                    &sparse,
                    Some(weights),
                    self.loss.temperature,
                    *missing,
                )
                .map_err(|e| e.to_string())?;
                (d, None)
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        self.forwards += 1;
        self.seconds += seconds;
        let value = kiln_train::scalar(&d);
        let t2 = self.loss.temperature * self.loss.temperature;
        out.loss = out.loss.clone().mul_scalar(self.loss.ce_weight)
            + d.mul_scalar(self.loss.kd_weight * t2);
        ctx.metrics.insert("kd_loss".into(), value);
        ctx.metrics
            .insert("teacher_forwards".into(), self.forwards as f64);
        ctx.metrics.insert("teacher_seconds".into(), seconds);
        if let Some(f) = flops {
            ctx.metrics.insert("teacher_flops".into(), f);
        }
        Ok(())
    }

    fn state(&self) -> Value {
        json!({"teacher_forwards": self.forwards})
    }

    fn load_state(&mut self, state: &Value) -> std::result::Result<(), String> {
        self.forwards = state["teacher_forwards"]
            .as_u64()
            .ok_or("distillation state without `teacher_forwards`")?;
        Ok(())
    }
}

/// Logits rows from plain data (tests, a precomputed teacher): row `i` of `rows` is the teacher's
/// logits for example id `i`'s row.
pub struct TableTeacher {
    rows: Vec<Vec<f32>>,
}

impl TableTeacher {
    /// A teacher answering example id `i` with `rows[i]` (one row per example: a classifier).
    pub fn new(rows: Vec<Vec<f32>>) -> Self {
        Self { rows }
    }
}

impl Teacher for TableTeacher {
    fn logits(
        &mut self,
        output: &StepOutput,
        device: &Device,
        _: u64,
    ) -> std::result::Result<Tensor<2>, String> {
        let ids = output
            .example_ids
            .as_ref()
            .ok_or("a table teacher reads example ids: the task must report them")?;
        let c = self.rows.first().map_or(0, Vec::len);
        let mut v = Vec::with_capacity(ids.len() * c);
        for &id in ids {
            let row = self.rows.get(id as usize).ok_or_else(|| {
                format!("no teacher row for example {id} ({} rows)", self.rows.len())
            })?;
            v.extend_from_slice(row);
        }
        Ok(Tensor::<2>::from_data(
            TensorData::new(v, [ids.len(), c]),
            device,
        ))
    }
}
