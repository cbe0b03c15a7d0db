//! Model merging for Hugging Face checkpoints, streamed tensor by tensor.
//!
//! kiln-merging reads a [mergekit](https://github.com/arcee-ai/mergekit)-style YAML
//! configuration, opens the input checkpoints as memory maps, and writes the merged model shard by
//! shard into a directory that appears only when complete. Memory stays within a small multiple
//! of the largest tensor, whatever the size of the models.
//!
//! ```
//! use kiln_merging::{MergeConfig, MergeOptions, MergePlan, Silent, run};
//! # use kiln_checkpoint::{CheckpointWriter, Dtype, ShardPlan, TensorSpec, dtype};
//! # let dir = tempfile::tempdir()?;
//! # for (name, v) in [("base", 0.0f32), ("math", 1.0), ("code", -1.0)] {
//! #     let plan = ShardPlan::new(vec![TensorSpec { name: "w".into(), dtype: Dtype::F32, shape: vec![4] }], u64::MAX)?;
//! #     let mut w = CheckpointWriter::create(dir.path().join(name), plan, Default::default(), false)?;
//! #     let mut b = vec![0u8; 16];
//! #     dtype::encode_f32(&[v, 2.0 * v, 0.5, v], Dtype::F32, &mut b)?;
//! #     w.write_tensor("w", &b)?;
//! #     w.finish()?;
//! # }
//! let yaml = "
//! merge_method: ties
//! base_model: base
//! models:
//!   - model: math
//!     parameters: { weight: 1.0, density: 0.5 }
//!   - model: code
//!     parameters: { weight: 0.5, density: 0.5 }
//! ";
//! let config = MergeConfig::parse(yaml, "example.yml", dir.path())?;
//! let plan = MergePlan::new(config, MergeOptions::new(dir.path().join("merged")))?;
//! print!("{}", plan.describe()); // what `kiln merge --dry-run` prints
//! let report = run(&plan, &mut Silent)?;
//! assert_eq!(report.tensors, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Methods
//! | `merge_method` | what | reference |
//! |---|---|---|
//! | `linear` | weighted average (model soups), `normalize` | arXiv 2203.05482 |
//! | `wise_ft` | `(1 − α)·base + α·fine-tuned` | arXiv 2109.01903 |
//! | `task_arithmetic` | `base + λ·Σ wᵢ·δᵢ` | arXiv 2212.04089 |
//! | `ties` | trim to `density` by magnitude (per tensor, or the whole model with `trim_scope: model`), elect signs, disjoint mean | arXiv 2306.01708 |
//! | `dare_linear`, `dare_ties` | random drop with rescale by 1/density (seeded), then sum or TIES | arXiv 2311.03099 |
//! | `slerp` | spherical interpolation with the near-colinear fallback | Shoemake 1985 |
//!
//! The same maths is available over plain slices in [`methods`] (for merging during
//! training) and the registry ([`Method::info`]) lists each method's parameters and paper.
//!
//! # Precision
//! Arithmetic runs in f32 (or f64 with `dtype: float64`); `out_dtype` sets the stored dtype
//! (bf16, f16, f32, f64), rounding to nearest even. Integer and 8-bit float tensors are copied
//! from the base unchanged.

#![warn(missing_docs)]

mod card;
pub mod config;
mod error;
pub mod executor;
pub mod methods;
pub mod plan;
pub mod real;
pub mod sparsify;

pub use config::MergeConfig;
pub use error::{Error, Result};
pub use executor::{MergeReport, Observer, Silent, TensorDone, run};
pub use methods::Method;
pub use plan::{MergeOptions, MergePlan};

// The README's example is compiled as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
