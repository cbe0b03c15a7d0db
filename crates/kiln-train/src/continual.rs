//! Continual-learning metrics from an accuracy (or any score) matrix `R`, where `R[i][j]` is
//! the score on task j after training on tasks 0..=i (T × T, 0-based):
//!
//! - ACC = `mean_j R[T−1][j]` — the final average score;
//! - BWT = `mean_{j<T−1} (R[T−1][j] − R[j][j])` — backward transfer (Lopez-Paz & Ranzato 2017;
//!   negative = forgetting);
//! - FWT = `mean_{j≥1} (R[j−1][j] − b_j)` — forward transfer against each task's score `b_j`
//!   before any training (needs those baselines);
//! - forgetting = `mean_{j<T−1} max_{l<T−1} (R[l][j] − R[T−1][j])` (Chaudhry et al. 2018: the
//!   best score a task ever had before the end, minus its final score).
//!
//! ```
//! use kiln_train::continual::transfer_metrics;
//!
//! let r = [vec![0.9, 0.1], vec![0.7, 0.8]];
//! let m = transfer_metrics(&r, Some(&[0.1, 0.2]))?;
//! assert!((m.acc - 0.75).abs() < 1e-12);
//! assert!((m.bwt - (0.7 - 0.9)).abs() < 1e-12);
//! assert!((m.fwt.unwrap() - (0.1 - 0.2)).abs() < 1e-12);
//! assert!((m.forgetting - 0.2).abs() < 1e-12);
//! # Ok::<(), kiln_train::Error>(())
//! ```

use serde::Serialize;

use crate::error::{Error, Result};

/// ACC, BWT, FWT and forgetting of a score matrix. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TransferMetrics {
    /// Mean final score.
    pub acc: f64,
    /// Backward transfer (0 for one task).
    pub bwt: f64,
    /// Forward transfer (none without baselines or for one task).
    pub fwt: Option<f64>,
    /// Mean forgetting (0 for one task).
    pub forgetting: f64,
}

/// The metrics of `r` (T × T, `r[i][j]`: score on task j after training task i) with optional
/// per-task baselines (each task's score before any training, for FWT).
///
/// # Errors
/// [`Error::Config`] for an empty or non-square matrix, baselines of another length, or a
/// non-finite score.
pub fn transfer_metrics(r: &[Vec<f64>], baselines: Option<&[f64]>) -> Result<TransferMetrics> {
    let t = r.len();
    let bad = |message: String| Err(Error::Config { message });
    if t == 0 {
        return bad("the score matrix is empty: it needs one row per trained task".into());
    }
    if let Some(i) = r.iter().position(|row| row.len() != t) {
        return bad(format!(
            "the score matrix must be {t} × {t} (row i: every task's score after training task i); row {i} has {} entries",
            r[i].len()
        ));
    }
    if let Some((i, j)) = (0..t)
        .flat_map(|i| (0..t).map(move |j| (i, j)))
        .find(|&(i, j)| !r[i][j].is_finite())
    {
        return bad(format!("score R[{i}][{j}] = {} is not finite", r[i][j]));
    }
    if let Some(b) = baselines {
        if b.len() != t {
            return bad(format!(
                "{} baselines for {t} tasks: give each task's score before any training",
                b.len()
            ));
        }
        if let Some(j) = b.iter().position(|x| !x.is_finite()) {
            return bad(format!("baseline {j} = {} is not finite", b[j]));
        }
    }
    let last = &r[t - 1];
    let mean = |xs: &mut dyn Iterator<Item = f64>| {
        let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
        if n == 0 { 0.0 } else { s / n as f64 }
    };
    let acc = mean(&mut last.iter().copied());
    let bwt = mean(&mut (0..t - 1).map(|j| last[j] - r[j][j]));
    let fwt = baselines
        .filter(|_| t > 1)
        .map(|b| mean(&mut (1..t).map(|j| r[j - 1][j] - b[j])));
    let forgetting = mean(&mut (0..t - 1).map(|j| {
        (0..t - 1)
            .map(|l| r[l][j] - last[j])
            .fold(f64::NEG_INFINITY, f64::max)
    }));
    Ok(TransferMetrics {
        acc,
        bwt,
        fwt,
        forgetting,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_built_matrix_gives_the_formulas_values() {
        // Three tasks; rows: after task 0, 1, 2.
        let r = vec![
            vec![0.80, 0.10, 0.20],
            vec![0.60, 0.90, 0.25],
            vec![0.50, 0.70, 0.95],
        ];
        let b = [0.05, 0.15, 0.10];
        let m = transfer_metrics(&r, Some(&b)).unwrap();
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        close(m.acc, (0.50 + 0.70 + 0.95) / 3.0);
        close(m.bwt, ((0.50 - 0.80) + (0.70 - 0.90)) / 2.0);
        close(m.fwt.unwrap(), ((0.10 - 0.15) + (0.25 - 0.10)) / 2.0);
        // task 0: best before the end 0.80 (after task 0) → 0.30; task 1: best 0.90 → 0.20
        close(m.forgetting, (0.30 + 0.20) / 2.0);
        // No baselines: no FWT. One task: nothing to transfer or forget.
        assert_eq!(transfer_metrics(&r, None).unwrap().fwt, None);
        let one = transfer_metrics(&[vec![0.7]], Some(&[0.1])).unwrap();
        assert_eq!(
            (one.acc, one.bwt, one.fwt, one.forgetting),
            (0.7, 0.0, None, 0.0)
        );
    }

    #[test]
    fn bad_matrices_are_refused_by_name() {
        let e = |r: &[Vec<f64>], b: Option<&[f64]>| transfer_metrics(r, b).unwrap_err().to_string();
        assert!(e(&[], None).contains("empty"));
        assert!(e(&[vec![1.0, 2.0], vec![1.0]], None).contains("row 1 has 1"));
        assert!(e(&[vec![1.0, f64::NAN], vec![1.0, 1.0]], None).contains("R[0][1]"));
        assert!(e(&[vec![1.0]], Some(&[0.0, 1.0])).contains("2 baselines for 1 tasks"));
    }
}
