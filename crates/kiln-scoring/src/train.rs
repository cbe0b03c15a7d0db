//! [`TrainingScores`]: a kiln-train [`Algorithm`] that scores every example of each micro-batch
//! from the step output's logits at `AfterForward` — Toneva et al.'s minibatch measurements
//! ("batch forget" in nn_example_difficulty) — into a [`ScoreTracker`] addressed by the step
//! output's example ids, so shuffling and resuming keep each score on its example.
//!
//! The tracker is checkpointed with the run (`state.json`) and restored on resume. A task must
//! report `predictions` and `example_ids` ([`StepOutput`](kiln_train::StepOutput)); kiln-train's
//! classification tasks and its causal-LM task do. Where a task gives several rows per example
//! (a token-level head), the example's scores are the mean over its scored rows (its `acc` the
//! fraction of rows right, so it counts as correct for forgetting events only when every row is).
//! Where a task packs several documents into one sequence and says which document each row's
//! target belongs to ([`Predictions::documents`](kiln_train::Predictions::documents), e.g.
//! `CausalLmTask::with_documents`), the tracker's slots are documents: a document split over two
//! sequences is measured once for each part it shows up in.
//!
//! Where the rows are scored ([`ScoreOn`]): on the host in f64 ([`Pointwise::of`], the path the
//! reference fixtures check to 1e-12), which copies every logit to the host — fine for tens of
//! classes, far too much for a language model's vocabulary — or on the model's device in its
//! float type, which reads back 8 numbers per row. [`ScoreOn::Auto`] (the default) picks the
//! host up to [`HOST_CLASSES`] classes. The per-example means and every accumulator are f64
//! either way.
//!
//! ```
//! use kiln_scoring::train::TrainingScores;
//!
//! let scores = TrainingScores::new(1797); // one tracker slot per training example
//! // trainer.fit(model, &mut task, &mut [&mut scores], …); then scores.tracker()
//! assert_eq!(scores.tracker().len(), 1797);
//! ```

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use kiln_schedules::Duration;
use kiln_train::{Algorithm, Context, Event, IGNORE_INDEX};
use serde_json::Value;

use crate::pointwise::{Pointwise, SCORES};
use crate::tracker::ScoreTracker;

/// The largest number of classes [`ScoreOn::Auto`] scores on the host.
pub const HOST_CLASSES: usize = 1024;

/// Where [`TrainingScores`] computes each row's pointwise scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScoreOn {
    /// The host for at most [`HOST_CLASSES`] classes, the device above.
    #[default]
    Auto,
    /// Copy the logits to the host and score them in f64 (exact; `rows × classes` values).
    Host,
    /// Score on the model's device in its float type and read back `rows × 8` values.
    Device,
}

/// Scores each micro-batch's examples during training. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TrainingScores {
    tracker: ScoreTracker,
    on: ScoreOn,
}

impl TrainingScores {
    /// Scores for a training set of `n` examples (ids `0..n`), [`ScoreOn::Auto`].
    pub fn new(n: usize) -> Self {
        Self {
            tracker: ScoreTracker::new(n),
            on: ScoreOn::Auto,
        }
    }

    /// Where the rows are scored (see [`ScoreOn`]).
    #[must_use]
    pub fn score_on(mut self, on: ScoreOn) -> Self {
        self.on = on;
        self
    }

    /// The accumulated scores.
    pub fn tracker(&self) -> &ScoreTracker {
        &self.tracker
    }

    /// Takes the accumulated scores.
    pub fn into_tracker(self) -> ScoreTracker {
        self.tracker
    }
}

impl<M> Algorithm<M> for TrainingScores {
    fn name(&self) -> &str {
        "scores"
    }

    fn on_event(&mut self, event: Event, ctx: &mut Context<'_, M>) -> Result<(), String> {
        if event != Event::AfterForward {
            return Ok(());
        }
        let Some(out) = ctx.output.as_deref() else {
            return Ok(());
        };
        let (Some(pred), Some(ids)) = (&out.predictions, &out.example_ids) else {
            return Err("scoring needs the task's logits and example ids in its step output (predictions and example_ids); kiln-train's classification tasks report both".into());
        };
        let [rows, classes] = pred.logits.dims();
        let targets: Vec<i64> = pred
            .targets
            .clone()
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| format!("reading targets: {e:?}"))?;
        let documents = pred.documents.as_ref().map_or(rows, Vec::len);
        if targets.len() != rows || pred.example_of_row.len() != rows || documents != rows {
            return Err(format!(
                "{rows} rows of logits, {} targets, {} row owners and {documents} documents; the task must give one of each per row",
                targets.len(),
                pred.example_of_row.len()
            ));
        }
        if let Some(&y) = targets
            .iter()
            .find(|&&y| y != IGNORE_INDEX && !(0..classes as i64).contains(&y))
        {
            return Err(format!(
                "target {y} is outside the {classes} classes of the logits"
            ));
        }
        let host = match self.on {
            ScoreOn::Auto => classes <= HOST_CLASSES,
            ScoreOn::Host => true,
            ScoreOn::Device => false,
        };
        let per_row: Vec<[f64; 8]> = if host {
            host_scores(&pred.logits, &targets)?
        } else {
            device_scores(&pred.logits, &targets)?
        };
        // mean scores per example (or document) over its scored rows
        let mut sums: std::collections::BTreeMap<u64, ([f64; 8], usize)> =
            std::collections::BTreeMap::new();
        for (r, row) in per_row.iter().enumerate() {
            if targets[r] == IGNORE_INDEX {
                continue;
            }
            let id = match &pred.documents {
                Some(docs) => docs[r],
                None => {
                    let example = pred.example_of_row[r];
                    *ids.get(example).ok_or_else(|| {
                        format!(
                            "row {r} names example {example} of a micro-batch of {}",
                            ids.len()
                        )
                    })?
                }
            };
            let (s, n) = sums.entry(id).or_insert(([0.0; 8], 0));
            for (acc, v) in s.iter_mut().zip(row) {
                *acc += v;
            }
            *n += 1;
        }
        for (id, (s, n)) in sums {
            let mean = |k: usize| s[k] / n as f64;
            // (a mean of 0/1 accuracies is exactly 1 only when every row is right)
            let p = Pointwise {
                acc: mean(0),
                ent: mean(1),
                conf: mean(2),
                maxconf: mean(3),
                margin: mean(4),
                aum_margin: mean(5),
                el2n: mean(6),
                loss: mean(7),
            };
            let id = usize::try_from(id)
                .ok()
                .filter(|&i| i < self.tracker.len())
                .ok_or_else(|| {
                    format!(
                        "example id {id} is outside the {} examples TrainingScores was made for",
                        self.tracker.len()
                    )
                })?;
            self.tracker.add(id, &p);
        }
        Ok(())
    }

    fn state(&self) -> Value {
        serde_json::to_value(&self.tracker).unwrap_or(Value::Null)
    }

    fn load_state(&mut self, state: &Value) -> Result<(), String> {
        self.tracker = restore(state, self.tracker.len())?;
        Ok(())
    }
}

/// One pass of [`CheckpointScores`]: the logits `[ids.len(), classes]` (row-major) of examples
/// `ids` with their labels.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pass {
    /// Example ids (indices of the data set the tracker was made for).
    pub ids: Vec<usize>,
    /// Logits, one row per id.
    pub logits: Vec<f32>,
    /// Classes per row.
    pub classes: usize,
    /// The label of each id.
    pub labels: Vec<usize>,
}

/// The function [`CheckpointScores`] calls with the training model: it runs the examples to
/// score (usually in evaluation mode, without augmentation) and returns their logits.
pub type PassFn<M> = Box<dyn FnMut(&M) -> Result<Pass, String>>;

/// Scores at checkpoints: every `every` of training (Composer durations: `"1ep"`, `"100ba"`, …)
/// and at the end, `pass` runs the examples through the current model and every example's
/// scores are added to a [`ScoreTracker`] — nn_example_difficulty's and the papers' per-epoch
/// measurements on un-augmented data, as opposed to [`TrainingScores`]' minibatch ones. Costs a
/// forward pass over the scored examples per checkpoint. Checkpointed with the run.
///
/// ```
/// use kiln_scoring::train::{CheckpointScores, Pass};
///
/// // a pass that always sees the same logits (a real one runs `model.valid()` on the data)
/// let pass = |_: &()| Ok(Pass { ids: vec![0, 1], logits: vec![2.0, 0.0, 0.0, 1.0], classes: 2, labels: vec![0, 0] });
/// let scores = CheckpointScores::new(2, "1ep".parse()?, Box::new(pass));
/// // trainer.fit(model, &mut task, &mut [Box::new(scores), …], …)
/// assert_eq!(scores.tracker().len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CheckpointScores<M> {
    tracker: ScoreTracker,
    every: Duration,
    interval: u64,
    last: Option<u64>,
    pass: PassFn<M>,
}

impl<M> std::fmt::Debug for CheckpointScores<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointScores")
            .field("every", &self.every)
            .field("examples", &self.tracker.len())
            .finish_non_exhaustive()
    }
}

impl<M> CheckpointScores<M> {
    /// Scores for a data set of `n` examples, a pass every `every` and at the end.
    pub fn new(n: usize, every: Duration, pass: PassFn<M>) -> Self {
        Self {
            tracker: ScoreTracker::new(n),
            every,
            interval: 0,
            last: None,
            pass,
        }
    }

    /// The accumulated scores.
    pub fn tracker(&self) -> &ScoreTracker {
        &self.tracker
    }

    fn score(&mut self, model: &M, step: u64) -> Result<(), String> {
        if self.last == Some(step) {
            return Ok(());
        }
        let p = (self.pass)(model)?;
        self.tracker
            .observe(&p.ids, &p.logits, p.classes, &p.labels)
            .map_err(|e| format!("the scoring pass at step {step}: {e}"))?;
        self.last = Some(step);
        Ok(())
    }
}

impl<M> Algorithm<M> for CheckpointScores<M> {
    fn name(&self) -> &str {
        "checkpoint-scores"
    }

    fn on_event(&mut self, event: Event, ctx: &mut Context<'_, M>) -> Result<(), String> {
        match event {
            Event::FitStart => {
                let steps = ctx
                    .run
                    .steps(&self.every)
                    .map_err(|e| format!("checkpoint scores every {}: {e}", self.every))?;
                self.interval = steps.round().max(1.0) as u64;
            }
            Event::BatchEnd
                if self.interval > 0 && ctx.state.step.is_multiple_of(self.interval) =>
            {
                self.score(ctx.model, ctx.state.step)?;
            }
            Event::FitEnd => self.score(ctx.model, ctx.state.step)?,
            _ => {}
        }
        Ok(())
    }

    fn state(&self) -> Value {
        serde_json::json!({ "tracker": self.tracker, "last": self.last })
    }

    fn load_state(&mut self, state: &Value) -> Result<(), String> {
        self.tracker = restore(&state["tracker"], self.tracker.len())?;
        self.last = state["last"].as_u64();
        Ok(())
    }
}

/// A checkpointed tracker, which must cover the `n` examples of this run.
fn restore(state: &Value, n: usize) -> Result<ScoreTracker, String> {
    let tracker: ScoreTracker = serde_json::from_value(state.clone())
        .map_err(|e| format!("scores in the checkpoint: {e}"))?;
    if tracker.len() != n {
        return Err(format!(
            "the checkpoint scores {} examples, this run {n}",
            tracker.len()
        ));
    }
    Ok(tracker)
}

/// Every row's scores in f64 on the host, in [`SCORES`] order (rows with an ignored target get
/// zeros, never read).
fn host_scores(logits: &Tensor<2>, targets: &[i64]) -> Result<Vec<[f64; 8]>, String> {
    let [rows, classes] = logits.dims();
    let z: Vec<f64> = logits
        .clone()
        .detach()
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_err(|e| format!("reading logits: {e:?}"))?;
    (0..rows)
        .map(|r| {
            if targets[r] == IGNORE_INDEX {
                return Ok([0.0; 8]);
            }
            let p = Pointwise::of(&z[r * classes..(r + 1) * classes], targets[r] as usize, r)
                .map_err(|e| e.to_string())?;
            Ok(SCORES.map(|name| p.get(name).unwrap_or(f64::NAN)))
        })
        .collect()
}

/// Every row's scores computed on the logits' device in its float type, in [`SCORES`] order;
/// only `rows × 8` values come back to the host. Rows with an ignored target are scored against
/// class 0 and never read.
fn device_scores(logits: &Tensor<2>, targets: &[i64]) -> Result<Vec<[f64; 8]>, String> {
    let [rows, classes] = logits.dims();
    if classes < 2 {
        return Err(format!(
            "{classes} logits per row; scores need at least two classes"
        ));
    }
    let device = logits.device();
    let z = logits.clone().detach();
    let y: Vec<i64> = targets
        .iter()
        .map(|&t| if t == IGNORE_INDEX { 0 } else { t })
        .collect();
    let y = Tensor::<2, Int>::from_data(TensorData::new(y, [rows, 1]), &device);
    let is_target = Tensor::<1, Int>::arange(0..classes as i64, &device)
        .reshape([1, classes])
        .expand([rows, classes])
        .equal(y.clone().expand([rows, classes]));
    let logp = log_softmax(z.clone(), 1);
    let p = logp.clone().exp();
    let ent = (p.clone() * logp.clone()).sum_dim(1).neg();
    let logp_y = logp.gather(1, y.clone());
    let p_y = logp_y.clone().exp();
    let maxconf = p.clone().max_dim(1);
    let acc = z.clone().argmax(1).equal(y.clone()).float();
    let p_other = p.clone().mask_fill(is_target.clone(), -1.0).max_dim(1);
    let z_y = z.clone().gather(1, y);
    let z_other = z.mask_fill(is_target, f32::NEG_INFINITY).max_dim(1);
    // ‖p − e_y‖² = Σp² − 2p_y + 1 (clamped at 0 against rounding)
    let el2n = (p.powi_scalar(2).sum_dim(1) - p_y.clone().mul_scalar(2.0))
        .add_scalar(1.0)
        .clamp_min(0.0)
        .sqrt();
    let table = Tensor::cat(
        vec![
            acc,
            ent,
            p_y.clone(),
            maxconf,
            p_y - p_other,
            z_y - z_other,
            el2n,
            logp_y.neg(),
        ],
        1,
    );
    let v: Vec<f64> = table
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_err(|e| format!("reading scores: {e:?}"))?;
    if let Some(r) = v
        .chunks_exact(8)
        .zip(targets)
        .position(|(row, &t)| t != IGNORE_INDEX && row.iter().any(|x| !x.is_finite()))
    {
        return Err(format!(
            "row {r} of the micro-batch has a NaN or infinite score (its logits are not finite)"
        ));
    }
    Ok(v.chunks_exact(8)
        .map(|c| [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits `[rows, classes]` spread over ±8 from a fixed integer sequence (no generator).
    fn logits(rows: usize, classes: usize) -> Vec<f32> {
        (0..rows * classes)
            .map(|i| ((i * 7919 + 13) % 1601) as f32 / 100.0 - 8.0)
            .collect()
    }

    #[test]
    fn device_scores_equal_the_f64_host_scores() {
        let d = burn::tensor::Device::flex();
        for (rows, classes) in [(5, 2), (6, 10), (4, 3000)] {
            let z =
                Tensor::<2>::from_data(TensorData::new(logits(rows, classes), [rows, classes]), &d);
            let mut targets: Vec<i64> = (0..rows as i64)
                .map(|r| (r * 37) % classes as i64)
                .collect();
            targets[1] = IGNORE_INDEX;
            let host = host_scores(&z, &targets).unwrap();
            let dev = device_scores(&z, &targets).unwrap();
            for r in (0..rows).filter(|&r| r != 1) {
                for (k, name) in SCORES.iter().enumerate() {
                    let (a, b) = (host[r][k], dev[r][k]);
                    assert!(
                        (a - b).abs() <= 2e-5 * a.abs().max(1.0),
                        "{rows}×{classes} row {r} {name}: host {a} device {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn ties_and_non_finite_logits_agree_on_both_paths() {
        let d = burn::tensor::Device::flex();
        // a tie between the target and another class: argmax takes the first, so acc depends on
        // which one is the target; both paths agree
        let z = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 1.0, 0.0], [1, 3]), &d);
        for y in [0, 1] {
            assert_eq!(
                host_scores(&z, &[y]).unwrap()[0][0],
                device_scores(&z, &[y]).unwrap()[0][0]
            );
        }
        let bad = Tensor::<2>::from_data(TensorData::new(vec![f32::NAN, 1.0], [1, 2]), &d);
        assert!(device_scores(&bad, &[0]).unwrap_err().contains("row 0"));
        assert!(host_scores(&bad, &[0]).is_err());
    }
}
