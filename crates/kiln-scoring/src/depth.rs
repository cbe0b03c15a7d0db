//! Prediction depth (Baldock, Maennel & Neyshabur 2021): the earliest layer from which a
//! k-nearest-neighbour probe on every later layer's representation agrees with the target — an
//! example that deep layers are needed for is hard. As nn_example_difficulty computes it: per
//! layer a kNN classifier (Euclidean distance, uniform majority vote, ties to the smallest class
//! as scikit-learn's) is fit on the examples' representations and predicts the same examples
//! (each is its own nearest neighbour, [`Probe::IncludeSelf`]; [`Probe::LeaveOneOut`] leaves it
//! out), and the depth is the first index after which every layer's prediction matches the
//! target (`L` when the last layer's does not). The target is the label, or — Baldock et al.'s
//! definition — the network's own final prediction.
//!
//! ```
//! use kiln_scoring::depth::{prediction_depth, Probe};
//!
//! // 4 examples, 2 classes, two 1-d layers: at layer 0 examples 1 and 3 (of different classes)
//! // are each other's nearest neighbours; at layer 1 the classes separate
//! let layers = vec![vec![0.0, 0.1, 1.0, 0.12], vec![0.0, 0.1, 1.0, 1.1]];
//! let labels = [0, 0, 1, 1];
//! let depth = prediction_depth(&layers, &[1, 1], &labels, &labels, 1, Probe::LeaveOneOut)?;
//! assert_eq!(depth, vec![0, 1, 0, 1]);
//! # Ok::<(), kiln_scoring::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::online::Forgetting;

/// Whether an example votes for itself in the kNN probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Fit and predict on the same examples (nn_example_difficulty, scikit-learn's default).
    IncludeSelf,
    /// Leave the example out of its own neighbours.
    LeaveOneOut,
}

/// kNN predictions of `n` examples from one layer's representations `x` `[n, dim]`.
fn knn_predict(x: &[f64], dim: usize, labels: &[usize], k: usize, probe: Probe) -> Vec<usize> {
    let n = labels.len();
    (0..n)
        .map(|i| {
            let xi = &x[i * dim..(i + 1) * dim];
            let mut d: Vec<(f64, usize)> = (0..n)
                .filter(|&j| probe == Probe::IncludeSelf || j != i)
                .map(|j| {
                    let xj = &x[j * dim..(j + 1) * dim];
                    (
                        xi.iter()
                            .zip(xj)
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum::<f64>(),
                        j,
                    )
                })
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            // the neighbours' labels sorted, so equal labels are runs and the first run with
            // the most votes is the smallest such class (scikit-learn's mode); labels may be
            // sparse (a vocabulary's token ids) without a vote table per class
            let mut near: Vec<usize> = d.iter().take(k).map(|&(_, j)| labels[j]).collect();
            near.sort_unstable();
            let (mut best, mut best_votes) = (0, 0);
            let mut run = 0;
            for (t, &c) in near.iter().enumerate() {
                run = if t > 0 && near[t - 1] == c {
                    run + 1
                } else {
                    1
                };
                if run > best_votes {
                    (best, best_votes) = (c, run);
                }
            }
            best
        })
        .collect()
}

/// Prediction depth of every example: `layers[l]` holds the representations `[n, dims[l]]` of
/// layer `l` (row-major), the probes are fit on `labels`, and an example's prediction must match
/// `targets` (its label, or the network's final prediction) from its depth on. `k` neighbours
/// (Baldock et al. use 30).
///
/// # Errors
/// [`Error::Shape`] for sizes that do not fit, `k` of 0 or larger than the examples available.
pub fn prediction_depth(
    layers: &[Vec<f64>],
    dims: &[usize],
    labels: &[usize],
    targets: &[usize],
    k: usize,
    probe: Probe,
) -> Result<Vec<usize>> {
    let n = labels.len();
    let available = if probe == Probe::IncludeSelf {
        n
    } else {
        n.saturating_sub(1)
    };
    if layers.len() != dims.len() || targets.len() != n || k == 0 || k > available {
        return Err(Error::Shape {
            what: "prediction_depth".into(),
            message: format!(
                "{} layers with {} dims, {n} labels, {} targets, k = {k} (at most {available}); give one dim per layer, one target per example and 1 ≤ k ≤ the neighbours available",
                layers.len(),
                dims.len(),
                targets.len()
            ),
        });
    }
    if let Some((l, _)) = layers
        .iter()
        .zip(dims)
        .enumerate()
        .find(|(_, (x, d))| x.len() != n * **d)
    {
        return Err(Error::Shape {
            what: format!("layer {l}"),
            message: format!(
                "{} values for {n} examples × {} dimensions",
                layers[l].len(),
                dims[l]
            ),
        });
    }
    let mut acc = vec![Forgetting::default(); n];
    for (x, &dim) in layers.iter().zip(dims) {
        for (i, p) in knn_predict(x, dim, labels, k, probe)
            .into_iter()
            .enumerate()
        {
            acc[i].add(p == targets[i]);
        }
    }
    Ok(acc.iter().map(Forgetting::first_unforgettable).collect())
}
