//! Noise schedulers as diffusers defines them: [`Ddpm`], [`Ddim`] and [`EulerDiscrete`], built
//! from a pipeline's `scheduler/scheduler_config.json` ([`SchedulerConfig`]).
//!
//! The training schedule (`betas`, `alphas_cumprod`) is computed the way diffusers computes it
//! in PyTorch — f32 `linspace`, f32 arithmetic, a cumulative product accumulated in f64 and
//! stored in f32 — so it equals diffusers' to the last bit or so, not just to a tolerance. A
//! sampling step is a few element-wise burn ops with f32 coefficients, in diffusers' order.
//!
//! Steps are addressed by their **index** in [`timesteps`](Scheduler::timesteps) (the step
//! about to be taken), and the previous timestep is the next entry of that list. For DDPM and
//! for DDIM with `leading` or `trailing` spacing this is what diffusers does; diffusers' DDIM
//! computes the previous timestep as `t − T / n` instead, which is wrong for `linspace` spacing
//! (huggingface/diffusers#12633, #11347, #9261): kiln deliberately follows the list there.
//!
//! ```
//! use kiln_models::diffusion::scheduler::{Scheduler, SchedulerConfig};
//!
//! // Stable Diffusion 2 base's scheduler_config.json (the fields that matter)
//! let config: SchedulerConfig = serde_json::from_str(r#"{
//!     "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
//!     "beta_schedule": "scaled_linear", "clip_sample": false, "set_alpha_to_one": false,
//!     "steps_offset": 1, "prediction_type": "epsilon", "num_train_timesteps": 1000
//! }"#)?;
//! let mut scheduler = Scheduler::from_config(&config)?;
//! scheduler.set_timesteps(50)?;
//! assert_eq!(&scheduler.timesteps()[..3], &[981.0, 961.0, 941.0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn d_train_timesteps() -> usize {
    1000
}
fn d_beta_start() -> f64 {
    0.0001
}
fn d_beta_end() -> f64 {
    0.02
}
fn d_schedule() -> String {
    "linear".into()
}
fn d_prediction() -> String {
    "epsilon".into()
}
fn d_true() -> bool {
    true
}
fn d_one() -> f64 {
    1.0
}
fn d_spacing() -> String {
    "leading".into()
}
fn d_variance() -> String {
    "fixed_small".into()
}
fn d_interpolation() -> String {
    "linear".into()
}
fn d_final_sigmas() -> String {
    "zero".into()
}
fn d_timestep_type() -> String {
    "discrete".into()
}

/// A diffusers `scheduler_config.json` (DDPMScheduler, DDIMScheduler, PNDMScheduler — read as
/// DDIM's schedule —, EulerDiscreteScheduler). Fields kiln does not use are ignored; fields set
/// to something kiln does not implement are refused by [`Scheduler::from_config`], naming the
/// field. Defaults are diffusers'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// The diffusers class the pipeline was saved with (`DDIMScheduler`, …).
    #[serde(rename = "_class_name", default)]
    pub class_name: String,
    /// Training timesteps `T`.
    #[serde(default = "d_train_timesteps")]
    pub num_train_timesteps: usize,
    /// First β.
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    /// Last β.
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    /// `linear`, `scaled_linear` (Stable Diffusion) or `squaredcos_cap_v2` (the cosine schedule).
    #[serde(default = "d_schedule")]
    pub beta_schedule: String,
    /// Explicit βs (override `beta_schedule`).
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// What the model predicts: `epsilon`, `v_prediction` or `sample`.
    #[serde(default = "d_prediction")]
    pub prediction_type: String,
    /// Clamp the predicted clean sample to ±`clip_sample_range` (DDPM, DDIM).
    #[serde(default = "d_true")]
    pub clip_sample: bool,
    /// The clamp's range.
    #[serde(default = "d_one")]
    pub clip_sample_range: f64,
    /// DDIM: the ᾱ after the last step is 1 (`true`) or ᾱ₀ (`false`, Stable Diffusion).
    #[serde(default = "d_true")]
    pub set_alpha_to_one: bool,
    /// Added to every `leading` timestep (Stable Diffusion: 1).
    #[serde(default)]
    pub steps_offset: usize,
    /// `leading`, `trailing` or `linspace`.
    #[serde(default = "d_spacing")]
    pub timestep_spacing: String,
    /// Rescale βs to zero terminal SNR (Lin et al. 2023).
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// DDPM: `fixed_small` (the posterior variance) or `fixed_large` (β).
    #[serde(default = "d_variance")]
    pub variance_type: String,
    /// Dynamic thresholding (Imagen) — not implemented; must be `false`.
    #[serde(default)]
    pub thresholding: bool,
    /// Euler: `linear` interpolation of σ between training timesteps.
    #[serde(default = "d_interpolation")]
    pub interpolation_type: String,
    /// Euler: Karras σs — not implemented; must be `false`.
    #[serde(default)]
    pub use_karras_sigmas: Option<bool>,
    /// Euler: exponential σs — not implemented; must be `false`.
    #[serde(default)]
    pub use_exponential_sigmas: Option<bool>,
    /// Euler: beta-distributed σs — not implemented; must be `false`.
    #[serde(default)]
    pub use_beta_sigmas: Option<bool>,
    /// Euler: `zero` (the last σ is 0) or `sigma_min`.
    #[serde(default = "d_final_sigmas")]
    pub final_sigmas_type: String,
    /// Euler: `discrete` timesteps.
    #[serde(default = "d_timestep_type")]
    pub timestep_type: String,
}

impl SchedulerConfig {
    /// Reads `scheduler_config.json`.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read, [`Error::Config`] naming the file when it is
    /// not a scheduler config.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        crate::common::read_json(path.as_ref(), "a scheduler config")
    }
}

/// What a model's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise ε.
    Epsilon,
    /// The velocity `v = √ᾱ·ε − √(1−ᾱ)·x₀` (Salimans & Ho).
    Velocity,
    /// The clean sample x₀.
    Sample,
}

/// How inference timesteps are spread over the training ones (Lin et al. 2023, table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// `0, T/n, 2T/n, …` (+ `steps_offset`), reversed — Stable Diffusion's.
    Leading,
    /// `T − T/n, …, 0` shifted to end at `T − 1`.
    Trailing,
    /// `n` points of `linspace(0, T − 1)`, rounded.
    Linspace,
}

fn bad(field: &str, value: impl std::fmt::Display, allowed: &str) -> Error {
    Error::Config {
        message: format!(
            "scheduler_config.json: `{field}` = {value} is not supported; kiln implements {allowed}"
        ),
    }
}

/// The training noise schedule: `betas` and `alphas_cumprod` (ᾱ), f32 as diffusers holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// β per training timestep.
    pub betas: Vec<f32>,
    /// ᾱ_t = Π_{s ≤ t} (1 − β_s).
    pub alphas_cumprod: Vec<f32>,
}

/// PyTorch's f32 `linspace`: the first half counted up from `start`, the second down from `end`.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// PyTorch's CPU `cumprod` of f32: accumulated in f64, each output rounded to f32.
fn cumprod_f32(x: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    x.iter()
        .map(|&v| {
            acc *= f64::from(v);
            acc as f32
        })
        .collect()
}

impl NoiseSchedule {
    /// The schedule of `config` (`trained_betas`, or `beta_schedule` from `beta_start` to
    /// `beta_end` over `num_train_timesteps`; then `rescale_betas_zero_snr`).
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown schedule or no timesteps.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let n = config.num_train_timesteps;
        if n == 0 {
            return Err(bad("num_train_timesteps", 0, "at least 1 timestep"));
        }
        let mut betas: Vec<f32> = if let Some(b) = &config.trained_betas {
            b.iter().map(|&v| v as f32).collect()
        } else {
            match config.beta_schedule.as_str() {
                "linear" => linspace_f32(config.beta_start as f32, config.beta_end as f32, n),
                "scaled_linear" => linspace_f32(
                    config.beta_start.sqrt() as f32,
                    config.beta_end.sqrt() as f32,
                    n,
                )
                .into_iter()
                .map(|v| v * v)
                .collect(),
                "squaredcos_cap_v2" => {
                    let alpha_bar = |t: f64| {
                        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                            .cos()
                            .powi(2)
                    };
                    (0..n)
                        .map(|i| {
                            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                        })
                        .collect()
                }
                other => {
                    return Err(bad(
                        "beta_schedule",
                        format!("\"{other}\""),
                        "linear, scaled_linear and squaredcos_cap_v2",
                    ));
                }
            }
        };
        if betas.len() != n {
            return Err(Error::Config {
                message: format!(
                    "scheduler_config.json: `trained_betas` has {} values for {n} `num_train_timesteps`",
                    betas.len()
                ),
            });
        }
        if config.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        Ok(Self {
            alphas_cumprod: cumprod_f32(&alphas),
            betas,
        })
    }
}

/// Lin et al. 2023, algorithm 1, in f32 as diffusers: shift √ᾱ so the last is 0, rescale so the
/// first is unchanged, and turn it back into βs.
pub fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut s: Vec<f32> = cumprod_f32(&alphas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (s[0], s[s.len() - 1]);
    let scale = first / (first - last);
    for v in &mut s {
        *v -= last;
        *v *= scale;
    }
    let bar: Vec<f32> = s.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// Settings shared by the three samplers.
#[derive(Debug, Clone, PartialEq)]
struct Common {
    schedule: NoiseSchedule,
    prediction: Prediction,
    spacing: Spacing,
    steps_offset: usize,
    clip: Option<f32>,
    train_timesteps: usize,
}

impl Common {
    fn new(config: &SchedulerConfig) -> Result<Self> {
        if config.thresholding {
            return Err(bad("thresholding", true, "only `false`"));
        }
        let prediction = match config.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::Velocity,
            "sample" => Prediction::Sample,
            other => {
                return Err(bad(
                    "prediction_type",
                    format!("\"{other}\""),
                    "epsilon, v_prediction and sample",
                ));
            }
        };
        let spacing = match config.timestep_spacing.as_str() {
            "leading" => Spacing::Leading,
            "trailing" => Spacing::Trailing,
            "linspace" => Spacing::Linspace,
            other => {
                return Err(bad(
                    "timestep_spacing",
                    format!("\"{other}\""),
                    "leading, trailing and linspace",
                ));
            }
        };
        Ok(Self {
            schedule: NoiseSchedule::new(config)?,
            prediction,
            spacing,
            steps_offset: config.steps_offset,
            clip: config
                .clip_sample
                .then_some(config.clip_sample_range as f32),
            train_timesteps: config.num_train_timesteps,
        })
    }

    /// Integer inference timesteps, first (noisiest) first, as diffusers' DDPM/DDIM.
    fn int_timesteps(&self, n: usize) -> Result<Vec<usize>> {
        let t = self.train_timesteps;
        if n == 0 || n > t {
            return Err(Error::Config {
                message: format!(
                    "{n} inference steps: give between 1 and the {t} training timesteps (`num_train_timesteps`)"
                ),
            });
        }
        Ok(match self.spacing {
            Spacing::Leading => {
                let ratio = t / n;
                (0..n)
                    .rev()
                    .map(|i| i * ratio + self.steps_offset)
                    .collect()
            }
            Spacing::Trailing => trailing(t, n).into_iter().map(|v| v as usize).collect(),
            Spacing::Linspace => {
                let step = (t - 1) as f64 / (n - 1).max(1) as f64;
                (0..n)
                    .rev()
                    .map(|i| round_half_even(i as f64 * step) as usize)
                    .collect()
            }
        })
    }

    /// ᾱ at a timestep (an index into the training schedule).
    fn alpha_bar(&self, t: usize) -> Result<f32> {
        self.schedule
            .alphas_cumprod
            .get(t)
            .copied()
            .ok_or_else(|| Error::Config {
                message: format!(
                    "timestep {t} is outside the {} training timesteps; lower `steps_offset`",
                    self.train_timesteps
                ),
            })
    }

    /// The clean sample the model output implies (before any clamp).
    fn x0(&self, out: Tensor<4>, sample: Tensor<4>, alpha_bar: f32) -> Tensor<4> {
        let (a, b) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
        match self.prediction {
            Prediction::Epsilon => (sample - out.mul_scalar(b)).div_scalar(a),
            Prediction::Sample => out,
            Prediction::Velocity => sample.mul_scalar(a) - out.mul_scalar(b),
        }
    }

    /// `x0` clamped to ±`clip_sample_range` when the config says so.
    fn clip(&self, x0: Tensor<4>) -> Tensor<4> {
        match self.clip {
            Some(r) => x0.clamp(-r, r),
            None => x0,
        }
    }
}

/// numpy's `round` (half to even).
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// `round(arange(T, 0, −T/n)) − 1` as numpy computes it (the step in f64).
fn trailing(t: usize, n: usize) -> Vec<f64> {
    let ratio = t as f64 / n as f64;
    // numpy's arange: length ceil((stop − start) / step), values start + i·step
    let len = ((0.0 - t as f64) / -ratio).ceil() as usize;
    (0..len)
        .map(|i| round_half_even(t as f64 + i as f64 * -ratio) - 1.0)
        .collect()
}

/// DDPM (Ho et al. 2020): ancestral sampling with the posterior mean and `fixed_small` or
/// `fixed_large` variance.
#[derive(Debug, Clone, PartialEq)]
pub struct Ddpm {
    common: Common,
    fixed_large: bool,
    timesteps: Vec<usize>,
}

/// DDIM (Song et al. 2021) with η.
#[derive(Debug, Clone, PartialEq)]
pub struct Ddim {
    common: Common,
    final_alpha_bar: f32,
    timesteps: Vec<usize>,
}

/// Euler's method on the probability-flow ODE in σ space (Karras et al. 2022), diffusers'
/// `EulerDiscreteScheduler` without churn.
#[derive(Debug, Clone, PartialEq)]
pub struct EulerDiscrete {
    common: Common,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
}

/// One of the three samplers, as a pipeline's config names it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scheduler {
    /// DDPMScheduler.
    Ddpm(Ddpm),
    /// DDIMScheduler (and PNDMScheduler configs, sampled with DDIM).
    Ddim(Ddim),
    /// EulerDiscreteScheduler.
    Euler(EulerDiscrete),
}

/// Which sampler to build from a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// DDPM.
    Ddpm,
    /// DDIM.
    Ddim,
    /// Euler discrete.
    Euler,
}

impl Scheduler {
    /// The sampler the config's `_class_name` names (`DDPMScheduler`, `DDIMScheduler`,
    /// `PNDMScheduler` → DDIM, `EulerDiscreteScheduler`).
    ///
    /// # Errors
    /// [`Error::Config`] for another class or an unsupported field value.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        let kind = match config.class_name.as_str() {
            "DDPMScheduler" => Kind::Ddpm,
            "DDIMScheduler" | "PNDMScheduler" => Kind::Ddim,
            "EulerDiscreteScheduler" => Kind::Euler,
            other => {
                return Err(bad(
                    "_class_name",
                    format!("\"{other}\""),
                    "DDPMScheduler, DDIMScheduler (PNDMScheduler configs are sampled with DDIM) and EulerDiscreteScheduler; pick one with --scheduler",
                ));
            }
        };
        Self::with_kind(config, kind)
    }

    /// `kind`'s sampler on `config`'s training schedule (a pipeline's schedule with another
    /// sampler, as diffusers' `Scheduler.from_config(pipe.scheduler.config)`).
    ///
    /// # Errors
    /// [`Error::Config`] for an unsupported field value.
    pub fn with_kind(config: &SchedulerConfig, kind: Kind) -> Result<Self> {
        let common = Common::new(config)?;
        Ok(match kind {
            Kind::Ddpm => {
                let fixed_large = match config.variance_type.as_str() {
                    "fixed_small" => false,
                    "fixed_large" => true,
                    other => {
                        return Err(bad(
                            "variance_type",
                            format!("\"{other}\""),
                            "fixed_small and fixed_large",
                        ));
                    }
                };
                Self::Ddpm(Ddpm {
                    fixed_large,
                    timesteps: (0..common.train_timesteps).rev().collect(),
                    common,
                })
            }
            Kind::Ddim => Self::Ddim(Ddim {
                final_alpha_bar: if config.set_alpha_to_one {
                    1.0
                } else {
                    common.schedule.alphas_cumprod[0]
                },
                timesteps: (0..common.train_timesteps).rev().collect(),
                common,
            }),
            Kind::Euler => {
                for (field, value) in [
                    ("use_karras_sigmas", config.use_karras_sigmas),
                    ("use_exponential_sigmas", config.use_exponential_sigmas),
                    ("use_beta_sigmas", config.use_beta_sigmas),
                ] {
                    if value == Some(true) {
                        return Err(bad(field, true, "only `false` (σs interpolated linearly)"));
                    }
                }
                if config.interpolation_type != "linear" {
                    return Err(bad(
                        "interpolation_type",
                        format!("\"{}\"", config.interpolation_type),
                        "only \"linear\"",
                    ));
                }
                if config.final_sigmas_type != "zero" {
                    return Err(bad(
                        "final_sigmas_type",
                        format!("\"{}\"", config.final_sigmas_type),
                        "only \"zero\"",
                    ));
                }
                if config.timestep_type != "discrete" {
                    return Err(bad(
                        "timestep_type",
                        format!("\"{}\"", config.timestep_type),
                        "only \"discrete\"",
                    ));
                }
                let mut euler = EulerDiscrete {
                    common,
                    timesteps: Vec::new(),
                    sigmas: Vec::new(),
                };
                let n = euler.common.train_timesteps;
                euler.set(n)?;
                Self::Euler(euler)
            }
        })
    }

    fn common(&self) -> &Common {
        match self {
            Self::Ddpm(s) => &s.common,
            Self::Ddim(s) => &s.common,
            Self::Euler(s) => &s.common,
        }
    }

    /// The training schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.common().schedule
    }

    /// What the model predicts.
    pub fn prediction(&self) -> Prediction {
        self.common().prediction
    }

    /// Chooses `n` inference steps.
    ///
    /// # Errors
    /// [`Error::Config`] for 0 or more steps than training timesteps, or a timestep past the
    /// schedule (`steps_offset`).
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        match self {
            Self::Ddpm(s) => {
                s.timesteps = s.common.int_timesteps(n)?;
                s.common.alpha_bar(s.timesteps[0])?;
            }
            Self::Ddim(s) => {
                s.timesteps = s.common.int_timesteps(n)?;
                s.common.alpha_bar(s.timesteps[0])?;
            }
            Self::Euler(s) => s.set(n)?,
        }
        Ok(())
    }

    /// The inference timesteps, noisiest first (what the UNet is told).
    pub fn timesteps(&self) -> Vec<f64> {
        match self {
            Self::Ddpm(s) => s.timesteps.iter().map(|&t| t as f64).collect(),
            Self::Ddim(s) => s.timesteps.iter().map(|&t| t as f64).collect(),
            Self::Euler(s) => s.timesteps.iter().map(|&t| f64::from(t)).collect(),
        }
    }

    /// The standard deviation of the initial noise (1, or Euler's largest σ).
    pub fn init_noise_sigma(&self) -> f64 {
        match self {
            Self::Euler(s) => {
                let max = s.sigmas.iter().copied().fold(0.0f32, f32::max);
                if s.common.spacing == Spacing::Leading {
                    f64::from((max * max + 1.0).sqrt())
                } else {
                    f64::from(max)
                }
            }
            _ => 1.0,
        }
    }

    /// The UNet's input at step `index`: the sample itself, or Euler's `x / √(σ² + 1)`.
    pub fn scale_model_input(&self, sample: Tensor<4>, index: usize) -> Tensor<4> {
        match self {
            Self::Euler(s) => {
                let sigma = s.sigmas[index.min(s.sigmas.len() - 1)];
                sample.div_scalar((sigma * sigma + 1.0).sqrt())
            }
            _ => sample,
        }
    }

    /// One sampling step from step `index` (of [`timesteps`](Self::timesteps)) to the next:
    /// the sample one step less noisy. `noise` is the fresh Gaussian noise a stochastic step
    /// adds (DDPM before the last step, DDIM with `eta > 0`); `None` there means none is added.
    ///
    /// # Errors
    /// [`Error::Config`] for an index past the last step.
    pub fn step(
        &self,
        model_output: Tensor<4>,
        index: usize,
        sample: Tensor<4>,
        eta: f64,
        noise: Option<Tensor<4>>,
    ) -> Result<Tensor<4>> {
        let n = self.timesteps().len();
        if index >= n {
            return Err(Error::Config {
                message: format!("step {index} of {n} inference steps"),
            });
        }
        Ok(match self {
            Self::Ddpm(s) => {
                let c = &s.common;
                let t = s.timesteps[index];
                let a_t = c.alpha_bar(t)?;
                let a_prev = match s.timesteps.get(index + 1) {
                    Some(&p) => c.alpha_bar(p)?,
                    None => 1.0,
                };
                let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
                let alpha = a_t / a_prev;
                let beta = 1.0 - alpha;
                let x0 = c.clip(c.x0(model_output, sample.clone(), a_t));
                let mean = x0.mul_scalar(a_prev.sqrt() * beta / b_t)
                    + sample.mul_scalar(alpha.sqrt() * b_prev / b_t);
                match noise {
                    Some(z) if t > 0 => {
                        let var = if s.fixed_large {
                            beta
                        } else {
                            (b_prev / b_t * beta).max(1e-20)
                        };
                        mean + z.mul_scalar(var.sqrt())
                    }
                    _ => mean,
                }
            }
            Self::Ddim(s) => {
                let c = &s.common;
                let a_t = c.alpha_bar(s.timesteps[index])?;
                let a_prev = match s.timesteps.get(index + 1) {
                    Some(&p) => c.alpha_bar(p)?,
                    None => s.final_alpha_bar,
                };
                let b_t = 1.0 - a_t;
                // ε from the unclamped x₀, as diffusers (without `use_clipped_model_output`)
                let x0 = c.x0(model_output.clone(), sample.clone(), a_t);
                let eps = match c.prediction {
                    Prediction::Epsilon => model_output,
                    Prediction::Sample => {
                        (sample - x0.clone().mul_scalar(a_t.sqrt())).div_scalar(b_t.sqrt())
                    }
                    Prediction::Velocity => {
                        model_output.mul_scalar(a_t.sqrt()) + sample.mul_scalar(b_t.sqrt())
                    }
                };
                let variance = (1.0 - a_prev) / b_t * (1.0 - a_t / a_prev);
                let std = eta as f32 * variance.sqrt();
                let direction = eps.mul_scalar((1.0 - a_prev - std * std).sqrt());
                let prev = c.clip(x0).mul_scalar(a_prev.sqrt()) + direction;
                match noise {
                    Some(z) if eta > 0.0 => prev + z.mul_scalar(std),
                    _ => prev,
                }
            }
            Self::Euler(s) => {
                let sigma = s.sigmas[index];
                let x0 = match s.common.prediction {
                    Prediction::Epsilon => sample.clone() - model_output.mul_scalar(sigma),
                    Prediction::Sample => model_output,
                    Prediction::Velocity => {
                        let r = (sigma * sigma + 1.0).sqrt();
                        model_output.mul_scalar(-sigma / r)
                            + sample.clone().div_scalar(sigma * sigma + 1.0)
                    }
                };
                let derivative = (sample.clone() - x0).div_scalar(sigma);
                let dt = s.sigmas[index + 1] - sigma;
                sample + derivative.mul_scalar(dt)
            }
        })
    }

    /// The forward process: `√ᾱ_t·x₀ + √(1 − ᾱ_t)·ε`, one timestep per batch element.
    ///
    /// # Errors
    /// [`Error::Input`] when `timesteps` does not have one entry per batch element,
    /// [`Error::Config`] for a timestep past the schedule.
    pub fn add_noise(
        &self,
        original: Tensor<4>,
        noise: Tensor<4>,
        timesteps: &[usize],
    ) -> Result<Tensor<4>> {
        let (a, b) = self.per_example(&original, timesteps)?;
        Ok(original * a + noise * b)
    }

    /// The v-prediction target `√ᾱ_t·ε − √(1 − ᾱ_t)·x₀`.
    ///
    /// # Errors
    /// As [`add_noise`](Self::add_noise).
    pub fn get_velocity(
        &self,
        sample: Tensor<4>,
        noise: Tensor<4>,
        timesteps: &[usize],
    ) -> Result<Tensor<4>> {
        let (a, b) = self.per_example(&sample, timesteps)?;
        Ok(noise * a - sample * b)
    }

    /// `√ᾱ_t` and `√(1 − ᾱ_t)` per batch element, shaped `[B, 1, 1, 1]`.
    fn per_example(&self, x: &Tensor<4>, timesteps: &[usize]) -> Result<(Tensor<4>, Tensor<4>)> {
        let b = x.dims()[0];
        if timesteps.len() != b {
            return Err(Error::Input {
                message: format!("{} timesteps for a batch of {b}", timesteps.len()),
            });
        }
        let c = self.common();
        let mut sa = Vec::with_capacity(b);
        let mut sb = Vec::with_capacity(b);
        for &t in timesteps {
            let a = c.alpha_bar(t)?;
            sa.push(a.sqrt());
            sb.push((1.0 - a).sqrt());
        }
        let device = x.device();
        let column = |v: Vec<f32>| {
            Tensor::<1>::from_data(burn::tensor::TensorData::new(v, [b]), &device)
                .reshape([b, 1, 1, 1])
        };
        Ok((column(sa), column(sb)))
    }
}

impl EulerDiscrete {
    /// diffusers' `set_timesteps` without custom σs: float timesteps per spacing, σ linearly
    /// interpolated (in f64, as `np.interp`), then a final σ of 0.
    fn set(&mut self, n: usize) -> Result<()> {
        let t = self.common.train_timesteps;
        if n == 0 || n > t {
            return Err(Error::Config {
                message: format!(
                    "{n} inference steps: give between 1 and the {t} training timesteps (`num_train_timesteps`)"
                ),
            });
        }
        let timesteps: Vec<f32> = match self.common.spacing {
            Spacing::Linspace => linspace_np_f32(0.0, (t - 1) as f32, n)
                .into_iter()
                .rev()
                .collect(),
            Spacing::Leading => {
                let ratio = t / n;
                (0..n)
                    .rev()
                    .map(|i| (i * ratio) as f32 + self.common.steps_offset as f32)
                    .collect()
            }
            Spacing::Trailing => trailing(t, n).into_iter().map(|v| v as f32).collect(),
        };
        let table: Vec<f32> = self
            .common
            .schedule
            .alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&x| {
                let x = f64::from(x);
                let last = table.len() - 1;
                if x <= 0.0 {
                    return table[0];
                }
                if x >= last as f64 {
                    return table[last];
                }
                let i = x.floor() as usize;
                let (lo, hi) = (f64::from(table[i]), f64::from(table[i + 1]));
                let w = x - i as f64;
                // np.interp's form: lo + slope·(x − xᵢ)
                (lo + (hi - lo) * w) as f32
            })
            .collect();
        sigmas.push(0.0);
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        Ok(())
    }

    /// The σ of each step, then 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

/// numpy's `linspace(start, stop, n, dtype=float32)`: computed in f64, cast to f32.
fn linspace_np_f32(start: f32, stop: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let (a, b) = (f64::from(start), f64::from(stop));
    let step = (b - a) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                stop
            } else {
                (a + i as f64 * step) as f32
            }
        })
        .collect()
}
