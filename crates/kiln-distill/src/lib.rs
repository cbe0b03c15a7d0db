//! Knowledge distillation for kiln-train runs — MosaicML's "knowledge distillation for sequences
//! of related runs" (arXiv 2303.06480): when a run repeats (a sweep, a monthly refresh), distil the
//! new run from the previous one.
//!
//! - [`loss`]: `L = ce_weight·CE + kd_weight·T²·D(p_t^T ‖ p_s^T)` ([`KdLoss`]) with D an explicit
//!   [`Divergence`] — forward KL, reverse KL, TRL's generalized JSD_β, TVD — plus logit MSE and
//!   the sparse KL over a teacher's top-k ([`sparse_forward_kl`], [`Missing`]). Values and
//!   gradients equal PyTorch's `kl_div(batchmean)·T²`, TRL's `generalized_jsd_loss` and
//!   torchdistill's `KDLoss` to 1e-6 (`tests/losses.rs`).
//! - [`Distill`]: a kiln-train [`Algorithm`](kiln_train::Algorithm) that adds the distillation
//!   term at `AfterLoss` to the task's loss, token by token (the student's prediction rows, rows
//!   labelled `-100` left out) or example by example, inside a [`Window`] of the run (an early
//!   window, every n-th step), logging `kd_loss`, the teacher-forward counter, its seconds and
//!   FLOPs.
//! - Teachers ([`Teacher`]): a live GPT-2 or one loaded from a Hugging Face directory or a
//!   kiln-train checkpoint ([`gpt2::Gpt2Teacher`], feature `models`, vocabularies checked), an
//!   [`Ensemble`] (one member sampled per step, or their logits averaged), kiln-models'
//!   classifiers ([`classifiers::BertClassifierTeacher`] from the batch's tokens,
//!   [`classifiers::ImageTeacher`] by example id), or any implementation of the trait.
//! - [`cache`]: a teacher's top-k log-probabilities captured once into memory-mapped shards with
//!   a manifest ([`CacheWriter`], [`gpt2::capture`]) and read back by example id
//!   ([`TopKCache`], [`Distill::cached`]), checked against the run's data, vocabulary and k.
//!
//! ```
//! use kiln_distill::burn::tensor::{Device, Tensor};
//! use kiln_distill::{Divergence, KdLoss};
//!
//! let d = Device::flex();
//! let student = Tensor::<2>::from_floats([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], &d);
//! let teacher = Tensor::<2>::from_floats([[3.0, 0.0, -2.0], [0.0, 1.0, 0.0]], &d);
//! let ce = Tensor::<1>::from_floats([0.9], &d); // the task's own loss
//! // Hinton et al.'s objective: half hard loss, half T²-scaled KL(teacher ‖ student) at T = 2
//! let kd = KdLoss { ce_weight: 0.5, kd_weight: 0.5, temperature: 2.0, divergence: Divergence::ForwardKl };
//! let loss = kd.combine(ce, student.clone(), teacher, None)?;
//! assert!(loss.into_scalar::<f32>() > 0.45);
//! // the same student as its own teacher: no distillation term
//! let zero = kiln_distill::divergence(student.clone(), student, None, 2.0, Divergence::Jsd { beta: 0.5 })?;
//! assert!(zero.into_scalar::<f32>().abs() < 1e-6);
//! # Ok::<(), kiln_distill::Error>(())
//! ```
//!
//! In a run: `algorithms.push(Box::new(Distill::new(kd, Box::new(teacher), Window::always())?))`
//! with a task whose forward returns its logits (kiln-train's `CausalLmTask`,
//! `ClassificationTask` and `ImageClassificationTask` do).

#![warn(missing_docs)]

pub mod cache;
#[cfg(feature = "models")]
pub mod classifiers;
pub mod distill;
mod error;
#[cfg(feature = "models")]
pub mod gpt2;
pub mod loss;

pub use burn;
pub use cache::{CacheSpec, CacheWriter, CachedRow, LogProbDtype, TopKCache, fingerprint};
pub use distill::{Distill, Ensemble, EnsembleMode, TableTeacher, Teacher, Window};
pub use error::{Error, Result};
pub use loss::{
    Divergence, KdLoss, Missing, SparseTeacher, divergence, logit_mse, sparse_forward_kl,
};

// The README's example is compiled as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
