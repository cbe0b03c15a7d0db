//! [`TrainingScores`]: a kiln-train [`Algorithm`] that scores every example of each micro-batch
//! from the step output's logits at `AfterForward` — Toneva et al.'s minibatch measurements
//! ("batch forget" in nn_example_difficulty) — into a [`ScoreTracker`] addressed by the step
//! output's example ids, so shuffling and resuming keep each score on its example.
//!
//! The tracker is checkpointed with the run (`state.json`) and restored on resume. A task must
//! report `predictions` and `example_ids` ([`StepOutput`](kiln_train::StepOutput)); kiln-train's
//! classification tasks do. Where a task gives several rows per example (a token-level head),
//! the example's scores are the mean over its scored rows, and it counts as correct (for
//! forgetting events) when every row is.
//!
//! ```
//! use kiln_scoring::train::TrainingScores;
//!
//! let scores = TrainingScores::new(1797); // one tracker slot per training example
//! // trainer.fit(model, &mut task, &mut [&mut scores], …); then scores.tracker()
//! assert_eq!(scores.tracker().len(), 1797);
//! ```

use kiln_train::{Algorithm, Context, Event, IGNORE_INDEX};
use serde_json::Value;

use crate::pointwise::{Pointwise, SCORES};
use crate::tracker::ScoreTracker;

/// Scores each micro-batch's examples during training. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TrainingScores {
    tracker: ScoreTracker,
}

impl TrainingScores {
    /// Scores for a training set of `n` examples (ids `0..n`).
    pub fn new(n: usize) -> Self {
        Self {
            tracker: ScoreTracker::new(n),
        }
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
        let logits: Vec<f64> = pred
            .logits
            .clone()
            .detach()
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .map_err(|e| format!("reading logits: {e:?}"))?;
        let targets: Vec<i64> = pred
            .targets
            .clone()
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| format!("reading targets: {e:?}"))?;
        // mean scores per example over its scored rows
        let mut sums: Vec<Option<([f64; 8], usize)>> = vec![None; ids.len()];
        for r in 0..rows {
            let y = targets[r];
            if y == IGNORE_INDEX {
                continue;
            }
            let example = pred.example_of_row[r];
            let label = usize::try_from(y).map_err(|_| format!("target {y} of row {r}"))?;
            let p = Pointwise::of(&logits[r * classes..(r + 1) * classes], label, example)
                .map_err(|e| e.to_string())?;
            let slot = sums.get_mut(example).ok_or_else(|| {
                format!(
                    "row {r} names example {example} of a micro-batch of {}",
                    ids.len()
                )
            })?;
            let (s, n) = slot.get_or_insert(([0.0; 8], 0));
            for (acc, name) in s.iter_mut().zip(SCORES) {
                *acc += p.get(name).unwrap_or(f64::NAN);
            }
            *n += 1;
        }
        for (i, slot) in sums.into_iter().enumerate() {
            let Some((s, n)) = slot else { continue };
            let id = usize::try_from(ids[i]).map_err(|_| format!("example id {}", ids[i]))?;
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
            if id >= self.tracker.len() {
                return Err(format!(
                    "example id {id} is outside the {} examples TrainingScores was made for",
                    self.tracker.len()
                ));
            }
            self.tracker.add(id, &p);
        }
        Ok(())
    }

    fn state(&self) -> Value {
        serde_json::to_value(&self.tracker).unwrap_or(Value::Null)
    }

    fn load_state(&mut self, state: &Value) -> Result<(), String> {
        let tracker: ScoreTracker = serde_json::from_value(state.clone())
            .map_err(|e| format!("scores in the checkpoint: {e}"))?;
        if tracker.len() != self.tracker.len() {
            return Err(format!(
                "the checkpoint scores {} examples, this run {}",
                tracker.len(),
                self.tracker.len()
            ));
        }
        self.tracker = tracker;
        Ok(())
    }
}
