//! The text-to-image training objective as diffusers' `examples/text_to_image/train_text_to_image.py`
//! computes it: noise the latents at random timesteps (`add_noise`, optionally with offset noise
//! added to the noise first), predict with the UNet, and take the MSE against ε or the velocity,
//! optionally weighted per example by Min-SNR-γ (Hang et al. 2023: `min(SNR, γ)/SNR` for ε,
//! `min(SNR, γ)/(SNR + 1)` for v).
//!
//! ```
//! use kiln_models::diffusion::scheduler::{Scheduler, SchedulerConfig};
//! use kiln_models::diffusion::training::snr;
//!
//! let config: SchedulerConfig = serde_json::from_str(r#"{"_class_name": "DDPMScheduler"}"#)?;
//! let s = Scheduler::from_config(&config)?;
//! let v = snr(&s, &[0, 999])?;
//! assert!(v[0] > 1e3 && v[1] < 1e-3); // almost clean at t = 0, almost pure noise at t = 999
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use burn::prelude::*;

use super::scheduler::{Prediction, Scheduler};
use super::unet::UNet2DConditionModel;
use crate::error::{Error, Result};

/// The signal-to-noise ratio `ᾱ_t / (1 − ᾱ_t)` of each timestep, computed as diffusers'
/// `compute_snr` does (`(√ᾱ / √(1 − ᾱ))²` in f32).
///
/// # Errors
/// [`Error::Config`] for a timestep past the schedule.
pub fn snr(scheduler: &Scheduler, timesteps: &[usize]) -> Result<Vec<f32>> {
    let ac = &scheduler.schedule().alphas_cumprod;
    timesteps
        .iter()
        .map(|&t| {
            let a = *ac.get(t).ok_or_else(|| Error::Config {
                message: format!(
                    "timestep {t} is outside the {} training timesteps",
                    ac.len()
                ),
            })?;
            let r = a.sqrt() / (1.0 - a).sqrt();
            Ok(r * r)
        })
        .collect()
}

/// Per-example weights of the Min-SNR-γ loss for `prediction`.
///
/// # Errors
/// As [`snr`].
pub fn min_snr_weights(
    scheduler: &Scheduler,
    timesteps: &[usize],
    gamma: f64,
    prediction: Prediction,
) -> Result<Vec<f32>> {
    Ok(snr(scheduler, timesteps)?
        .into_iter()
        .map(|s| {
            let m = s.min(gamma as f32);
            match prediction {
                Prediction::Epsilon => m / s,
                Prediction::Velocity => m / (s + 1.0),
                Prediction::Sample => m,
            }
        })
        .collect())
}

/// Settings of [`diffusion_loss`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossOptions {
    /// Min-SNR-γ weighting (diffusers' `--snr_gamma`; 5 is the paper's); `None`: plain MSE.
    pub snr_gamma: Option<f64>,
}

/// The training loss on one batch: `latents` `[B, C, h, w]` (already scaled by the VAE's
/// `scaling_factor`), `noise` of the same shape (with any offset noise already added),
/// `timesteps` (one per example), and the text states `[B, L, D]` (zeroed rows for dropped
/// captions). The target is ε or, for a v-prediction schedule, the velocity.
///
/// # Errors
/// [`Error::Input`] for shapes that do not fit; [`Error::Config`] for a sample-predicting
/// schedule (not a training target diffusers' script supports) or a timestep past the schedule.
pub fn diffusion_loss(
    unet: &UNet2DConditionModel,
    scheduler: &Scheduler,
    latents: Tensor<4>,
    noise: Tensor<4>,
    timesteps: &[usize],
    encoder_hidden_states: Tensor<3>,
    options: LossOptions,
) -> Result<Tensor<1>> {
    let b = latents.dims()[0];
    if noise.dims() != latents.dims() {
        return Err(Error::Input {
            message: format!(
                "noise {:?} and latents {:?} differ in shape",
                noise.dims(),
                latents.dims()
            ),
        });
    }
    let noisy = scheduler.add_noise(latents.clone(), noise.clone(), timesteps)?;
    let target = match scheduler.prediction() {
        Prediction::Epsilon => noise,
        Prediction::Velocity => scheduler.get_velocity(latents, noise, timesteps)?,
        Prediction::Sample => {
            return Err(Error::Config {
                message: "scheduler_config.json: `prediction_type` \"sample\" is not a training target here; use epsilon or v_prediction".into(),
            });
        }
    };
    let device = noisy.device();
    let t = Tensor::<1>::from_data(
        TensorData::new(timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(), [b]),
        &device,
    );
    let pred = unet.forward(noisy, t, encoder_hidden_states)?;
    let per_example = (pred - target)
        .powi_scalar(2)
        .reshape([b as i32, -1])
        .mean_dim(1)
        .reshape([b]);
    Ok(match options.snr_gamma {
        None => per_example.mean(),
        Some(gamma) => {
            let w = min_snr_weights(scheduler, timesteps, gamma, scheduler.prediction())?;
            let w = Tensor::<1>::from_data(TensorData::new(w, [b]), &device);
            (per_example * w).mean()
        }
    })
}
