//! Image classification on kiln-models' classifiers ([`ImageClassifier`]) over a
//! [`kiln_data::images::ImageSet`], with what continual learning needs around it: the examples'
//! ids (indices into the set), a [`ReplaySource`] and a [`FisherData`] over the same sets, and an
//! evaluation of any model on any set.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_data::images::ImageSet;
use kiln_models::vision::ImageClassifier;
use serde_json::Value;

use super::ShuffledEpochs;
use crate::algorithms::{FisherData, MemoryEntry, ReplaySource};
use crate::error::{Error, Result};
use crate::step::{Predictions, StepOutput};
use crate::trainer::{BatchSize, DataSize, TrainState, TrainTask};

/// Images `indices` of `set` as a `[B, C, H, W]` tensor and their labels.
pub fn image_batch(
    set: &ImageSet,
    indices: &[usize],
    device: &Device,
) -> (Tensor<4>, Tensor<1, Int>) {
    let mut pixels = Vec::with_capacity(indices.len() * set.image_len());
    for &i in indices {
        pixels.extend_from_slice(set.image(i));
    }
    let images = Tensor::<4>::from_data(
        TensorData::new(pixels, [indices.len(), set.channels, set.height, set.width]),
        device,
    );
    let labels: Vec<i64> = indices.iter().map(|&i| i64::from(set.label(i))).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [indices.len()]), device);
    (images, labels)
}

fn check_fit(model: &ImageClassifier, set: &ImageSet) -> Result<()> {
    let shape = [set.channels, set.height, set.width];
    if shape != model.input || set.classes > model.classes {
        return Err(Error::Config {
            message: format!(
                "image set `{}` has {}×{}×{} images of {} classes; the classifier takes {}×{}×{} and {} classes",
                set.name,
                shape[0],
                shape[1],
                shape[2],
                set.classes,
                model.input[0],
                model.input[1],
                model.input[2],
                model.classes
            ),
        });
    }
    Ok(())
}

/// Accuracy and mean cross-entropy (nats) of `model` in evaluation mode on images `indices` of
/// `set`, in batches of `batch_size`.
///
/// # Errors
/// [`Error::Config`] when the set does not fit the classifier or there is nothing to evaluate.
pub fn evaluate_images(
    model: &ImageClassifier,
    set: &ImageSet,
    indices: &[usize],
    batch_size: usize,
) -> Result<(f64, f64)> {
    check_fit(model, set)?;
    if indices.is_empty() || batch_size == 0 {
        return Err(Error::Config {
            message: format!(
                "evaluation on `{}`: no images or a zero batch size",
                set.name
            ),
        });
    }
    let valid = model.valid();
    let device = valid_device(&valid);
    let (mut correct, mut nll) = (0usize, 0.0f64);
    for chunk in indices.chunks(batch_size) {
        let (x, _) = image_batch(set, chunk, &device);
        let logits = valid.forward(x)?;
        let c = logits.dims()[1];
        let v = logits
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        for (row, &i) in v.chunks(c).zip(chunk) {
            let label = set.label(i) as usize;
            let arg = row
                .iter()
                .enumerate()
                .fold(0, |best, (k, &x)| if x > row[best] { k } else { best });
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = f64::from(max)
                + row
                    .iter()
                    .map(|&x| f64::from(x - max).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - f64::from(row[label]);
            correct += usize::from(arg == label);
        }
    }
    let n = indices.len() as f64;
    Ok((correct as f64 / n, nll / n))
}

/// The device of a model's first parameter (the flex CPU device for a model without any).
fn valid_device(model: &ImageClassifier) -> Device {
    crate::params::float_params(model)
        .first()
        .map_or_else(Device::flex, |(_, t)| t.device())
}

/// Image classification: shuffled epochs over images `train` of a set, mean cross-entropy,
/// `accuracy` and `loss` on images `eval`. Example ids are indices into the set.
pub struct ImageClassificationTask {
    set: Arc<ImageSet>,
    train: Vec<usize>,
    eval: Vec<usize>,
    batch_size: usize,
    device: Device,
    epochs: ShuffledEpochs,
    checked: bool,
}

impl ImageClassificationTask {
    /// A task training on images `train` of `set` and evaluating on images `eval`.
    ///
    /// # Errors
    /// [`Error::Config`] for empty index lists, indices outside the set or a zero batch size.
    pub fn new(
        set: Arc<ImageSet>,
        train: Vec<usize>,
        eval: Vec<usize>,
        batch_size: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if train.is_empty() || eval.is_empty() || batch_size == 0 {
            return Err(Error::Config {
                message: format!(
                    "image task on `{}`: the training and evaluation images and the batch size must not be empty",
                    set.name
                ),
            });
        }
        if let Some(&i) = train.iter().chain(&eval).find(|&&i| i >= set.len()) {
            return Err(Error::Config {
                message: format!(
                    "image task: index {i} is outside `{}` ({} images)",
                    set.name,
                    set.len()
                ),
            });
        }
        Ok(Self {
            epochs: ShuffledEpochs::new(train.len(), seed),
            set,
            train,
            eval,
            batch_size,
            device: device.clone(),
            checked: false,
        })
    }
}

impl TrainTask<ImageClassifier> for ImageClassificationTask {
    type Batch = Vec<usize>;

    fn data_size(&self) -> DataSize {
        self.epochs.data_size(self.batch_size)
    }

    fn next_batch(
        &mut self,
        _: &TrainState,
        _: usize,
        _: usize,
    ) -> Result<(Vec<usize>, BatchSize)> {
        let idx: Vec<usize> = self
            .epochs
            .take(self.batch_size)
            .into_iter()
            .map(|k| self.train[k])
            .collect();
        Ok((
            idx,
            BatchSize {
                samples: self.batch_size as u64,
                tokens: 0,
            },
        ))
    }

    /// The mean cross-entropy, per-example losses, logits with labels and the images' indices
    /// in the set.
    fn forward(&mut self, model: &ImageClassifier, idx: Vec<usize>) -> Result<StepOutput> {
        if !self.checked {
            check_fit(model, &self.set)?;
            self.checked = true;
        }
        let (x, labels) = image_batch(&self.set, &idx, &self.device);
        let logits = model.forward(x)?;
        let nll = kiln_models::cpu::nll_rows(logits.clone(), labels.clone());
        Ok(StepOutput::new(nll.clone().mean())
            .with_per_example_loss(nll)
            .with_predictions(Predictions::per_example(logits, labels))
            .with_example_ids(idx.iter().map(|&i| i as u64).collect()))
    }

    fn evaluate(
        &mut self,
        model: &ImageClassifier,
        _: &TrainState,
    ) -> Result<BTreeMap<String, f64>> {
        let (acc, loss) = evaluate_images(model, &self.set, &self.eval, self.batch_size.max(64))?;
        Ok(BTreeMap::from([
            ("accuracy".to_owned(), acc),
            ("loss".to_owned(), loss),
        ]))
    }

    fn data_state(&self) -> Value {
        self.epochs.state()
    }

    fn restore_data_state(&mut self, state: &Value) -> Result<()> {
        self.epochs.restore(state)
    }
}

/// Re-reads remembered images for [`Replay`](crate::algorithms::Replay): task k's ids are
/// indices into `sets[k]`.
pub struct ImageReplaySource {
    sets: Vec<Arc<ImageSet>>,
    device: Device,
}

impl ImageReplaySource {
    /// Task k's images come from `sets[k]`, batches are built on `device` (the training one).
    pub fn new(sets: Vec<Arc<ImageSet>>, device: &Device) -> Self {
        Self {
            sets,
            device: device.clone(),
        }
    }
}

impl ReplaySource<ImageClassifier> for ImageReplaySource {
    fn loss(
        &mut self,
        model: &ImageClassifier,
        examples: &[MemoryEntry],
    ) -> std::result::Result<Tensor<1>, String> {
        let mut losses = Vec::new();
        // one batch per task (each task's images live in its own set)
        let mut by_task: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for &(t, id) in examples {
            by_task.entry(t).or_default().push(id as usize);
        }
        for (t, ids) in by_task {
            let set = self.sets.get(t as usize).ok_or_else(|| {
                format!(
                    "replay: no image set for task {t} ({} given)",
                    self.sets.len()
                )
            })?;
            if let Some(&i) = ids.iter().find(|&&i| i >= set.len()) {
                return Err(format!(
                    "replay: id {i} is outside `{}` ({} images)",
                    set.name,
                    set.len()
                ));
            }
            let (x, labels) = image_batch(set, &ids, &self.device);
            let logits = model.forward(x).map_err(|e| e.to_string())?;
            losses.push(kiln_models::cpu::nll_rows(logits, labels));
        }
        Ok(Tensor::cat(losses, 0).mean())
    }
}

/// Images of a set for an EWC Fisher ([`FisherData`]): one logits row per image.
pub struct ImageFisherData {
    set: Arc<ImageSet>,
    indices: Vec<usize>,
    device: Device,
}

impl ImageFisherData {
    /// Images `indices` of `set`, batched on `device` (the training one).
    pub fn new(set: Arc<ImageSet>, indices: Vec<usize>, device: &Device) -> Self {
        Self {
            set,
            indices,
            device: device.clone(),
        }
    }
}

impl FisherData<ImageClassifier> for ImageFisherData {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn forward(
        &mut self,
        model: &ImageClassifier,
        r: Range<usize>,
    ) -> std::result::Result<(Tensor<2>, Vec<i64>), String> {
        let idx = &self.indices[r];
        let (x, _) = image_batch(&self.set, idx, &self.device);
        let logits = model.forward(x).map_err(|e| e.to_string())?;
        Ok((
            logits,
            idx.iter().map(|&i| i64::from(self.set.label(i))).collect(),
        ))
    }
}
