//! Distillation losses on rows of logits (`[N, C]`: one row per example for a classifier, one per
//! scored token for a language model), each the mean over the rows that count.
//!
//! `L = ce_weight·CE + kd_weight·T²·D(p_t^T ‖ p_s^T)` ([`KdLoss`]), with `p^T = softmax(z/T)` and
//! D one of [`Divergence`]. The field names say which term each weight scales: torchdistill's
//! `alpha` weights the hard loss and Composer's `kd_loss_weight` the soft one, so kiln uses
//! neither name.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor};

use crate::error::{Error, Result};

/// The divergence between the teacher's and the student's tempered distributions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Divergence {
    /// KL(p_t ‖ p_s) = Σ p_t (log p_t − log p_s): mass-covering, Hinton et al.'s KD
    /// (`F.kl_div(log p_s, p_t)` in PyTorch's argument order).
    ForwardKl,
    /// KL(p_s ‖ p_t): mode-seeking (MiniLLM).
    ReverseKl,
    /// TRL's generalized Jensen–Shannon divergence (GKD, Agarwal et al.):
    /// `β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m)` with `m = β·p_t + (1 − β)·p_s`; as TRL, β = 0 is
    /// the forward KL and β = 1 the reverse KL (not the limits of the formula, which vanish).
    Jsd {
        /// β in [0, 1].
        beta: f64,
    },
    /// Total variation distance `½·Σ |p_t − p_s|` (DistillKit's `tvd`).
    Tvd,
}

/// Mean over rows of `per_row` (`[N]`), counting only rows where `weights` (`[N]`, 0 or 1) is 1;
/// every row without weights. An all-zero mask gives 0 with a gradient path (as TRL's clamp).
fn masked_mean(per_row: Tensor<1>, weights: Option<Tensor<1>>) -> Tensor<1> {
    match weights {
        None => per_row.mean(),
        Some(w) => {
            let count = w.clone().sum().clamp_min(1.0);
            (per_row * w).sum() / count
        }
    }
}

fn kl_rows(log_p: Tensor<2>, log_q: Tensor<2>) -> Tensor<1> {
    // Σ p (log p − log q) per row
    let [n, _] = log_p.dims();
    (log_p.clone().exp() * (log_p - log_q))
        .sum_dim(1)
        .reshape([n])
}

/// D(p_t^T ‖ p_s^T) per row of `student` and `teacher` logits (`[N, C]`), averaged over the rows
/// with weight 1 (`weights` `[N]` of 0/1; none: every row). The teacher is a constant (detached).
///
/// # Errors
/// [`Error::Mismatch`] for shapes that differ; [`Error::Config`] for T ≤ 0 or β outside [0, 1].
pub fn divergence(
    student: Tensor<2>,
    teacher: Tensor<2>,
    weights: Option<Tensor<1>>,
    temperature: f64,
    d: Divergence,
) -> Result<Tensor<1>> {
    check(&student, &teacher, temperature)?;
    let [n, _] = student.dims();
    let teacher = teacher.detach();
    let ls = log_softmax(student.div_scalar(temperature), 1);
    let lt = log_softmax(teacher.div_scalar(temperature), 1);
    let per_row = match d {
        Divergence::ForwardKl => kl_rows(lt, ls),
        Divergence::ReverseKl => kl_rows(ls, lt),
        Divergence::Jsd { beta } => {
            if !(0.0..=1.0).contains(&beta) {
                return Err(Error::Config {
                    message: format!("JSD β {beta} is not in [0, 1]"),
                });
            }
            if beta == 0.0 {
                kl_rows(lt, ls)
            } else if beta == 1.0 {
                kl_rows(ls, lt)
            } else {
                // log m = logsumexp(log p_s + ln(1 − β), log p_t + ln β), elementwise
                let a = ls.clone().add_scalar((1.0 - beta).ln());
                let b = lt.clone().add_scalar(beta.ln());
                let max = a.clone().max_pair(b.clone());
                let lm = max.clone() + ((a - max.clone()).exp() + (b - max).exp()).log();
                kl_rows(lt, lm.clone()).mul_scalar(beta) + kl_rows(ls, lm).mul_scalar(1.0 - beta)
            }
        }
        Divergence::Tvd => {
            let (ps, pt) = (ls.exp(), lt.exp());
            (pt - ps).abs().sum_dim(1).reshape([n]).mul_scalar(0.5)
        }
    };
    Ok(masked_mean(per_row, weights))
}

/// Mean squared difference of the logits over the rows that count and every class.
///
/// # Errors
/// [`Error::Mismatch`] for shapes that differ.
pub fn logit_mse(
    student: Tensor<2>,
    teacher: Tensor<2>,
    weights: Option<Tensor<1>>,
) -> Result<Tensor<1>> {
    check(&student, &teacher, 1.0)?;
    let [n, c] = student.dims();
    let per_row = (student - teacher.detach())
        .powi_scalar(2)
        .sum_dim(1)
        .reshape([n])
        .div_scalar(c as f64);
    Ok(masked_mean(per_row, weights))
}

fn check(student: &Tensor<2>, teacher: &Tensor<2>, temperature: f64) -> Result<()> {
    if student.dims() != teacher.dims() {
        return Err(Error::Mismatch {
            message: format!(
                "student logits are {:?} and teacher logits {:?}; they must be the same rows × classes (same vocabulary, same positions)",
                student.dims(),
                teacher.dims()
            ),
        });
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Config {
            message: format!("temperature {temperature} must be positive"),
        });
    }
    Ok(())
}

/// How a cached top-k distribution treats the classes outside the top k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Ignore them: the KL over the top k only (DistillKit's `zero`).
    Zero,
    /// Spread the tail mass `1 − Σ top-k p` evenly over them (DistillKit's `uniform`).
    Uniform,
}

/// The teacher's top-k of each row: class indices `[N, k]`, their log-probabilities `[N, k]` (at
/// the cache's temperature) and the tail mass `[N]`.
#[derive(Debug, Clone)]
pub struct SparseTeacher {
    /// Class indices.
    pub indices: Tensor<2, Int>,
    /// log p_t of those classes.
    pub log_probs: Tensor<2>,
    /// 1 − Σ p_t over the top k (≥ 0).
    pub tail: Tensor<1>,
}

/// KL(p_t ‖ p_s^T) with the teacher given by its top-k ([`SparseTeacher`]), `missing` deciding the
/// tail, averaged over the rows that count (Megatron-LM's and DistillKit's sparse KL). With k = C
/// it is the dense forward KL.
///
/// # Errors
/// [`Error::Mismatch`] when the teacher's rows or k do not fit the student; [`Error::Config`] for
/// T ≤ 0.
pub fn sparse_forward_kl(
    student: Tensor<2>,
    teacher: &SparseTeacher,
    weights: Option<Tensor<1>>,
    temperature: f64,
    missing: Missing,
) -> Result<Tensor<1>> {
    let [n, c] = student.dims();
    let [tn, k] = teacher.log_probs.dims();
    if tn != n || teacher.indices.dims() != [n, k] || teacher.tail.dims() != [n] || k > c {
        return Err(Error::Mismatch {
            message: format!(
                "the cached teacher has {tn} rows of top-{k} (indices {:?}, tail {:?}); the student has {n} rows of {c} classes",
                teacher.indices.dims(),
                teacher.tail.dims()
            ),
        });
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Config {
            message: format!("temperature {temperature} must be positive"),
        });
    }
    let ls = log_softmax(student.div_scalar(temperature), 1);
    let picked = ls.clone().gather(1, teacher.indices.clone());
    let lt = teacher.log_probs.clone().detach();
    let mut per_row = (lt.clone().exp() * (lt - picked.clone()))
        .sum_dim(1)
        .reshape([n]);
    if missing == Missing::Uniform && k < c {
        // Σ_{j∉top} q·(log q − ls_j) = tail·log q − q·(Σ_all ls − Σ_top ls), q = tail/(C − k)
        let tail = teacher.tail.clone().detach();
        let q = tail.clone().div_scalar((c - k) as f64);
        let log_q = q.clone().clamp_min(1e-30).log();
        let rest = ls.sum_dim(1).reshape([n]) - picked.sum_dim(1).reshape([n]);
        per_row = per_row + tail * log_q - q * rest;
    }
    Ok(masked_mean(per_row, weights))
}

/// `ce_weight·CE + kd_weight·T²·D(p_t^T ‖ p_s^T)`: the usual KD objective with names that say
/// which term each weight scales. `T²` keeps the soft term's gradients on the hard term's scale
/// (Hinton et al.).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KdLoss {
    /// Weight of the task's own (hard-label) loss.
    pub ce_weight: f64,
    /// Weight of the distillation term.
    pub kd_weight: f64,
    /// Softmax temperature T (> 0).
    pub temperature: f64,
    /// The divergence D.
    pub divergence: Divergence,
}

impl KdLoss {
    /// `ce_weight·task_loss + kd_weight·T²·D(teacher ‖ student)` over the rows with weight 1.
    ///
    /// # Errors
    /// As [`divergence`].
    pub fn combine(
        &self,
        task_loss: Tensor<1>,
        student: Tensor<2>,
        teacher: Tensor<2>,
        weights: Option<Tensor<1>>,
    ) -> Result<Tensor<1>> {
        let d = divergence(student, teacher, weights, self.temperature, self.divergence)?;
        let t2 = self.temperature * self.temperature;
        Ok(task_loss.mul_scalar(self.ce_weight) + d.mul_scalar(self.kd_weight * t2))
    }
}

/// The probabilities of `logits` at temperature T (for reports and caches).
pub fn tempered_probs(logits: Tensor<2>, temperature: f64) -> Tensor<2> {
    softmax(logits.div_scalar(temperature), 1)
}
