//! Scores of every example of a data set accumulated over checkpoints, epochs or minibatch
//! presentations, addressed by example id (so shuffling does not matter).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::online::{Forgetting, Welford};
use crate::pointwise::{Pointwise, SCORES};

/// One example's accumulated scores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExampleScores {
    /// Running mean and variance of each pointwise score, in [`SCORES`] order.
    pub scores: [Welford; 8],
    /// Forgetting events of its accuracy sequence.
    pub forgetting: Forgetting,
}

impl ExampleScores {
    /// Adds one measurement.
    pub fn add(&mut self, p: &Pointwise) {
        for (w, name) in self.scores.iter_mut().zip(SCORES) {
            w.add(p.get(name).unwrap_or(f64::NAN));
        }
        self.forgetting.add(p.acc == 1.0);
    }

    /// The running statistics of the score called `name` (one of [`SCORES`]).
    pub fn score(&self, name: &str) -> Option<&Welford> {
        SCORES
            .iter()
            .position(|s| *s == name)
            .map(|i| &self.scores[i])
    }

    /// AUM (Pleiss et al. 2020): the mean logit margin over the measurements.
    pub fn aum(&self) -> Option<f64> {
        self.scores[5].mean()
    }

    /// Dataset cartography (Swayamdipta et al. 2020): confidence (mean `p_y`), variability
    /// (population std of `p_y`) and correctness (mean accuracy).
    pub fn cartography(&self) -> Option<(f64, f64, f64)> {
        Some((
            self.scores[2].mean()?,
            self.scores[2].population_std()?,
            self.scores[0].mean()?,
        ))
    }
}

/// Accumulated scores for the examples `0..n` of a data set.
///
/// ```
/// use kiln_scoring::ScoreTracker;
///
/// let mut tracker = ScoreTracker::new(3);
/// // two epochs of logits [examples, classes] for a shuffled batch of ids
/// tracker.observe(&[2, 0, 1], &[1.0f32, 0.0, 0.2, 0.9, 3.0, -1.0], 2, &[0, 1, 0])?;
/// tracker.observe(&[0, 1, 2], &[0.1f32, 0.5, 2.0, -1.0, 0.3, 0.4], 2, &[1, 0, 0])?;
/// let e = tracker.example(2);
/// assert_eq!(e.score("acc").unwrap().mean(), Some(0.5)); // right once, then wrong
/// assert_eq!(e.forgetting.count(true), 1);
/// # Ok::<(), kiln_scoring::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreTracker {
    examples: Vec<ExampleScores>,
}

impl ScoreTracker {
    /// A tracker for `n` examples.
    pub fn new(n: usize) -> Self {
        Self {
            examples: vec![ExampleScores::default(); n],
        }
    }

    /// Examples tracked.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether it tracks no example.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Adds one measurement for each example `ids[i]` from row `i` of `logits`
    /// `[ids.len(), classes]` and its label.
    ///
    /// # Errors
    /// [`Error::OutOfRange`] for an id outside `0..n`; [`Pointwise::batch`]'s errors.
    pub fn observe<F: Copy + Into<f64>>(
        &mut self,
        ids: &[usize],
        logits: &[F],
        classes: usize,
        labels: &[usize],
    ) -> Result<()> {
        if ids.len() != labels.len() {
            return Err(Error::Shape {
                what: "observe".into(),
                message: format!("{} ids for {} labels", ids.len(), labels.len()),
            });
        }
        if let Some(&id) = ids.iter().find(|&&id| id >= self.examples.len()) {
            return Err(Error::OutOfRange {
                what: "example id",
                value: id,
                limit: self.examples.len(),
                hint: "ids index the data set the tracker was made for",
            });
        }
        let scores = Pointwise::batch(logits, classes, labels)?;
        for (&id, p) in ids.iter().zip(&scores) {
            self.examples[id].add(p);
        }
        Ok(())
    }

    /// Adds one measurement for example `id` (panics past `len()`, like slice indexing).
    pub fn add(&mut self, id: usize, p: &Pointwise) {
        self.examples[id].add(p);
    }

    /// The accumulated scores of example `id` (panics past `len()`, like slice indexing).
    pub fn example(&self, id: usize) -> &ExampleScores {
        &self.examples[id]
    }

    /// All examples, by id.
    pub fn examples(&self) -> &[ExampleScores] {
        &self.examples
    }
}
