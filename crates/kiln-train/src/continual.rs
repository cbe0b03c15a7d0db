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
//! [`run_sequence`] trains a model through a sequence of tasks with one set of algorithms,
//! scoring every task after every stage, and writes the matrix, these metrics and a heatmap.
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

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::trainer::{Algorithm, TrainTask, Trainer, TrainerConfig};

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

/// One stage of a task sequence: a task, how long to train on it (its trainer settings) and
/// its name in reports.
pub struct Stage<T> {
    /// The task's name (rows and columns of the matrix).
    pub name: String,
    /// The task (data, loss, evaluation).
    pub task: T,
    /// How to train on it (length, optimiser, checkpoints…).
    pub trainer: TrainerConfig,
}

/// What a task sequence measured: every task's score before any training (`baseline`) and
/// after each stage (`matrix[i][j]`: task j after training stage i), and the transfer metrics
/// (computed on the score oriented so that higher is better: a loss is negated first, so BWT and
/// forgetting are in the score's units with forgetting ≥ 0 meaning worse).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SequenceReport {
    /// The tasks, in order.
    pub tasks: Vec<String>,
    /// What the scores are (`accuracy`, `loss`…).
    pub metric: String,
    /// Whether a higher score is better.
    pub higher_is_better: bool,
    /// Each task's score before the first stage.
    pub baseline: Vec<f64>,
    /// `matrix[i][j]`: task j's score after stage i.
    pub matrix: Vec<Vec<f64>>,
    /// ACC, BWT, FWT, forgetting (see [`transfer_metrics`]).
    pub metrics: TransferMetrics,
}

impl SequenceReport {
    /// The report of a score matrix with its baselines.
    ///
    /// # Errors
    /// See [`transfer_metrics`].
    pub fn new(
        tasks: Vec<String>,
        metric: &str,
        higher_is_better: bool,
        baseline: Vec<f64>,
        matrix: Vec<Vec<f64>>,
    ) -> Result<Self> {
        let sign = if higher_is_better { 1.0 } else { -1.0 };
        let oriented: Vec<Vec<f64>> = matrix
            .iter()
            .map(|r| r.iter().map(|x| sign * x).collect())
            .collect();
        let b: Vec<f64> = baseline.iter().map(|x| sign * x).collect();
        let mut metrics = transfer_metrics(&oriented, Some(&b))?;
        // ACC in the score's own units
        metrics.acc *= sign;
        Ok(Self {
            tasks,
            metric: metric.to_owned(),
            higher_is_better,
            baseline,
            matrix,
            metrics,
        })
    }

    /// An SVG heatmap of the matrix (rows: after stage i; columns: task j; the baseline as a
    /// first row), darker = better, each cell labelled with its value.
    pub fn heatmap_svg(&self, title: &str) -> String {
        let mut rows: Vec<(String, &Vec<f64>)> = vec![("before".to_owned(), &self.baseline)];
        rows.extend(
            self.tasks
                .iter()
                .zip(&self.matrix)
                .map(|(t, r)| (format!("after {t}"), r)),
        );
        heatmap(title, &rows, &self.tasks, self.higher_is_better)
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A labelled heatmap as SVG text: rows (label, values) over `columns`.
pub fn heatmap(
    title: &str,
    rows: &[(String, &Vec<f64>)],
    columns: &[String],
    higher_is_better: bool,
) -> String {
    let (cell_w, cell_h, left, top) = (90.0, 34.0, 150.0, 60.0);
    let width = left + cell_w * columns.len() as f64 + 20.0;
    let height = top + cell_h * rows.len() as f64 + 20.0;
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|(_, r)| r.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="22" font-size="14" font-weight="bold">{}</text>
"#,
        xml(title)
    );
    for (j, c) in columns.iter().enumerate() {
        let x = left + cell_w * (j as f64 + 0.5);
        s += &format!(
            r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>
"#,
            top - 8.0,
            xml(c)
        );
    }
    for (i, (label, r)) in rows.iter().enumerate() {
        let y = top + cell_h * i as f64;
        s += &format!(
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>
"#,
            left - 8.0,
            y + cell_h * 0.6,
            xml(label)
        );
        for (j, &v) in r.iter().enumerate() {
            let mut t = ((v - lo) / span).clamp(0.0, 1.0);
            if !higher_is_better {
                t = 1.0 - t;
            }
            // white → dark blue
            let (rr, gg, bb) = (
                (255.0 - t * 225.0) as u8,
                (255.0 - t * 175.0) as u8,
                (255.0 - t * 95.0) as u8,
            );
            let fg = if t > 0.55 { "white" } else { "black" };
            let x = left + cell_w * j as f64;
            s += &format!(
                r#"<rect x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" fill="rgb({rr},{gg},{bb})" stroke="white"/><text x="{}" y="{}" text-anchor="middle" fill="{fg}">{v:.3}</text>
"#,
                x + cell_w / 2.0,
                y + cell_h * 0.6
            );
        }
    }
    s + "</svg>\n"
}

/// What a task sequence's scores are: a name for reports and whether higher is better
/// (`Metric { name: "accuracy", higher_is_better: true }`, or a loss with `false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric<'a> {
    /// The score's name (`accuracy`, `loss`…).
    pub name: &'a str,
    /// Whether a higher score is better.
    pub higher_is_better: bool,
}

/// What [`run_sequence`] returns.
pub struct SequenceOutcome<M> {
    /// The model after the last stage.
    pub model: M,
    /// The model after each stage (for post-hoc merges of sequential checkpoints).
    pub stage_models: Vec<M>,
    /// The matrix and metrics (also written as `sequence.json` and `sequence.svg`).
    pub report: SequenceReport,
}

/// Trains `model` on each stage in turn with one set of `algorithms` (their state carries from
/// one task to the next: SFA/L2 anchors, EWC's Fisher, the replay memory, an EMA), each stage
/// in its own run directory `dir/stage-<i>` (so each resumes on its own after a crash: finished
/// stages are reloaded from their last checkpoint, which needs a `save_interval` in their trainer
/// settings). `score(model, j)` scores task j; it runs for every task before the first stage and
/// after each one (`metric` says what it is). Writes `dir/sequence.json` (the [`SequenceReport`]) and `dir/sequence.svg`
/// (its heatmap) atomically.
///
/// # Errors
/// Training, scoring and I/O errors; [`Error::Config`] for no stages.
///
/// ```
/// use std::collections::BTreeMap;
/// use kiln_train::algorithms::{Sfa, SfaAnchor};
/// use kiln_train::burn::{nn::{Linear, LinearConfig}, tensor::{Device, Tensor}};
/// use kiln_train::continual::{Metric, Stage, run_sequence};
/// use kiln_train::{Algorithm, BatchSize, OptimizerConfig, StepOutput, TrainState, TrainTask, TrainerConfig};
///
/// // Task t: fit y = t + 1 from a constant input.
/// struct Fit(f32);
/// impl Fit {
///     fn loss(&self, m: &Linear) -> Tensor<1> {
///         let d = m.weight.val().device();
///         (m.forward(Tensor::<2>::ones([1, 1], &d)).sub_scalar(self.0)).powi_scalar(2).mean()
///     }
/// }
/// impl TrainTask<Linear> for Fit {
///     type Batch = ();
///     fn next_batch(&mut self, _: &TrainState, _: usize, _: usize) -> kiln_train::Result<((), BatchSize)> {
///         Ok(((), BatchSize { samples: 1, tokens: 1 }))
///     }
///     fn forward(&mut self, m: &Linear, _: ()) -> kiln_train::Result<StepOutput> { Ok(self.loss(m).into()) }
///     fn evaluate(&mut self, m: &Linear, _: &TrainState) -> kiln_train::Result<BTreeMap<String, f64>> {
///         Ok(BTreeMap::from([("loss".into(), self.loss(m).into_scalar::<f32>() as f64)]))
///     }
///     fn data_state(&self) -> serde_json::Value { serde_json::Value::Null }
///     fn restore_data_state(&mut self, _: &serde_json::Value) -> kiln_train::Result<()> { Ok(()) }
/// }
///
/// let device = Device::flex().autodiff();
/// device.seed(0);
/// let mut config = TrainerConfig::new("30ba".parse()?, OptimizerConfig::adamw(0.1, 0.0));
/// config.progress_bar = false;
/// let mut stages: Vec<Stage<Fit>> = (0..2)
///     .map(|t| Stage { name: format!("task {t}"), task: Fit(t as f32 + 1.0), trainer: config.clone() })
///     .collect();
/// let mut algorithms: Vec<Box<dyn Algorithm<Linear>>> =
///     vec![Box::new(Sfa::new(0.5, 0.25, SfaAnchor::PrevTaskEnd)?)];
/// let dir = tempfile::tempdir()?;
/// let out = run_sequence(
///     dir.path(), LinearConfig::new(1, 1).init(&device), &mut stages, &mut algorithms, &device,
///     Metric { name: "loss", higher_is_better: false }, &mut |m, j| Ok(Fit(j as f32 + 1.0).loss(m).into_scalar::<f32>() as f64),
/// )?;
/// assert_eq!(out.report.matrix.len(), 2);
/// assert!(dir.path().join("sequence.json").is_file() && dir.path().join("sequence.svg").is_file());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn run_sequence<M: Module, T: TrainTask<M>>(
    dir: &Path,
    mut model: M,
    stages: &mut [Stage<T>],
    algorithms: &mut [Box<dyn Algorithm<M>>],
    device: &Device,
    metric: Metric<'_>,
    score: &mut dyn FnMut(&M, usize) -> Result<f64>,
) -> Result<SequenceOutcome<M>> {
    let Metric {
        name: metric,
        higher_is_better,
    } = metric;
    if stages.is_empty() {
        return Err(Error::Config {
            message: "a task sequence needs at least one stage".into(),
        });
    }
    let n = stages.len();
    let baseline = (0..n)
        .map(|j| score(&model, j))
        .collect::<Result<Vec<_>>>()?;
    let mut matrix = Vec::with_capacity(n);
    let mut stage_models = Vec::with_capacity(n);
    for (i, stage) in stages.iter_mut().enumerate() {
        let out = Trainer::new(stage.trainer.clone(), dir.join(format!("stage-{i}"))).fit(
            model,
            &mut stage.task,
            algorithms,
            device,
        )?;
        model = out.model;
        matrix.push(
            (0..n)
                .map(|j| score(&model, j))
                .collect::<Result<Vec<_>>>()?,
        );
        stage_models.push(model.clone());
    }
    let tasks = stages.iter().map(|s| s.name.clone()).collect();
    let report = SequenceReport::new(tasks, metric, higher_is_better, baseline, matrix)?;
    let json = serde_json::to_vec_pretty(&report).expect("report serialises");
    kiln_checkpoint::write_atomic(&dir.join("sequence.json"), &json)?;
    kiln_checkpoint::write_atomic(
        &dir.join("sequence.svg"),
        report
            .heatmap_svg(&format!("{metric} after each stage"))
            .as_bytes(),
    )?;
    Ok(SequenceOutcome {
        model,
        stage_models,
        report,
    })
}
