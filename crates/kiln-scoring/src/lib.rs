//! Example-difficulty scores computed online while a model trains, in f64, and the rank
//! statistics that say how far to trust them (Kwok, Anand, Frankle, Dziugaite, Rolnick, "Dataset
//! Difficulty and the Role of Inductive Bias").
//!
//! - [`Pointwise`]: the scores of one prediction — accuracy, entropy, true-class and maximum
//!   confidence, probability margin, AUM's **logit** margin, EL2N, loss — with
//!   nn_example_difficulty's definitions.
//! - [`Welford`] and [`Forgetting`]: running mean/variance over checkpoints (the area under a
//!   score's curve divided by their number) and forgetting events (count with and without
//!   `start_at_zero`, first learned, first unforgettable, first forgotten, first unlearnable).
//! - [`ScoreTracker`]: both for every example of a data set, addressed by example id; AUM and
//!   dataset cartography (confidence, variability, correctness) read from it.
//! - [`consistency`]: split-half correlation of single runs, its growth when averaging R runs,
//!   cross-score correlations, PCA explained variance.
//! - [`fingerprint`]: per-example permutation tests between architectures (seeded, BH-adjusted)
//!   and a leave-one-run-out nearest-centroid classifier on the most sensitive examples.
//! - [`gradient`] (feature `train`): GraNd — exact per-example gradient norms, and the
//!   closed-form last-layer version.
//! - [`depth`]: prediction depth — kNN probes per layer, as nn_example_difficulty and Baldock
//!   et al. define it.
//! - [`vog`]: Variance of Gradients over checkpoints (Agarwal et al.'s and
//!   nn_example_difficulty's forms, class-normalised); the input gradients come from
//!   [`gradient::input_gradients`] (feature `train`).
//! - [`files`]: one `NAME.scores/` directory per run — `scores.csv` and `manifest.json`.
//! - [`stats`]: `scipy.stats.rankdata`'s average-tie ranks, Pearson and Spearman correlation.
//! - [`train`] (feature `train`, default): kiln-train algorithms —
//!   [`TrainingScores`](train::TrainingScores) fills a tracker from every micro-batch during
//!   training (on the host in f64, or on the device for a language model's vocabulary; per
//!   document for packed data), [`CheckpointScores`](train::CheckpointScores) from a pass over
//!   the data at checkpoints.
//!
//! ```
//! use kiln_scoring::{Pointwise, stats};
//!
//! let p = Pointwise::of(&[2.0, 0.5, -1.0], 0, 0)?;
//! assert_eq!(p.acc, 1.0);
//! assert!((p.aum_margin - 1.5).abs() < 1e-12); // logits: 2.0 − 0.5
//! assert!(p.margin < p.aum_margin); // probabilities: p₀ − p₁
//! let rho = stats::spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 20.0, 40.0])?.unwrap();
//! assert!(rho > 0.9);
//! # Ok::<(), kiln_scoring::Error>(())
//! ```
//!
//! Every formula is checked against nn_example_difficulty's own functions, `aum`'s README
//! example and scipy by `tests/fixtures/make_scoring_fixture.py`, to 1e-12.

#![warn(missing_docs)]

pub mod consistency;
pub mod depth;
mod error;
pub mod files;
pub mod fingerprint;
#[cfg(feature = "train")]
pub mod gradient;
pub mod online;
pub mod pointwise;
pub mod stats;
pub mod tracker;
#[cfg(feature = "train")]
pub mod train;
pub mod vog;

pub use error::{Error, Result};
pub use online::{Forgetting, Welford};
pub use pointwise::{Pointwise, SCORES};
pub use tracker::{ExampleScores, ScoreTracker};

// The README's example is compiled as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
