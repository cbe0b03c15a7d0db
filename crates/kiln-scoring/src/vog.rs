//! Variance of Gradients (VoG, Agarwal, D'souza & Hooker 2022): how much the gradient of an
//! example's true-class logit with respect to its input pixels changes across checkpoints.
//! Gradients are averaged over colour channels, a per-pixel running variance is kept across
//! checkpoints (Welford, unbiased), and the score is the mean over pixels of either the
//! standard deviation (Agarwal et al.) or the variance (nn_example_difficulty's `classvog`) —
//! optionally z-normalised within each class, as the paper ranks examples.
//!
//! ```
//! use kiln_scoring::vog::Vog;
//!
//! // 2 examples of 1 channel × 2 pixels, three checkpoints
//! let mut vog = Vog::new(2, 1, 2);
//! for g in [[1.0, 0.0, 0.5, 0.5], [2.0, 0.0, 0.5, 0.5], [3.0, 0.0, 0.5, 0.5]] {
//!     vog.add(&[0, 1], &g)?;
//! }
//! let v = vog.scores(false)?; // mean variance over pixels
//! assert_eq!(v, vec![0.5, 0.0]); // pixel 0 of example 0 varies (1, 2, 3: variance 1)
//! # Ok::<(), kiln_scoring::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::online::Welford;

/// Per-pixel running variance of input gradients for `n` examples.
#[derive(Debug, Clone, PartialEq)]
pub struct Vog {
    channels: usize,
    pixels: usize,
    acc: Vec<Welford>,
}

impl Vog {
    /// For `n` examples of `channels` × `pixels` (height · width).
    pub fn new(n: usize, channels: usize, pixels: usize) -> Self {
        Self {
            channels,
            pixels,
            acc: vec![Welford::default(); n * pixels],
        }
    }

    /// Adds one checkpoint's gradients for examples `ids`: `grads` `[ids.len(), channels,
    /// pixels]` row-major (channels are averaged here).
    ///
    /// # Errors
    /// [`Error::Shape`] for a size that does not fit, [`Error::OutOfRange`] for an id.
    pub fn add(&mut self, ids: &[usize], grads: &[f64]) -> Result<()> {
        let per = self.channels * self.pixels;
        if grads.len() != ids.len() * per {
            return Err(Error::Shape {
                what: "VoG gradients".into(),
                message: format!(
                    "{} values for {} examples × {} channels × {} pixels",
                    grads.len(),
                    ids.len(),
                    self.channels,
                    self.pixels
                ),
            });
        }
        let n = self.acc.len() / self.pixels.max(1);
        for (i, &id) in ids.iter().enumerate() {
            if id >= n {
                return Err(Error::OutOfRange {
                    what: "example id",
                    value: id,
                    limit: n,
                    hint: "ids index the examples Vog was made for",
                });
            }
            let g = &grads[i * per..(i + 1) * per];
            for p in 0..self.pixels {
                let mean = (0..self.channels)
                    .map(|c| g[c * self.pixels + p])
                    .sum::<f64>()
                    / self.channels as f64;
                self.acc[id * self.pixels + p].add(mean);
            }
        }
        Ok(())
    }

    /// Per example: the mean over pixels of the standard deviation across checkpoints (`sqrt`,
    /// Agarwal et al.) or of the variance (nn_example_difficulty).
    ///
    /// # Errors
    /// [`Error::Shape`] when an example has fewer than two checkpoints.
    pub fn scores(&self, sqrt: bool) -> Result<Vec<f64>> {
        self.acc
            .chunks(self.pixels.max(1))
            .enumerate()
            .map(|(i, px)| {
                let mut sum = 0.0;
                for w in px {
                    let v = w.variance().ok_or_else(|| Error::Shape {
                        what: format!("VoG of example {i}"),
                        message: format!(
                            "{} checkpoint(s); a variance needs at least two",
                            w.count()
                        ),
                    })?;
                    sum += if sqrt { v.sqrt() } else { v };
                }
                Ok(sum / px.len() as f64)
            })
            .collect()
    }
}

/// Z-normalises scores within each class (population standard deviation; a class of one
/// example, or with no spread, gets 0), as Agarwal et al. rank examples across classes.
///
/// # Errors
/// [`Error::Shape`] for different lengths.
pub fn normalise_within_class(scores: &[f64], labels: &[usize]) -> Result<Vec<f64>> {
    if scores.len() != labels.len() {
        return Err(Error::Shape {
            what: "normalise_within_class".into(),
            message: format!("{} scores for {} labels", scores.len(), labels.len()),
        });
    }
    let mut out = vec![0.0; scores.len()];
    let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    for c in 0..classes {
        let idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        if idx.len() < 2 {
            continue;
        }
        let mut w = Welford::default();
        for &i in &idx {
            w.add(scores[i]);
        }
        let (mean, std) = (w.mean().unwrap_or(0.0), w.population_std().unwrap_or(0.0));
        for &i in &idx {
            out[i] = if std > 0.0 {
                (scores[i] - mean) / std
            } else {
                0.0
            };
        }
    }
    Ok(out)
}
