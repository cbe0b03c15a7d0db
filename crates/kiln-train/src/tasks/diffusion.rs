//! [`TextToImageTask`]: training a diffusers-style UNet on latents and text embeddings from a
//! [`LatentSource`] — precomputed in memory ([`LatentSet`]) or in memory-mapped shards
//! ([`LatentShards`], written by [`precompute`]), or encoded every step by the VAE and text
//! encoder ([`EncodeEachStep`]); CommonCanvas's first speed switch is the choice between the
//! last two — with the objective of diffusers' `train_text_to_image.py`
//! ([`kiln_models::diffusion::training::diffusion_loss`]): random timesteps, offset noise,
//! caption dropout by zeroing the embeddings, ε or v target, optional Min-SNR-γ.
//!
//! Every random draw of a step (timesteps, noise, offset, dropped captions) comes from a
//! generator seeded by `(seed, step, micro-batch)`, so a resumed run draws what the
//! uninterrupted one did.

use std::collections::BTreeMap;

use burn::prelude::*;
use kiln_data::arrays::{ArrayShard, ArrayShardWriter, Field};
use kiln_models::diffusion::clip::ClipTextModel;
use kiln_models::diffusion::scheduler::Scheduler;
use kiln_models::diffusion::training::{LossOptions, diffusion_loss};
use kiln_models::diffusion::unet::UNet2DConditionModel;
use kiln_models::diffusion::vae::AutoencoderKl;
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

/// Where a [`TextToImageTask`] gets each example's latent `[C, h, w]` and text embedding
/// `[L, D]`.
pub trait LatentSource: Send {
    /// Examples.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Latent shape `[C, h, w]` (already scaled by the VAE's `scaling_factor`).
    fn latent_shape(&self) -> [usize; 3];
    /// Embedding shape `[L, D]`.
    fn embed_shape(&self) -> [usize; 2];
    /// Checks the examples (called when a task is built).
    ///
    /// # Errors
    /// [`Error::Config`] naming the first example that does not fit.
    fn check(&self) -> Result<()> {
        Ok(())
    }
    /// The latents `[B, C, h, w]` and embeddings `[B, L, D]` of examples `idx`, on `device`.
    ///
    /// # Errors
    /// Whatever reading or encoding them raises.
    fn batch(&mut self, idx: &[usize], device: &Device) -> Result<(Tensor<4>, Tensor<3>)>;
}

fn batch_from_rows<'a>(
    idx: &[usize],
    latent_shape: [usize; 3],
    embed_shape: [usize; 2],
    mut rows: impl FnMut(usize) -> Result<(std::borrow::Cow<'a, [f32]>, std::borrow::Cow<'a, [f32]>)>,
    device: &Device,
) -> Result<(Tensor<4>, Tensor<3>)> {
    let b = idx.len();
    let [c, h, w] = latent_shape;
    let [l, d] = embed_shape;
    let (mut lat, mut emb) = (
        Vec::with_capacity(b * c * h * w),
        Vec::with_capacity(b * l * d),
    );
    for &i in idx {
        let (x, e) = rows(i)?;
        lat.extend_from_slice(&x);
        emb.extend_from_slice(&e);
    }
    Ok((
        Tensor::from_data(TensorData::new(lat, [b, c, h, w]), device),
        Tensor::from_data(TensorData::new(emb, [b, l, d]), device),
    ))
}

impl LatentSource for LatentSet {
    /// Checks that every example has the declared shapes.
    fn check(&self) -> Result<()> {
        let bad = |message: String| Err(Error::Config { message });
        let (ln, en) = (
            self.latent_shape.iter().product::<usize>(),
            self.embed_shape.iter().product::<usize>(),
        );
        if self.latents.len() != self.embeds.len() {
            return bad(format!(
                "text-to-image task: {} latents for {} embeddings",
                self.latents.len(),
                self.embeds.len()
            ));
        }
        if let Some(i) = (0..self.latents.len())
            .find(|&i| self.latents[i].len() != ln || self.embeds[i].len() != en)
        {
            return bad(format!(
                "text-to-image task: example {i} has {} latent and {} embedding values; every example needs {ln} ({:?}) and {en} ({:?})",
                self.latents[i].len(),
                self.embeds[i].len(),
                self.latent_shape,
                self.embed_shape
            ));
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.latents.len()
    }
    fn latent_shape(&self) -> [usize; 3] {
        self.latent_shape
    }
    fn embed_shape(&self) -> [usize; 2] {
        self.embed_shape
    }
    fn batch(&mut self, idx: &[usize], device: &Device) -> Result<(Tensor<4>, Tensor<3>)> {
        batch_from_rows(
            idx,
            self.latent_shape,
            self.embed_shape,
            |i| {
                Ok((
                    self.latents[i].as_slice().into(),
                    self.embeds[i].as_slice().into(),
                ))
            },
            device,
        )
    }
}

/// Latents and embeddings precomputed into a memory-mapped [`ArrayShard`] (fields `latent`
/// `[C, h, w]` and `embed` `[L, D]`, as [`precompute`] writes them).
#[derive(Debug)]
pub struct LatentShards {
    shard: ArrayShard,
    latent_shape: [usize; 3],
    embed_shape: [usize; 2],
}

impl LatentShards {
    /// Opens a shard written by [`precompute`].
    ///
    /// # Errors
    /// Shard errors; [`Error::Config`] naming the field when `latent` is not 3-D or `embed`
    /// not 2-D.
    pub fn open(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        let shard = ArrayShard::open(dir)?;
        let shape = |name: &str| -> Result<Vec<usize>> { Ok(shard.field(name)?.shape.clone()) };
        let (lat, emb) = (shape("latent")?, shape("embed")?);
        let (Ok(latent_shape), Ok(embed_shape)) = (
            <[usize; 3]>::try_from(lat.clone()),
            <[usize; 2]>::try_from(emb.clone()),
        ) else {
            return Err(Error::Config {
                message: format!(
                    "{}: field `latent` has shape {lat:?} and `embed` {emb:?}; a text-to-image shard needs [C, h, w] and [L, D]",
                    shard.path().display()
                ),
            });
        };
        Ok(Self {
            shard,
            latent_shape,
            embed_shape,
        })
    }

    /// The shard.
    pub fn shard(&self) -> &ArrayShard {
        &self.shard
    }
}

impl LatentSource for LatentShards {
    fn len(&self) -> usize {
        self.shard.len()
    }
    fn latent_shape(&self) -> [usize; 3] {
        self.latent_shape
    }
    fn embed_shape(&self) -> [usize; 2] {
        self.embed_shape
    }
    fn batch(&mut self, idx: &[usize], device: &Device) -> Result<(Tensor<4>, Tensor<3>)> {
        let shard = &self.shard;
        batch_from_rows(
            idx,
            self.latent_shape,
            self.embed_shape,
            |i| Ok((shard.get("latent", i)?, shard.get("embed", i)?)),
            device,
        )
    }
}

/// Images and token ids encoded every time a batch is drawn: the VAE's latents (posterior
/// mean × `scaling_factor`, what pipelines feed the UNet; without a VAE the images themselves,
/// pixel-space diffusion) and the text encoder's last hidden state. The encoders are frozen.
/// This is what CommonCanvas's precomputation removes from every step.
pub struct EncodeEachStep {
    images: Vec<Vec<f32>>,
    image_shape: [usize; 3],
    ids: Vec<Vec<i64>>,
    text_encoder: ClipTextModel,
    vae: Option<AutoencoderKl>,
    latent_shape: [usize; 3],
    embed_shape: [usize; 2],
}

impl EncodeEachStep {
    /// Encodes `images` (`[C, H, W]` each, in the VAE's [-1, 1] range) and token ids `ids`
    /// (one row of the text encoder's length per image) with `text_encoder` and `vae` (`None`:
    /// the images are the latents), both loaded on one device; they run there, and each batch
    /// is moved to the device the task asks for.
    ///
    /// # Errors
    /// [`Error::Config`] for counts or lengths that do not match; model errors from a trial
    /// encoding of the first example.
    pub fn new(
        images: Vec<Vec<f32>>,
        image_shape: [usize; 3],
        ids: Vec<Vec<i64>>,
        text_encoder: ClipTextModel,
        vae: Option<AutoencoderKl>,
    ) -> Result<Self> {
        let bad = |message: String| Err(Error::Config { message });
        let n = image_shape.iter().product::<usize>();
        if images.is_empty() || images.len() != ids.len() {
            return bad(format!(
                "encode-each-step source: {} images for {} token rows (need the same, at least 1)",
                images.len(),
                ids.len()
            ));
        }
        if let Some(i) = images.iter().position(|x| x.len() != n) {
            return bad(format!(
                "encode-each-step source: image {i} has {} values; {image_shape:?} needs {n}",
                images[i].len()
            ));
        }
        let len = ids[0].len();
        if let Some(i) = ids.iter().position(|r| r.len() != len) {
            return bad(format!(
                "encode-each-step source: token row {i} has {} ids, row 0 has {len}",
                ids[i].len()
            ));
        }
        let text_encoder = text_encoder.no_grad();
        let vae = vae.map(Module::no_grad);
        let mut me = Self {
            images,
            image_shape,
            ids,
            text_encoder,
            vae,
            latent_shape: [0; 3],
            embed_shape: [0; 2],
        };
        let device = me.text_encoder.token_embedding.weight.val().device();
        let (x, e) = me.encode(&[0], &device)?;
        let ([_, c, h, w], [_, l, d]) = (x.dims(), e.dims());
        (me.latent_shape, me.embed_shape) = ([c, h, w], [l, d]);
        Ok(me)
    }

    /// Runs the encoders on the device they were loaded on; the results are moved to `device`.
    fn encode(&self, idx: &[usize], device: &Device) -> Result<(Tensor<4>, Tensor<3>)> {
        let on = self.text_encoder.token_embedding.weight.val().device();
        let b = idx.len();
        let [c, h, w] = self.image_shape;
        let pixels: Vec<f32> = idx
            .iter()
            .flat_map(|&i| self.images[i].iter().copied())
            .collect();
        let images = Tensor::<4>::from_data(TensorData::new(pixels, [b, c, h, w]), &on);
        let latents = match &self.vae {
            Some(vae) => vae.encode_latents(images)?,
            None => images,
        };
        let l = self.ids[0].len();
        let ids: Vec<i64> = idx
            .iter()
            .flat_map(|&i| self.ids[i].iter().copied())
            .collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, l]), &on);
        let embeds = self.text_encoder.forward(ids, None)?.last_hidden_state;
        Ok((latents.to_device(device), embeds.to_device(device)))
    }
}

impl LatentSource for EncodeEachStep {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn latent_shape(&self) -> [usize; 3] {
        self.latent_shape
    }
    fn embed_shape(&self) -> [usize; 2] {
        self.embed_shape
    }
    fn batch(&mut self, idx: &[usize], device: &Device) -> Result<(Tensor<4>, Tensor<3>)> {
        self.encode(idx, device)
    }
}

/// Runs `source` once over every example and writes the latents and embeddings to an array
/// shard at `dir` (fields `latent`, `embed`; atomically; refused if `dir` exists unless
/// `force`), `batch` examples at a time on `device` — CommonCanvas's precomputation. Read it
/// back with [`LatentShards`].
///
/// # Errors
/// Source, shard and I/O errors; [`Error::Config`] for a zero batch.
pub fn precompute(
    source: &mut dyn LatentSource,
    dir: impl AsRef<std::path::Path>,
    batch: usize,
    device: &Device,
    force: bool,
) -> Result<kiln_data::arrays::ArrayIndex> {
    if batch == 0 {
        return Err(Error::Config {
            message: "precompute: the batch size must be at least 1".into(),
        });
    }
    let mut w = ArrayShardWriter::create(
        dir,
        &[
            Field::new("latent", &source.latent_shape()),
            Field::new("embed", &source.embed_shape()),
        ],
        force,
    )?;
    let all: Vec<usize> = (0..source.len()).collect();
    let read = |t: TensorData| -> Result<Vec<f32>> {
        t.convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| Error::Config {
                message: format!("precompute: reading a batch: {e:?}"),
            })
    };
    for chunk in all.chunks(batch) {
        let (x, e) = source.batch(chunk, device)?;
        let (x, e) = (read(x.into_data())?, read(e.into_data())?);
        let (xn, en) = (x.len() / chunk.len(), e.len() / chunk.len());
        for k in 0..chunk.len() {
            w.push(&[&x[k * xn..(k + 1) * xn], &e[k * en..(k + 1) * en]])?;
        }
    }
    Ok(w.finish()?)
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
    data: Box<dyn LatentSource>,
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
        data: impl LatentSource + 'static,
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
        data.check()?;
        if let Some(&i) = train.iter().chain(&eval).find(|&&i| i >= data.len()) {
            return bad(format!(
                "text-to-image task: index {i} is outside the {} examples",
                data.len()
            ));
        }
        Ok(Self {
            epochs: ShuffledEpochs::new(train.len(), config.seed),
            data: Box::new(data),
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
        let [c, h, w] = self.data.latent_shape();
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

    fn loss(&mut self, model: &UNet2DConditionModel, batch: &DiffusionBatch) -> Result<Tensor<1>> {
        let b = batch.idx.len();
        let [c, h, w] = self.data.latent_shape();
        let (latents, mut embeds) = self.data.batch(&batch.idx, &self.device)?;
        if batch.dropped.iter().any(|&d| d) {
            let keep: Vec<f32> = batch
                .dropped
                .iter()
                .map(|&d| if d { 0.0 } else { 1.0 })
                .collect();
            embeds =
                embeds * Tensor::<3>::from_data(TensorData::new(keep, [b, 1, 1]), &self.device);
        }
        Ok(diffusion_loss(
            model,
            &self.scheduler,
            latents,
            Tensor::<4>::from_data(
                TensorData::new(batch.noise.clone(), [b, c, h, w]),
                &self.device,
            ),
            &batch.timesteps,
            embeds,
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
