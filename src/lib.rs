//! kiln: a decade of MosaicML/Databricks training research as Rust crates.
//!
//! This umbrella crate re-exports each kiln crate as a module, so one dependency gives you all of
//! them; depend on the individual crates (`kiln-scaling-laws`, ...) to take only what you need.
//!
//! ```
//! use kiln::scaling_laws::{ChinchillaLaw, inference};
//!
//! // How big should a model be, and how long should it train, to reach the quality of a 70B
//! // model trained on 1T tokens with the fewest FLOPs, if it will then serve 2T tokens?
//! let law = ChinchillaLaw::sardana();
//! let loss = law.loss(70e9, 1e12)?;
//! let best = inference::optimal_allocation(&law, loss, 2e12)?;
//! assert!(best.optimal.n_params < best.chinchilla.n_params);
//! assert!(best.flops() < best.chinchilla_flops());
//! # Ok::<(), kiln::scaling_laws::Error>(())
//! ```
//!
//! # Crates
//! - [`scaling_laws`] (`kiln-scaling-laws`): Chinchilla laws with inference demand — compute- and
//!   cost-optimal sizing, fitting laws to your own runs (Sardana et al., ICML 2024).
//! - [`merging`] (`kiln-merging`): Task Arithmetic, TIES, DARE, SLERP, WiSE-FT and model soups over
//!   Hugging Face checkpoints, streamed from mergekit-style YAML.
//! - [`checkpoint`] (`kiln-checkpoint`): memory-mapped safetensors directories, dtype conversion,
//!   atomic sharded output.
//! - [`models`] (`kiln-models`): GPT-2 / BioMedLM and BERT / MosaicBERT on burn, loading Hugging
//!   Face checkpoints with logits parity; small image classifiers (MLP, ResNet, ViT).
//! - [`data`] (`kiln-data`): tokenizers (load or train offline), memory-mapped token shards,
//!   packing, deterministic shuffles, domain mixtures, BERT MLM collation, built-in corpora, the
//!   UCI digits.
//! - [`schedules`] (`kiln-schedules`): Composer-style durations (`100ba`, `0.1dur`, `1ep`,
//!   `2e9tok`), LR multipliers, MLM masking-rate and data-mix schedules.
//! - [`train`] (`kiln-train`): the training loop — events and algorithms, AdamW/Lion with
//!   Composer's decoupled weight decay, accumulation, clipping, evaluation, metrics, exact
//!   autoresume from atomic checkpoints; continual learning (SFA, EMA, SWA, L2, EWC, replay,
//!   task sequences).
//! - [`lora`] (`kiln-lora`): PEFT adapter directories read, written and merged into
//!   checkpoints; adapters extracted from fine-tuned checkpoints by SVD; the spectrum of ΔW;
//!   adapters trained on kiln's GPT-2.
//! - [`distill`] (`kiln-distill`): knowledge-distillation losses (KL, JSD, TVD, sparse top-k KL)
//!   and a distillation algorithm with live, checkpoint and ensemble teachers.
//!
//! Example-difficulty scoring and the diffusion models are being built; see the README for what
//! exists today.

pub use kiln_checkpoint as checkpoint;
pub use kiln_data as data;
pub use kiln_distill as distill;
pub use kiln_lora as lora;
pub use kiln_merging as merging;
pub use kiln_models as models;
pub use kiln_scaling_laws as scaling_laws;
pub use kiln_schedules as schedules;
pub use kiln_train as train;

// The README's Rust examples run as doctests, so the front page cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
