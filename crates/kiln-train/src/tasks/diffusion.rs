//! [`TextToImageTask`]: training a diffusers-style UNet on precomputed latents and text
//! embeddings (CommonCanvas's first speed switch: the VAE and text encoder run once, not every
//! step), with the objective of diffusers' `train_text_to_image.py`
//! ([`kiln_models::diffusion::training::diffusion_loss`]): random timesteps, offset noise,
//! caption dropout by zeroing the embeddings, ε or v target, optional Min-SNR-γ.
//!
//! Every random draw of a step (timesteps, noise, offset, dropped captions) comes from a
//! generator seeded by `(seed, step, micro-batch)`, so a resumed run draws what the
//! uninterrupted one did.

use std::collections::BTreeMap;

use burn::prelude::*;
use kiln_models::diffusion::scheduler::Scheduler;
use kiln_models::diffusion::training::{LossOptions, diffusion_loss};
use kiln_models::diffusion::unet::UNet2DConditionModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::ShuffledEpochs;
use crate::error::{Error, Result};
use crate::step::StepOutput;
use crate::trainer::{BatchSize, DataSize, TrainState, TrainTask};

/// Precomputed training data: one latent `[C, h, w]` and one text embedding `[L, D]` per
/// example (row-major f32), all of one shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentSet {
    /// Latent shape `[C, h, w]` (already multiplied by the VAE's `scaling_factor`).
    pub latent_shape: [usize; 3],
    /// Embedding shape `[L, D]`.
    pub embed_shape: [usize; 2],
    /// The latents.
    pub latents: Vec<Vec<f32>>,
    /// The text embeddings.
    pub embeds: Vec<Vec<f32>>,
}

/// The training recipe's random parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextToImageConfig {
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Probability of replacing an example's text embedding by zeros (CommonCanvas, SD: 0.1).
    pub caption_dropout: f64,
    /// Offset noise: `noise += offset · N(0, 1)` per (example, channel) (0: off).
    pub noise_offset: f64,
    /// Min-SNR-γ weighting (`None`: plain MSE).
    pub snr_gamma: Option<f64>,
    /// Seed of the data order and of every draw.
    pub seed: u64,
}

/// One micro-batch: example indices and the step's draws.
#[derive(Debug, Clone)]
pub struct DiffusionBatch {
    idx: Vec<usize>,
    timesteps: Vec<usize>,
    noise: Vec<f32>,
    dropped: Vec<bool>,
}

/// Training a diffusers-style UNet on precomputed latents and text embeddings with
/// `train_text_to_image.py`'s objective: random timesteps, offset noise, caption dropout by
/// zeroing the embeddings, ε or v target, optional Min-SNR-γ. Every draw of a step comes from a
/// generator seeded by `(seed, step, micro-batch)`, so a resumed run draws what the
/// uninterrupted one did.
pub struct TextToImageTask {
    data: LatentSet,
    eval: Vec<usize>,
    train: Vec<usize>,
    config: TextToImageConfig,
    scheduler: Scheduler,
    device: Device,
    epochs: ShuffledEpochs,
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

impl TextToImageTask {
    /// Trains on examples `train` of `data`, evaluates on `eval` (a fixed draw), noising with
    /// `scheduler`'s training schedule.
    ///
    /// # Errors
    /// [`Error::Config`] for empty sets, a zero batch, a probability outside [0, 1], or
    /// latents/embeddings of the wrong length.
    pub fn new(
        data: LatentSet,
        train: Vec<usize>,
        eval: Vec<usize>,
        scheduler: Scheduler,
        config: TextToImageConfig,
        device: &Device,
    ) -> Result<Self> {
        let bad = |message: String| Err(Error::Config { message });
        if train.is_empty() || eval.is_empty() || config.batch_size == 0 {
            return bad("text-to-image task: the training and evaluation sets and the batch size must not be empty".into());
        }
        if !(0.0..=1.0).contains(&config.caption_dropout) {
            return bad(format!(
                "text-to-image task: caption_dropout {} must be a probability in [0, 1]",
                config.caption_dropout
            ));
        }
        let (ln, en) = (
            data.latent_shape.iter().product::<usize>(),
            data.embed_shape.iter().product::<usize>(),
        );
        if data.latents.len() != data.embeds.len() {
            return bad(format!(
                "text-to-image task: {} latents for {} embeddings",
                data.latents.len(),
                data.embeds.len()
            ));
        }
        if let Some(i) = (0..data.latents.len())
            .find(|&i| data.latents[i].len() != ln || data.embeds[i].len() != en)
        {
            return bad(format!(
                "text-to-image task: example {i} has {} latent and {} embedding values; every example needs {ln} ({:?}) and {en} ({:?})",
                data.latents[i].len(),
                data.embeds[i].len(),
                data.latent_shape,
                data.embed_shape
            ));
        }
        if let Some(&i) = train
            .iter()
            .chain(&eval)
            .find(|&&i| i >= data.latents.len())
        {
            return bad(format!(
                "text-to-image task: index {i} is outside the {} examples",
                data.latents.len()
            ));
        }
        Ok(Self {
            epochs: ShuffledEpochs::new(train.len(), config.seed),
            data,
            eval,
            train,
            config,
            scheduler,
            device: device.clone(),
        })
    }

    /// The draws of one micro-batch from `rng`.
    fn draw(&self, idx: Vec<usize>, rng: &mut ChaCha8Rng, train: bool) -> DiffusionBatch {
        let t_max = self.scheduler.schedule().alphas_cumprod.len();
        let [c, h, w] = self.data.latent_shape;
        let b = idx.len();
        let timesteps = (0..b).map(|_| rng.random_range(0..t_max)).collect();
        let mut noise: Vec<f32> = (0..b * c * h * w).map(|_| normal(rng)).collect();
        if self.config.noise_offset > 0.0 {
            for k in 0..b * c {
                let o = self.config.noise_offset as f32 * normal(rng);
                for v in &mut noise[k * h * w..(k + 1) * h * w] {
                    *v += o;
                }
            }
        }
        let dropped = (0..b)
            .map(|_| train && rng.random::<f64>() < self.config.caption_dropout)
            .collect();
        DiffusionBatch {
            idx,
            timesteps,
            noise,
            dropped,
        }
    }

    fn loss(&self, model: &UNet2DConditionModel, batch: &DiffusionBatch) -> Result<Tensor<1>> {
        let b = batch.idx.len();
        let [c, h, w] = self.data.latent_shape;
        let [l, d] = self.data.embed_shape;
        let latents: Vec<f32> = batch
            .idx
            .iter()
            .flat_map(|&i| self.data.latents[i].iter().copied())
            .collect();
        let embeds: Vec<f32> = batch
            .idx
            .iter()
            .zip(&batch.dropped)
            .flat_map(|(&i, &drop)| {
                self.data.embeds[i]
                    .iter()
                    .map(move |&v| if drop { 0.0 } else { v })
            })
            .collect();
        let t4 =
            |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [b, c, h, w]), &self.device);
        Ok(diffusion_loss(
            model,
            &self.scheduler,
            t4(latents),
            t4(batch.noise.clone()),
            &batch.timesteps,
            Tensor::<3>::from_data(TensorData::new(embeds, [b, l, d]), &self.device),
            LossOptions {
                snr_gamma: self.config.snr_gamma,
            },
        )?)
    }
}

impl TrainTask<UNet2DConditionModel> for TextToImageTask {
    type Batch = DiffusionBatch;

    fn data_size(&self) -> DataSize {
        self.epochs.data_size(self.config.batch_size)
    }

    fn next_batch(
        &mut self,
        state: &TrainState,
        micro: usize,
        _: usize,
    ) -> Result<(DiffusionBatch, BatchSize)> {
        let idx: Vec<usize> = self
            .epochs
            .take(self.config.batch_size)
            .into_iter()
            .map(|k| self.train[k])
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.config.seed
                ^ state.step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (micro as u64) << 56,
        );
        let batch = self.draw(idx, &mut rng, true);
        Ok((
            batch,
            BatchSize {
                samples: self.config.batch_size as u64,
                tokens: 0,
            },
        ))
    }

    /// The (Min-SNR-weighted) MSE of the UNet's prediction, and the examples' indices.
    fn forward(
        &mut self,
        model: &UNet2DConditionModel,
        batch: DiffusionBatch,
    ) -> Result<StepOutput> {
        let loss = self.loss(model, &batch)?;
        Ok(StepOutput::new(loss).with_example_ids(batch.idx.iter().map(|&i| i as u64).collect()))
    }

    /// `loss`: the objective on the evaluation examples with one fixed draw (seed + 1, no
    /// caption dropout), so evaluations are comparable across steps and runs.
    fn evaluate(
        &mut self,
        model: &UNet2DConditionModel,
        _: &TrainState,
    ) -> Result<BTreeMap<String, f64>> {
        let valid = model.valid();
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed.wrapping_add(1));
        let batch = self.draw(self.eval.clone(), &mut rng, false);
        let device = self.device.clone();
        self.device = valid.time_linear_1.weight.val().device();
        let loss = self.loss(&valid, &batch);
        self.device = device;
        let v = loss?
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .map_err(|e| Error::Config {
                message: format!("reading the evaluation loss: {e:?}"),
            })?;
        Ok(BTreeMap::from([("loss".to_owned(), v[0])]))
    }

    fn data_state(&self) -> Value {
        self.epochs.state()
    }

    fn restore_data_state(&mut self, state: &Value) -> Result<()> {
        self.epochs.restore(state)
    }
}
