//! Chinchilla scaling laws that account for inference.
//!
//! Chinchilla (Hoffmann et al. 2022) tells you the model size and training-set size that reach a
//! loss with the fewest *training* FLOPs. A model that will serve many requests should be smaller
//! and trained longer: Sardana, Portes, Doubov and Frankle, "Beyond Chinchilla-Optimal: Accounting
//! for Inference in Language Model Scaling Laws" (ICML 2024, <https://arxiv.org/abs/2401.00448>)
//! minimise training **plus inference** FLOPs, or dollars. This crate implements their method,
//! checked against the numbers of the paper's code, and lets you fit a law to your own runs.
//!
//! ```
//! use kiln_scaling_laws::{ChinchillaLaw, inference};
//!
//! let law = ChinchillaLaw::sardana();
//! // The quality of a 70B model trained on 1T tokens ...
//! let loss = law.loss(70e9, 1e12)?;
//! // ... reached with the fewest lifetime FLOPs when it will then serve 2T tokens:
//! let opt = inference::optimal_allocation(&law, loss, 2e12)?;
//! println!(
//!     "{:.3e} parameters on {:.3e} tokens: {:.1}% of the Chinchilla-style model's FLOPs",
//!     opt.optimal.n_params,
//!     opt.optimal.train_tokens,
//!     100.0 * opt.flops_ratio(),
//! );
//! assert!(opt.optimal.n_params < opt.chinchilla.n_params);
//! # Ok::<(), kiln_scaling_laws::Error>(())
//! ```
//!
//! # What is inside
//! - [`ChinchillaLaw`] — `L(N, D) = E + A/N^alpha + B/D^beta` with the presets of Hoffmann
//!   (as printed and unrounded), Sardana (the default) and Besiroglu ([`LawPreset`]).
//! - [`chinchilla`] — training-compute-optimal allocation in closed form: for a FLOP budget, for
//!   a target loss, tokens for a given model size.
//! - [`inference`] — the inference-aware FLOP optimum (Brent's method on a bracketed
//!   stationarity condition, with the paper's Newton form as a cross-check) and sweeps over
//!   inference demand.
//! - [`cost`] — the dollar version: GPU presets, MFU per phase (training, prefill, decode),
//!   requests × (prompt, generated) tokens, per-phase costs and the cost optimum.
//! - [`fit`] — fit a law to your runs (Huber on log-loss, L-BFGS from 4,500 starts, rayon);
//!   [`runs`] reads them from CSV.
//! - `plot` (feature `plot`) — SVG plots of a sweep.
//!
//! Units: parameters and tokens are plain counts (`f64`, so `70e9` and `2e12` are fine), FLOPs
//! are floating-point operations, losses are nats per token, prices are dollars per GPU-hour.
//!
//! # Feature flags
//! - `plot`: [`plot::sweep_svg`](crate::plot) renders sweeps with `plotters` (SVG only).
//!
//! # Errors
//! Every invalid input is an [`Error`] naming the value and what would be valid; nothing in this
//! crate panics on user input.

#![warn(missing_docs)]

pub mod chinchilla;
pub mod cost;
mod error;
pub mod fit;
pub mod inference;
mod law;
#[cfg(feature = "plot")]
pub mod plot;
pub mod runs;

pub use error::{Error, Result};
pub use law::{ChinchillaLaw, LawPreset};

// The README's example runs as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
