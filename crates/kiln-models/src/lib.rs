//! Transformer models on [burn](https://burn.dev) that load Hugging Face checkpoints and match
//! transformers' logits: the GPT-2 family (GPT-2, BioMedLM) and BERT / MosaicBERT.
//!
//! ```no_run
//! use kiln_models::gpt2::Gpt2LmHead;
//! use kiln_models::{LoadOptions, device_from_name, generate::{generate, GenerationConfig}};
//!
//! let device = device_from_name("cpu")?;
//! let model = Gpt2LmHead::load("models/gpt2", &device, LoadOptions::default())?;
//! let new_tokens = generate(&model, &[464, 2068, 7586], &GenerationConfig { max_new_tokens: 8, ..Default::default() })?;
//! println!("{new_tokens:?}");
//! # Ok::<(), kiln_models::Error>(())
//! ```
//!
//! # What is inside
//! - [`gpt2`]: [`Gpt2Config`](gpt2::Gpt2Config) (HF `config.json` field names; presets `gpt2`,
//!   `gpt2_medium`, `biomedlm`), the backbone, LM head (tied or untied), BioMedLM's
//!   multiple-choice head and sequence classification; KV-cached decoding; parameter and FLOP
//!   counts.
//! - [`bert`]: HF BERT and MosaicBERT (ALiBi, GeGLU, unpadding, low-precision LayerNorm) in one
//!   implementation; MLM (with the masked-tokens-only shortcut), sequence and token
//!   classification heads.
//! - [`auto`]: [`AutoModel`](auto::AutoModel) loads a directory whatever its family and head
//!   (from `config.json`, read once) and computes its logits with every id checked first.
//! - [`dense`]: the linear layer of GPT-2 and BERT, with room for LoRA/DoRA branches on its
//!   input, and [`DenseLayers`](dense::DenseLayers), which names a model's layers as Hugging Face
//!   does (what kiln-lora attaches adapters to).
//! - [`generate`]: greedy and sampled generation (temperature, top-k, top-p, seeded).
//! - Loading by explicit name from single or sharded safetensors (via `kiln-checkpoint`), with
//!   missing and unexpected weights reported as errors unless allowed ([`LoadOptions`]), and saving
//!   back to the same layout (a round trip is bit-exact).
//!
//! # Feature flags
//! - `cuda`: burn's CUDA backend (`device_from_name("cuda")`). It needs network access at build time;
//!   see the workspace's docs/GPU.md. On Ampere and newer GPUs burn runs f32 matmuls on TF32
//!   tensor cores (10-bit mantissa inputs), with no switch to turn it off.
//! - `cuda-no-fusion`: the same without burn's kernel fusion (`cuda` = this + fusion).
//! - `wgpu`: burn's wgpu backend (`device_from_name("wgpu")`, or `"wgpu:cpu"` for a CPU adapter
//!   such as Mesa's lavapipe); builds offline.

#![warn(missing_docs)]

pub mod auto;
pub mod bert;
mod common;
pub mod cpu;
pub mod dense;
mod device;
pub mod diffusion;
mod error;
pub mod generate;
pub mod gpt2;
pub mod vision;
mod weights;

/// The burn version kiln-models is built on (use it to build inputs and read outputs).
pub use burn;

/// Held by unit tests that seed burn's process-wide flex random generator and then draw from
/// it, so that they do not interleave.
#[cfg(test)]
pub(crate) static TEST_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
pub use common::{Activation, LayerNormPrecision};
pub use device::{device_from_env, device_from_name};
pub use error::{Error, Result};
pub use weights::LoadOptions;

// The README's example is compiled as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
