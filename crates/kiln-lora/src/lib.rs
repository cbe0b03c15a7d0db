//! PEFT-compatible LoRA for Hugging Face checkpoints, in Rust: read and write PEFT adapter
//! directories, merge adapters into a model shard by shard, extract an adapter from a fully
//! fine-tuned checkpoint by truncated SVD, and measure what fine-tuning changed (rank@τ,
//! effective and stable rank, intruder dimensions) — the analyses of "LoRA Learns Less and
//! Forgets Less" (Biderman et al., TMLR 2024) on your own checkpoints.
//!
//! ```
//! use kiln_checkpoint::{CheckpointWriter, Dtype, ShardPlan, TensorSpec, dtype};
//! use kiln_lora::{ExtractOptions, MergeOptions, extract, merge_into_checkpoint, Adapter};
//!
//! // Two one-layer "models": the fine-tuned one differs by a rank-1 change.
//! fn save(dir: &std::path::Path, w: &[f32]) -> Result<(), Box<dyn std::error::Error>> {
//!     let spec = TensorSpec { name: "layer.0.q.weight".into(), dtype: Dtype::F32, shape: vec![3, 2] };
//!     let mut out = CheckpointWriter::create(dir, ShardPlan::new(vec![spec], u64::MAX)?, Default::default(), false)?;
//!     let mut bytes = vec![0u8; 24];
//!     dtype::encode_f32(w, Dtype::F32, &mut bytes)?;
//!     out.write_tensor("layer.0.q.weight", &bytes)?;
//!     out.finish()?;
//!     Ok(())
//! }
//! let tmp = tempfile::tempdir()?;
//! let (base, ft) = (tmp.path().join("base"), tmp.path().join("ft"));
//! save(&base, &[1.0, 0.0, 0.0, 1.0, 2.0, 3.0])?;
//! save(&ft, &[1.5, 1.0, 0.0, 1.0, 2.5, 4.0])?; // + [0.5, 0, 0.5]ᵀ·[1, 2]
//!
//! // Extract a PEFT adapter: singular values below 1e-4 are dropped, so rank 1 is found.
//! let options = ExtractOptions { sv_epsilon: 1e-4, ..Default::default() };
//! let (dir, _, report) = extract(&base, &ft, &tmp.path().join("adapter"), &options, &mut |_, _, _| {})?;
//! assert_eq!(report.modules[0].rank, 1);
//! let adapter = Adapter::load(&dir)?;
//! let (merged, _) = merge_into_checkpoint(&base, &[(&adapter, 1.0)], &tmp.path().join("merged"), MergeOptions::default(), &mut |_, _, _| {})?;
//! let w = kiln_checkpoint::Checkpoint::open(&merged)?.tensor("layer.0.q.weight")?.to_f32()?;
//! for (x, y) in w.iter().zip([1.5, 1.0, 0.0, 1.0, 2.5, 4.0]) {
//!     assert!((x - y).abs() < 1e-5);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is inside
//! - [`LoraConfig`]: PEFT's `adapter_config.json`, every field kept (unknown and legacy ones
//!   too, with warnings); scaling α/r or α/√r (rsLoRA), `rank_pattern`/`alpha_pattern`.
//! - [`Adapter`]: a PEFT adapter directory — LoRA factors (`lora_A [r, in]`, `lora_B [out, r]`),
//!   DoRA magnitudes, LoRA biases, embedding adapters, trained biases and `modules_to_save` —
//!   read and written with PEFT's key names, atomically.
//! - [`targets`]: PEFT's targeting rules (`target_modules` as a list, a regex or `all-linear`,
//!   `exclude_modules`, `layers_to_transform`) on the modules a checkpoint holds; a rule that
//!   selects nothing is an error listing what exists.
//! - [`merge_into_checkpoint`]: adapters (each with a weight) merged into a Hugging Face
//!   checkpoint tensor by tensor, in f32, GPT-2's `Conv1D` handled, DoRA's normalisation,
//!   `safe_merge`.
//! - [`add_weighted_adapter`]: PEFT's combinations of adapters (`linear`, `cat`, `svd`, `ties`,
//!   `dare_*`, `magnitude_prune`, and the `_svd` variants) on kiln-merging's sparsification and
//!   sign election.
//! - [`init`]: PEFT's initialisations (default Kaiming-uniform, gaussian, PiSSA, OLoRA with the
//!   residual base weight).
//! - [`train`] (feature `models`, on by default): adapters on kiln-models' burn modules with
//!   PEFT's targeting, ranks, scales, inits and trainable biases, loaded from and exported to PEFT
//!   adapters.
//! - [`live`] (feature `models`): several named adapters on one burn model, as PEFT's
//!   `PeftModel` (add, load, set active, weighted sets, disable, delete, merge, unmerge).
//! - [`extract`]: a PEFT adapter from a base and a fine-tuned checkpoint
//!   (mergekit-extract-lora's options: max rank, σ epsilon, scale distribution, include/exclude,
//!   embeddings as `modules_to_save` or LoRA).
//! - [`spectrum()`]: rank@τ, effective rank and stable rank of ΔW beside the base weight and a
//!   Gaussian matrix, ‖ΔW‖/‖W‖, intruder dimensions; [`reduce_intruder_dimension`]: PEFT's
//!   mitigation of an adapter's intruders; [`linalg`] holds the measures.
//!
//! # Errors
//! Every failure is an [`Error`] naming the file and tensor and saying how to fix the input.

mod adapter;
mod combine;
pub mod config;
mod error;
mod extract;
pub mod init;
mod intruders;
pub mod linalg;
#[cfg(feature = "models")]
pub mod live;
mod merge;
mod pairs;
mod spectrum;
pub mod targets;
#[cfg(feature = "models")]
pub mod train;

pub use adapter::{Adapter, LoraModule, PREFIX, merge_module, unmerge_module};
pub use combine::{Combination, CombineOptions, add_weighted_adapter};
pub use config::{Bias, LoraConfig, Modules, OneOrMany};
pub use error::{Error, Result};
pub use extract::{ExtractOptions, ExtractReport, ExtractedModule, SvdMethod, extract};
pub use intruders::{IntruderOptions, find_intruders, reduce_intruder_dimension};
pub use kiln_merging::methods::task_arithmetic::MajoritySign;
pub use merge::{MergeOptions, MergeSummary, Weighted, merge_into_checkpoint};
pub use pairs::{Filter, Pair};
pub use spectrum::{
    MatrixSpectrum, Ranks, SpectrumOptions, gaussian, group, heatmap_svg, intruders, layer_of,
    spectrum,
};

// The README's example is compiled as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
