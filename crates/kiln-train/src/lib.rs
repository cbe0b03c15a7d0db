//! A training loop for burn modules, in the spirit of MosaicML Composer: named events that
//! algorithms hook into, Composer-style durations and LR schedules, AdamW and Lion with
//! Composer's decoupled weight decay, gradient accumulation and global-norm clipping, evaluation
//! at intervals, JSON-lines metrics, a progress bar, and checkpoints that make a restarted run
//! continue exactly where the interrupted one stopped.
//!
//! A run is a [`Trainer`] (its [`TrainerConfig`] and a run directory), a [`TrainTask`] (batches,
//! loss, evaluation, data position) and any number of [`Algorithm`]s:
//!
//! ```
//! use std::collections::BTreeMap;
//! use kiln_train::burn::{nn::{Linear, LinearConfig}, prelude::*, tensor::Device};
//! use kiln_train::{BatchSize, OptimizerConfig, StepOutput, TrainState, TrainTask, Trainer, TrainerConfig};
//!
//! // Fit y = 3x − 1 with one Linear layer.
//! struct Line;
//! impl TrainTask<Linear> for Line {
//!     type Batch = (Tensor<2>, Tensor<2>);
//!     fn next_batch(&mut self, s: &TrainState, _: usize, _: usize) -> kiln_train::Result<(Self::Batch, BatchSize)> {
//!         let d = Device::flex().autodiff();
//!         let x = Tensor::<1>::from_floats([0.0, 0.5, 1.0, 1.5], &d).reshape([4, 1]).add_scalar((s.step % 3) as f64);
//!         let y = x.clone().mul_scalar(3.0).sub_scalar(1.0);
//!         Ok(((x, y), BatchSize { samples: 4, tokens: 4 }))
//!     }
//!     fn forward(&mut self, m: &Linear, (x, y): Self::Batch) -> kiln_train::Result<StepOutput> {
//!         Ok((m.forward(x) - y).powi_scalar(2).mean().into())
//!     }
//!     fn evaluate(&mut self, m: &Linear, _: &TrainState) -> kiln_train::Result<BTreeMap<String, f64>> {
//!         let w = m.valid().weight.val().into_data().try_to_vec::<f32>().unwrap()[0];
//!         Ok(BTreeMap::from([("slope".to_string(), w as f64)]))
//!     }
//!     fn data_state(&self) -> serde_json::Value { serde_json::Value::Null }
//!     fn restore_data_state(&mut self, _: &serde_json::Value) -> kiln_train::Result<()> { Ok(()) }
//! }
//!
//! let device = Device::flex().autodiff();
//! let model = LinearConfig::new(1, 1).init(&device);
//! let config = TrainerConfig::new("400ba".parse()?, OptimizerConfig::adamw(0.1, 0.0));
//! let dir = tempfile::tempdir()?;
//! let out = Trainer::new(config, dir.path()).fit(model, &mut Line, &mut [], &device)?;
//! assert!((out.eval["slope"] - 3.0).abs() < 0.1, "{:?}", out.eval);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What a run writes
//! - `metrics.jsonl`: one line per step (`split: "train"`: loss, lr, grad_norm, samples, tokens,
//!   throughput, the task's own metrics such as `masking_rate` and `tokens/<domain>`, and
//!   whatever algorithms add) and per evaluation (`split: "eval"`).
//! - `checkpoints/step-<N>/` every `save_interval` and at the end: `model.bpk`, `optimizer.bpk`
//!   (burnpack), `state.json` (trainer state, data position, algorithm states),
//!   `algorithms.safetensors` (algorithms' tensors, when they have some) and a manifest of sizes
//!   and hashes. Directories are committed atomically; the newest `keep_last_n` are kept.
//!
//! # The contract with tasks and algorithms
//! - The run's length is resolved once, by the trainer ([`RunPlan`]), and handed to the task
//!   ([`TrainTask::prepare`]) and to every algorithm ([`Context::run`]): the masking-rate and
//!   data-mix schedules of a task count the same steps as the LR schedule.
//! - A task's forward pass returns a [`StepOutput`]: the loss, and optionally per-example
//!   losses, logits with targets ([`Predictions`]), the model inputs and dataset example ids.
//!   Algorithms see it at [`Event::AfterForward`] and may change the loss at
//!   [`Event::AfterLoss`] (distillation, penalties, difficulty scores plug in here).
//! - Algorithms checkpoint JSON ([`Algorithm::state`]) and tensors
//!   ([`Algorithm::tensor_state`], a [`TensorState`]) inside the atomic training checkpoint.
//!
//! # Resuming
//! With `autoresume` (the default), `fit` loads the newest checkpoint that verifies against its
//! manifest (damaged or partial ones are skipped with a warning) and continues: the optimiser
//! state, the schedule position (a function of the step), the data position, and the dropout
//! RNG (reseeded from `(seed, step)` each step) are all restored, so the losses after a crash and
//! restart are the ones an uninterrupted run would have logged (`tests/autoresume.rs` kills a
//! run mid-way and checks this bit for bit).
//!
//! # Feature flags
//! - `tasks` (default): [`tasks`] (MLM pretraining and classification for kiln-models) and the
//!   device helpers `device_from_name` / `device_from_env` (`--device cpu|cuda[:N]|wgpu` or
//!   `KILN_DEVICE`). Turn default features off to plug an algorithm into the trainer without
//!   compiling GPT-2, BERT and tokenizers.
//! - `cuda`, `wgpu`: burn's CUDA and wgpu backends.

#![warn(missing_docs)]

pub mod algorithms;
pub mod checkpoint;
pub mod continual;
mod error;
pub mod optim;
pub mod params;
mod step;
#[cfg(feature = "tasks")]
pub mod tasks;
pub mod timing;
mod trainer;

pub use burn;
pub use error::{Error, Result};
#[cfg(feature = "tasks")]
pub use kiln_models::{device_from_env, device_from_name};
pub use optim::OptimizerConfig;
pub use step::{IGNORE_INDEX, ModelInputs, Predictions, RunPlan, StepOutput, TensorState};
pub use trainer::{
    Algorithm, BatchSize, Context, DataSize, Event, FitOutcome, TrainState, TrainTask, Trainer,
    TrainerConfig, scalar,
};

// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
