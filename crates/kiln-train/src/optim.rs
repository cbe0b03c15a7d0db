//! Optimisers (AdamW and Lion, each with PyTorch's or Composer's decoupled weight decay) and
//! gradient clipping by the global norm.
//!
//! Weight decay, per step, multiplies every parameter by:
//! - `1 − lr · weight_decay` with `decoupled: false` (PyTorch's `AdamW`, lucidrains' `Lion`);
//! - `1 − (lr / peak_lr) · weight_decay` with `decoupled: true` (Composer's `DecoupledAdamW` and
//!   llm-foundry's `DecoupledLionW`): the decay follows the LR schedule but not the LR's size, so
//!   `weight_decay: 1e-5` means the same thing at any learning rate.
//!
//! Both are burn's `AdamW`/`Lion` (whose decay is `lr · wd`) with `wd` divided by the peak LR for
//! the decoupled form; `tests/optimizer_parity.rs` checks trajectories against those optimisers
//! and PyTorch's `AdamW`.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, LionConfig, ModuleOptimizer};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn betas_adam() -> [f64; 2] {
    [0.9, 0.999]
}
fn betas_lion() -> [f64; 2] {
    [0.9, 0.99]
}
fn eps() -> f64 {
    1e-8
}
fn yes() -> bool {
    true
}

/// An optimiser, tagged by name (`name: adamw`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum OptimizerConfig {
    /// Adam with decoupled weight decay.
    Adamw {
        /// Peak learning rate (the schedule multiplies it).
        lr: f64,
        /// (β₁, β₂) ([0.9, 0.999]).
        #[serde(default = "betas_adam")]
        betas: [f64; 2],
        /// ε added to √v̂ (1e-8).
        #[serde(default = "eps")]
        eps: f64,
        /// Weight decay (0).
        #[serde(default)]
        weight_decay: f64,
        /// Composer's decoupled form (true): the decay is scaled by lr / peak lr.
        #[serde(default = "yes")]
        decoupled: bool,
    },
    /// Lion (Chen et al. 2023): the sign of an interpolated momentum.
    Lion {
        /// Peak learning rate.
        lr: f64,
        /// (β₁, β₂) ([0.9, 0.99]).
        #[serde(default = "betas_lion")]
        betas: [f64; 2],
        /// Weight decay (0).
        #[serde(default)]
        weight_decay: f64,
        /// Composer's decoupled form (true).
        #[serde(default = "yes")]
        decoupled: bool,
    },
}

impl OptimizerConfig {
    /// AdamW with Composer's defaults for BERT pretraining aside (betas 0.9/0.999, ε 1e-8),
    /// decoupled weight decay.
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        Self::Adamw {
            lr,
            betas: betas_adam(),
            eps: eps(),
            weight_decay,
            decoupled: true,
        }
    }

    /// The peak learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Self::Adamw { lr, .. } | Self::Lion { lr, .. } => *lr,
        }
    }

    /// Builds the burn optimiser.
    ///
    /// # Errors
    /// [`Error::Config`] for a non-positive LR, betas outside [0, 1), negative ε or decay.
    pub fn build(&self) -> Result<ModuleOptimizer> {
        let bad = |m: String| {
            Err(Error::Config {
                message: format!("optimizer: {m}"),
            })
        };
        let (lr, betas, wd, decoupled) = match self {
            Self::Adamw {
                lr,
                betas,
                weight_decay,
                decoupled,
                ..
            }
            | Self::Lion {
                lr,
                betas,
                weight_decay,
                decoupled,
            } => (*lr, *betas, *weight_decay, *decoupled),
        };
        if !(lr.is_finite() && lr > 0.0) {
            return bad(format!("lr must be positive, got {lr}"));
        }
        if betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return bad(format!("betas must be in [0, 1), got {betas:?}"));
        }
        if !(wd.is_finite() && wd >= 0.0) {
            return bad(format!("weight_decay must be ≥ 0, got {wd}"));
        }
        let wd = if decoupled { wd / lr } else { wd };
        Ok(match self {
            Self::Adamw { eps, .. } => {
                if !(eps.is_finite() && *eps > 0.0) {
                    return bad(format!("eps must be positive, got {eps}"));
                }
                AdamWConfig::new()
                    .with_beta_1(betas[0] as f32)
                    .with_beta_2(betas[1] as f32)
                    .with_epsilon(*eps as f32)
                    .with_weight_decay(wd as f32)
                    .init()
            }
            Self::Lion { .. } => LionConfig::new()
                .with_beta_1(betas[0] as f32)
                .with_beta_2(betas[1] as f32)
                .with_weight_decay(wd as f32)
                .init(),
        })
    }
}

/// Every parameter's id and rank.
#[derive(Default)]
struct Params(Vec<(ParamId, usize)>);

impl ModuleVisitor for Params {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((param.id, D));
    }
}

fn sum_squares<const D: usize>(grads: &GradientsParams, id: ParamId) -> Option<Tensor<1>> {
    grads.get::<D>(id).map(|g| g.powi_scalar(2).sum())
}

fn scale<const D: usize>(grads: &mut GradientsParams, id: ParamId, factor: f64) {
    if let Some(g) = grads.remove::<D>(id) {
        grads.register(id, g.mul_scalar(factor));
    }
}

macro_rules! by_rank {
    ($rank:expr, $f:ident ( $($arg:expr),* )) => {
        match $rank {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            _ => $f::<6>($($arg),*),
        }
    };
}

/// The global L2 norm of `grads` over `model`'s parameters.
pub fn grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
    let mut params = Params::default();
    model.visit(&mut params);
    let total = params
        .0
        .iter()
        .filter_map(|&(id, rank)| by_rank!(rank, sum_squares(grads, id)))
        .reduce(|a, b| a + b);
    total.map_or(0.0, |t| {
        t.into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .map_or(f64::NAN, |v| v[0])
            .sqrt()
    })
}

/// Scales `grads` so their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` (Composer's `gradient_clipping` with `clipping_type: norm`):
/// the factor is `max_norm / (norm + 1e-6)` when below 1. Returns the norm before clipping.
pub fn clip_grad_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = grad_norm(model, grads);
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        let mut params = Params::default();
        model.visit(&mut params);
        for &(id, rank) in &params.0 {
            by_rank!(rank, scale(grads, id, factor));
        }
    }
    norm
}
