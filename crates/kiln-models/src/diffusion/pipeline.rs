//! A Stable Diffusion pipeline read from a diffusers directory (`model_index.json` with
//! `unet/`, `scheduler/`, and optionally `vae/` and `text_encoder/`): classifier-free guided
//! sampling from text embeddings and initial noise, as diffusers' `StableDiffusionPipeline`
//! runs it, and decoding to images. Tokenising prompts is the caller's (kiln-data's tokenizers;
//! `kiln run diffuse` does it).
//!
//! The loop: `x ← x_T · init_noise_sigma`; for each timestep, the UNet sees the scaled input
//! twice (negative and positive embeddings), the guided prediction is
//! `ε_neg + g·(ε_pos − ε_neg)` (just `ε_pos` when `g ≤ 1`), and the scheduler steps.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::clip::ClipTextModel;
use super::scheduler::{Kind, Scheduler, SchedulerConfig};
use super::unet::UNet2DConditionModel;
use super::vae::AutoencoderKl;
use crate::error::{Error, Result, config_err};
use crate::weights::LoadOptions;

/// The components of a diffusers pipeline directory.
#[derive(Debug)]
pub struct Pipeline {
    /// The directory.
    pub dir: PathBuf,
    /// The UNet.
    pub unet: UNet2DConditionModel,
    /// The VAE (absent when the directory has none: latents only).
    pub vae: Option<AutoencoderKl>,
    /// The text encoder (absent when the directory has none: embeddings only).
    pub text_encoder: Option<ClipTextModel>,
    /// The scheduler's config (`scheduler/scheduler_config.json`).
    pub scheduler: SchedulerConfig,
}

/// Sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    /// Inference steps.
    pub steps: usize,
    /// Classifier-free guidance scale (≤ 1: no guidance, the negative embeddings are unused).
    pub guidance: f64,
    /// The sampler; `None`: the pipeline's own (`_class_name`).
    pub scheduler: Option<Kind>,
    /// DDIM's η (0: deterministic).
    pub eta: f64,
}

impl Default for SampleOptions {
    /// diffusers' defaults: 50 steps, guidance 7.5, the pipeline's scheduler, η 0.
    fn default() -> Self {
        Self {
            steps: 50,
            guidance: 7.5,
            scheduler: None,
            eta: 0.0,
        }
    }
}

fn component(dir: &Path, name: &str) -> Option<PathBuf> {
    let p = dir.join(name);
    p.join("config.json").is_file().then_some(p)
}

impl Pipeline {
    /// Reads a pipeline directory. `unet/` and `scheduler/` are required; `vae/` and
    /// `text_encoder/` are loaded when present.
    ///
    /// # Errors
    /// [`Error::Config`] naming the missing component or file; the components' load errors.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.join("model_index.json").is_file() {
            return Err(config_err(format!(
                "{}: no model_index.json; point at a diffusers pipeline directory (unet/, scheduler/, vae/, text_encoder/, tokenizer/)",
                dir.display()
            )));
        }
        let unet_dir = component(dir, "unet").ok_or_else(|| {
            config_err(format!(
                "{}: the pipeline has no unet/config.json",
                dir.display()
            ))
        })?;
        let sched = dir.join("scheduler").join("scheduler_config.json");
        if !sched.is_file() {
            return Err(config_err(format!(
                "{}: the pipeline has no scheduler/scheduler_config.json",
                dir.display()
            )));
        }
        let options = LoadOptions::default();
        Ok(Self {
            unet: UNet2DConditionModel::load(unet_dir, device, options)?,
            vae: component(dir, "vae")
                .map(|p| AutoencoderKl::load(p, device, options))
                .transpose()?,
            text_encoder: component(dir, "text_encoder")
                .map(|p| ClipTextModel::load(p, device, options))
                .transpose()?,
            scheduler: SchedulerConfig::from_file(sched)?,
            dir: dir.to_owned(),
        })
    }

    /// The scheduler `options` ask for, on the pipeline's schedule, with its timesteps set.
    ///
    /// # Errors
    /// The scheduler's config errors.
    pub fn scheduler(&self, options: &SampleOptions) -> Result<Scheduler> {
        let mut s = match options.scheduler {
            Some(kind) => Scheduler::with_kind(&self.scheduler, kind)?,
            None => Scheduler::from_config(&self.scheduler)?,
        };
        s.set_timesteps(options.steps)?;
        Ok(s)
    }

    /// Samples latents from `prompt_embeds` `[B, L, D]` (and `negative_embeds`, same shape,
    /// needed when `guidance > 1`) starting from the noise `init_latents` `[B, C, h, w]`.
    /// `noise(i)` gives fresh standard-normal noise for a stochastic step `i` (DDPM, DDIM with
    /// η > 0); `progress(i, n)` is called after each step. Returns the final latents
    /// (scaled, as the UNet sees them).
    ///
    /// # Errors
    /// [`Error::Input`] for shapes that do not fit; the UNet's and the scheduler's errors.
    pub fn sample(
        &self,
        prompt_embeds: Tensor<3>,
        negative_embeds: Option<Tensor<3>>,
        init_latents: Tensor<4>,
        options: &SampleOptions,
        mut noise: impl FnMut(usize) -> Tensor<4>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Tensor<4>> {
        let guided = options.guidance > 1.0;
        let b = init_latents.dims()[0];
        if prompt_embeds.dims()[0] != b {
            return Err(Error::Input {
                message: format!(
                    "{} prompt embeddings for {b} initial latents",
                    prompt_embeds.dims()[0]
                ),
            });
        }
        let context = if guided {
            let neg = negative_embeds.ok_or_else(|| Error::Input {
                message: format!(
                    "guidance {} > 1 needs negative embeddings (the embeddings of \"\" or of a negative prompt)",
                    options.guidance
                ),
            })?;
            if neg.dims() != prompt_embeds.dims() {
                return Err(Error::Input {
                    message: format!(
                        "negative embeddings {:?} and prompt embeddings {:?} differ in shape",
                        neg.dims(),
                        prompt_embeds.dims()
                    ),
                });
            }
            Tensor::cat(vec![neg, prompt_embeds], 0)
        } else {
            prompt_embeds
        };
        let scheduler = self.scheduler(options)?;
        let timesteps = scheduler.timesteps();
        let device = init_latents.device();
        let mut x = init_latents.mul_scalar(scheduler.init_noise_sigma() as f32);
        let n = timesteps.len();
        for (i, &t) in timesteps.iter().enumerate() {
            let input = if guided {
                Tensor::cat(vec![x.clone(), x.clone()], 0)
            } else {
                x.clone()
            };
            let input = scheduler.scale_model_input(input, i);
            let tt = Tensor::<1>::from_data(TensorData::new(vec![t as f32], [1]), &device);
            let out = self.unet.forward(input, tt, context.clone())?;
            let pred = if guided {
                let uncond = out.clone().narrow(0, 0, b);
                let cond = out.narrow(0, b, b);
                uncond.clone() + (cond - uncond).mul_scalar(options.guidance as f32)
            } else {
                out
            };
            let stochastic = match &scheduler {
                Scheduler::Ddpm(_) => t > 0.0,
                Scheduler::Ddim(_) => options.eta > 0.0,
                Scheduler::Euler(_) => false,
            };
            let z = stochastic.then(|| noise(i));
            x = scheduler.step(pred, i, x, options.eta, z)?;
            progress(i + 1, n);
        }
        Ok(x)
    }

    /// Decodes latents to images in [0, 1], `[B, 3, H, W]` (diffusers' `output_type="pt"`
    /// post-processing: `(x / 2 + 0.5).clamp(0, 1)`).
    ///
    /// # Errors
    /// [`Error::Config`] when the pipeline has no VAE; the VAE's errors.
    pub fn decode(&self, latents: Tensor<4>) -> Result<Tensor<4>> {
        let vae = self.vae.as_ref().ok_or_else(|| {
            config_err(format!(
                "{}: the pipeline has no vae/ to decode images with (write latents instead)",
                self.dir.display()
            ))
        })?;
        Ok(vae
            .decode_latents(latents)?
            .div_scalar(2.0)
            .add_scalar(0.5)
            .clamp(0.0, 1.0))
    }
}
