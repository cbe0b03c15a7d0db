//! Hugging Face checkpoints for Rust, without Python: read memory-mapped safetensors (single
//! files or shards with `model.safetensors.index.json`), convert between f32, f16 and bf16, and
//! write sharded checkpoints atomically.
//!
//! ```
//! use kiln_checkpoint::{Checkpoint, CheckpointWriter, Dtype, ShardPlan, TensorSpec, dtype};
//!
//! # let dir = tempfile::tempdir()?;
//! # let model = dir.path().join("model");
//! // Write a two-tensor checkpoint in bf16 ...
//! let plan = ShardPlan::new(
//!     vec![
//!         TensorSpec { name: "wte".into(), dtype: Dtype::BF16, shape: vec![4, 2] },
//!         TensorSpec { name: "ln.bias".into(), dtype: Dtype::BF16, shape: vec![2] },
//!     ],
//!     kiln_checkpoint::DEFAULT_MAX_SHARD_BYTES,
//! )?;
//! let mut writer = CheckpointWriter::create(&model, plan, Default::default(), false)?;
//! let mut bytes = vec![0u8; 8 * 2];
//! dtype::encode_f32(&[0.5, -1.0, 2.0, 0.25, 1.0, 1.0, 3.0, -0.5], Dtype::BF16, &mut bytes)?;
//! writer.write_tensor("wte", &bytes)?;
//! writer.write_tensor("ln.bias", &[0u8; 4])?;
//! writer.finish()?;
//!
//! // ... and read it back lazily.
//! let ckpt = Checkpoint::open(&model)?;
//! let wte = ckpt.tensor("wte")?;
//! assert_eq!(wte.shape(), &[4, 2]);
//! assert_eq!(wte.to_f32()?[1], -1.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is inside
//! - [`Checkpoint`]: a model directory or file, every shard memory-mapped and validated on
//!   open, tensors read by name ([`TensorView`]), `config.json` as [`HfConfig`].
//! - [`Header`]: the strict safetensors header parser (length prefix, JSON, dtypes, offsets,
//!   overlaps, duplicates) — it reads untrusted bytes, so it is fuzzed by property tests.
//! - [`dtype`]: [`Dtype`] and conversions between f32, f16, bf16 and f64 (round to nearest
//!   even, NaN and infinities preserved), checked bit for bit against ml_dtypes.
//! - [`ShardPlan`], [`CheckpointWriter`], [`AtomicDir`]: sharded output with a byte limit,
//!   `model-0000i-of-0000N.safetensors` names and `index.json`, written to a temporary sibling,
//!   fsynced and renamed into place only when complete; an interrupted replacement is repaired
//!   by the next run ([`recover`]), and [`interrupt_cleanup`] undoes unfinished outputs from a
//!   signal handler.
//! - [`paths`]: outputs are checked against inputs after resolving symlinks, so nothing kiln
//!   writes can replace, or be written into, something it reads.
//!
//! # Errors
//! Every failure is an [`Error`] that names the file (and tensor) and what is wrong.

#![warn(missing_docs)]

mod atomic;
mod checkpoint;
mod config;
pub mod dtype;
mod error;
mod file;
mod header;
pub mod paths;
pub mod size;
mod writer;

pub use atomic::{
    AtomicDir, Recovered, STALE_AFTER, ScratchGuard, TEST_PAUSE_VAR, interrupt_cleanup, recover,
    register_scratch, write_atomic,
};
pub use checkpoint::{
    CONFIG_FILE, Checkpoint, DIFFUSERS_INDEX_FILE, DIFFUSERS_SINGLE_FILE, INDEX_FILE, SINGLE_FILE,
};
pub use config::HfConfig;
pub use dtype::Dtype;
pub use error::{Error, Result};
pub use file::{SafetensorsFile, TensorView};
pub use header::{Header, MAX_HEADER_BYTES, METADATA_KEY, TensorInfo};
pub use writer::{CheckpointWriter, DEFAULT_MAX_SHARD_BYTES, ShardPlan, TensorSpec, write_file};

// The README's example runs as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
