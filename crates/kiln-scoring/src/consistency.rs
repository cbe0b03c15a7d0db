//! How consistent a score is across runs (Kwok et al.'s measurements): split-half correlation of
//! single runs, its growth when each half averages R runs, correlations between scores within a
//! run, and the principal components of the score matrix.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::stats::{pearson, rankdata, spearman};

/// A seeded SplitMix64 generator (for splits and permutations reproducible on every platform).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Fisher–Yates.
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

fn check_runs(runs: &[Vec<f64>], need: usize) -> Result<usize> {
    if runs.len() < need {
        return Err(Error::Shape {
            what: "runs".into(),
            message: format!("{} runs; this needs at least {need}", runs.len()),
        });
    }
    let n = runs[0].len();
    if let Some((i, r)) = runs.iter().enumerate().find(|(_, r)| r.len() != n) {
        return Err(Error::Shape {
            what: format!("run {i}"),
            message: format!("{} examples; run 0 has {n}", r.len()),
        });
    }
    Ok(n)
}

/// Correlation of one score between two disjoint halves of the runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitHalf {
    /// Pairs compared (run i of half A with run i of half B).
    pub pairs: usize,
    /// Mean Spearman correlation over the pairs.
    pub spearman: f64,
    /// Mean Pearson correlation over the pairs.
    pub pearson: f64,
}

/// Split-half consistency of single runs: the runs, shuffled with `seed`, are split into two
/// halves; run i of one half is correlated with run i of the other across examples; the
/// correlations are averaged (Kwok et al.'s `fig_cov`). A constant run pairs as correlation 0.
///
/// # Errors
/// [`Error::Shape`] for fewer than two runs or runs of different lengths.
pub fn split_half(runs: &[Vec<f64>], seed: u64) -> Result<SplitHalf> {
    check_runs(runs, 2)?;
    let mut order: Vec<usize> = (0..runs.len()).collect();
    Rng::new(seed).shuffle(&mut order);
    let half = runs.len() / 2;
    let (mut s, mut p) = (0.0, 0.0);
    for i in 0..half {
        let (a, b) = (&runs[order[i]], &runs[order[half + i]]);
        s += spearman(a, b)?.unwrap_or(0.0);
        p += pearson(a, b)?.unwrap_or(0.0);
    }
    Ok(SplitHalf {
        pairs: half,
        spearman: s / half as f64,
        pearson: p / half as f64,
    })
}

/// One point of [`averaging_curve`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Averaged {
    /// Runs averaged in each half.
    pub runs: usize,
    /// Mean Spearman correlation between the two halves' averages.
    pub spearman: f64,
    /// Mean Pearson correlation.
    pub pearson: f64,
}

/// How consistency grows with averaging: for R = 1 … ⌊runs/2⌋, `splits` seeded random choices
/// of two disjoint sets of R runs; the per-example mean of each set is correlated with the
/// other's, and the correlations averaged.
///
/// # Errors
/// As [`split_half`]; [`Error::Shape`] for `splits == 0`.
pub fn averaging_curve(runs: &[Vec<f64>], splits: usize, seed: u64) -> Result<Vec<Averaged>> {
    let n = check_runs(runs, 2)?;
    if splits == 0 {
        return Err(Error::Shape {
            what: "splits".into(),
            message: "0; average over at least one split".into(),
        });
    }
    let mut rng = Rng::new(seed);
    let mut curve = Vec::new();
    for r in 1..=runs.len() / 2 {
        let (mut s, mut p) = (0.0, 0.0);
        for _ in 0..splits {
            let mut order: Vec<usize> = (0..runs.len()).collect();
            rng.shuffle(&mut order);
            let mean = |ids: &[usize]| -> Vec<f64> {
                (0..n)
                    .map(|e| ids.iter().map(|&i| runs[i][e]).sum::<f64>() / ids.len() as f64)
                    .collect()
            };
            let (a, b) = (mean(&order[..r]), mean(&order[r..2 * r]));
            s += spearman(&a, &b)?.unwrap_or(0.0);
            p += pearson(&a, &b)?.unwrap_or(0.0);
        }
        curve.push(Averaged {
            runs: r,
            spearman: s / splits as f64,
            pearson: p / splits as f64,
        });
    }
    Ok(curve)
}

/// Spearman correlations between scores within one run: `matrix[i][j]` for scores `i`, `j`
/// (each a column over the same examples); a constant column correlates 0.
///
/// # Errors
/// [`Error::Shape`] for columns of different lengths.
pub fn cross_correlations(columns: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
    let k = columns.len();
    let mut m = vec![vec![1.0; k]; k];
    for i in 0..k {
        for j in i + 1..k {
            let c = spearman(&columns[i], &columns[j])?.unwrap_or(0.0);
            m[i][j] = c;
            m[j][i] = c;
        }
    }
    Ok(m)
}

/// Eigenvalues of a symmetric matrix by cyclic Jacobi rotations, descending.
fn symmetric_eigenvalues(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let k = a.len();
    for _ in 0..100 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                // Numerical Recipes' rotation: t = tan φ zeroes a[p][q]
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (arp, arq) = (row[p], row[q]);
                    row[p] = c * arp - s * arq;
                    row[q] = s * arp + c * arq;
                }
                let (row_p, row_q) = (a[p].clone(), a[q].clone());
                for (r, (apr, aqr)) in row_p.into_iter().zip(row_q).enumerate() {
                    a[p][r] = c * apr - s * aqr;
                    a[q][r] = s * apr + c * aqr;
                }
            }
        }
    }
    let mut ev: Vec<f64> = (0..k).map(|i| a[i][i]).collect();
    ev.sort_by(|x, y| y.total_cmp(x));
    ev
}

/// Principal components of a score matrix (columns = scores over the same examples): each column
/// is rank-transformed (with `rank`) and standardised, and the explained-variance ratio of each
/// component — the eigenvalues of the columns' correlation matrix over their sum — is returned,
/// descending. "A single notion of difficulty" shows as one dominant first ratio.
///
/// # Errors
/// [`Error::Shape`] for fewer than two columns, columns of different lengths or a constant
/// column.
pub fn explained_variance(columns: &[Vec<f64>], rank: bool) -> Result<Vec<f64>> {
    if columns.len() < 2 {
        return Err(Error::Shape {
            what: "explained_variance".into(),
            message: format!("{} columns; PCA needs at least two scores", columns.len()),
        });
    }
    let cols: Vec<Vec<f64>> = if rank {
        columns.iter().map(|c| rankdata(c)).collect::<Result<_>>()?
    } else {
        columns.to_vec()
    };
    let k = cols.len();
    let mut m = vec![vec![1.0; k]; k];
    for i in 0..k {
        for j in i + 1..k {
            let c = pearson(&cols[i], &cols[j])?.ok_or_else(|| Error::Shape {
                what: format!("score columns {i} and {j}"),
                message: "one is constant; drop it before a PCA".into(),
            })?;
            m[i][j] = c;
            m[j][i] = c;
        }
    }
    let ev = symmetric_eigenvalues(m);
    let total: f64 = ev.iter().sum();
    Ok(ev.into_iter().map(|e| e.max(0.0) / total).collect())
}
