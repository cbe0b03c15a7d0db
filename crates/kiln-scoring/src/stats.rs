//! Rank statistics in f64: average-tie ranks (`scipy.stats.rankdata`), Pearson and Spearman
//! correlation.

use crate::error::{Error, Result};

fn finite(x: &[f64], what: &str) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::Shape {
            what: what.into(),
            message: format!(
                "value {} at index {i} is not finite; drop or impute it first",
                x[i]
            ),
        }),
        None => Ok(()),
    }
}

/// Ranks `1..=n` with ties given their average rank (`scipy.stats.rankdata(x)`, method
/// `"average"`); subtract 1 for nn_example_difficulty's `rank`.
///
/// # Errors
/// [`Error::Shape`] for a NaN or infinite value.
pub fn rankdata(x: &[f64]) -> Result<Vec<f64>> {
    finite(x, "rankdata")?;
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        // positions i..=j (0-based) share the average of ranks i+1..=j+1
        let avg = (i + j + 2) as f64 / 2.0;
        for &k in &order[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    Ok(ranks)
}

/// Pearson's correlation (`None` when either side is constant).
///
/// # Errors
/// [`Error::Shape`] for different lengths, fewer than two values or a non-finite value.
pub fn pearson(a: &[f64], b: &[f64]) -> Result<Option<f64>> {
    if a.len() != b.len() || a.len() < 2 {
        return Err(Error::Shape {
            what: "pearson".into(),
            message: format!(
                "{} and {} values; correlations need two equally long series of at least 2",
                a.len(),
                b.len()
            ),
        });
    }
    finite(a, "pearson (first)")?;
    finite(b, "pearson (second)")?;
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        return Ok(None);
    }
    Ok(Some((sab / (saa.sqrt() * sbb.sqrt())).clamp(-1.0, 1.0)))
}

/// Spearman's rank correlation: Pearson's on average-tie ranks (`scipy.stats.spearmanr`).
///
/// # Errors
/// As [`pearson`].
pub fn spearman(a: &[f64], b: &[f64]) -> Result<Option<f64>> {
    if a.len() != b.len() {
        return pearson(a, b);
    }
    pearson(&rankdata(a)?, &rankdata(b)?)
}
