//! Scores of one prediction from its logits and label, in f64 (nn_example_difficulty's
//! `pointwise_metrics` keys, plus the loss and AUM's logit margin).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Every pointwise score of one prediction (`p = softmax(z)`, label `y`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pointwise {
    /// `1[argmax z = y]` (the first maximum wins ties, as `torch.argmax`).
    pub acc: f64,
    /// `−Σ p log p` (0·log 0 = 0).
    pub ent: f64,
    /// `p_y`.
    pub conf: f64,
    /// `max p`.
    pub maxconf: f64,
    /// `p_y − max_{c≠y} p_c` — on **probabilities**, as nn_example_difficulty's `margin`.
    pub margin: f64,
    /// `z_y − max_{c≠y} z_c` — on **logits**: one measurement of AUM (Pleiss et al. 2020).
    pub aum_margin: f64,
    /// `‖p − onehot(y)‖₂` (Paul et al. 2021).
    pub el2n: f64,
    /// `−log p_y`.
    pub loss: f64,
}

/// The names of [`Pointwise`]'s scores, in field order.
pub const SCORES: [&str; 8] = [
    "acc",
    "ent",
    "conf",
    "maxconf",
    "margin",
    "aum_margin",
    "el2n",
    "loss",
];

impl Pointwise {
    /// The scores of one row of logits (`z`, at least two classes) with label `label`.
    ///
    /// # Errors
    /// [`Error::OutOfRange`] for a label ≥ the number of classes, [`Error::Shape`] for fewer than
    /// two classes, [`Error::NonFinite`] for a NaN or infinite logit (`example` names the row).
    pub fn of(z: &[f64], label: usize, example: usize) -> Result<Self> {
        let c = z.len();
        if c < 2 {
            return Err(Error::Shape {
                what: format!("example {example}"),
                message: format!("{c} logits; scores need at least two classes"),
            });
        }
        if label >= c {
            return Err(Error::OutOfRange {
                what: "label",
                value: label,
                limit: c,
                hint: "labels are class indices of the logits' last dimension",
            });
        }
        if let Some(&v) = z.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite { example, value: v });
        }
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|&v| (v - max).exp()).sum();
        let log_z = max + sum.ln();
        let p: Vec<f64> = z.iter().map(|&v| (v - log_z).exp()).collect();
        // log p exactly from the logits (p may underflow to 0 where log p does not)
        let ent = -p
            .iter()
            .zip(z)
            .map(|(&pc, &zc)| if pc > 0.0 { pc * (zc - log_z) } else { 0.0 })
            .sum::<f64>();
        let argmax = z
            .iter()
            .enumerate()
            .fold(0, |best, (i, &v)| if v > z[best] { i } else { best });
        let others = |v: &[f64]| {
            v.iter()
                .enumerate()
                .filter(|(i, _)| *i != label)
                .map(|(_, &x)| x)
                .fold(f64::NEG_INFINITY, f64::max)
        };
        let el2n = p
            .iter()
            .enumerate()
            .map(|(i, &pc)| {
                let d = pc - if i == label { 1.0 } else { 0.0 };
                d * d
            })
            .sum::<f64>()
            .sqrt();
        Ok(Self {
            acc: f64::from(u8::from(argmax == label)),
            ent,
            conf: p[label],
            maxconf: p.iter().copied().fold(0.0, f64::max),
            margin: p[label] - others(&p),
            aum_margin: z[label] - others(z),
            el2n,
            loss: log_z - z[label],
        })
    }

    /// The scores of a batch of logits `[rows, classes]` (row-major, any float type) with one
    /// label per row.
    ///
    /// # Errors
    /// [`Error::Shape`] when the sizes do not fit; [`Pointwise::of`]'s errors per row.
    pub fn batch<F: Copy + Into<f64>>(
        logits: &[F],
        classes: usize,
        labels: &[usize],
    ) -> Result<Vec<Self>> {
        if classes == 0 || logits.len() != labels.len() * classes {
            return Err(Error::Shape {
                what: "logits".into(),
                message: format!(
                    "{} values for {} labels × {classes} classes",
                    logits.len(),
                    labels.len()
                ),
            });
        }
        logits
            .chunks_exact(classes)
            .zip(labels)
            .enumerate()
            .map(|(i, (row, &y))| {
                let z: Vec<f64> = row.iter().map(|&v| v.into()).collect();
                Self::of(&z, y, i)
            })
            .collect()
    }

    /// The score called `name` (one of [`SCORES`]).
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "acc" => self.acc,
            "ent" => self.ent,
            "conf" => self.conf,
            "maxconf" => self.maxconf,
            "margin" => self.margin,
            "aum_margin" => self.aum_margin,
            "el2n" => self.el2n,
            "loss" => self.loss,
            _ => return None,
        })
    }
}
