//! What the trainer and its algorithms exchange: a task's step output, the run's resolved size,
//! and the tensors an algorithm checkpoints.
//!
//! A task's forward pass returns a [`StepOutput`]. Only the loss is required — a task that has
//! nothing else writes `Ok(loss.into())` — and the rest is what plug-ins read at
//! [`Event::AfterForward`](crate::Event) and [`Event::AfterLoss`](crate::Event): distillation
//! reads the student's [`Predictions`] and, for a live teacher, the [`ModelInputs`]; difficulty
//! scores read the per-example losses, the predictions and the example ids. burn's
//! `ClassificationOutput` is the precedent (loss, output, targets); kiln adds per-example losses,
//! the inputs and dataset ids, and supports token-level heads whose rows are not one per example.

use std::collections::BTreeMap;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use kiln_schedules::{Duration, RunSize};

use crate::error::{Error, Result};

/// Label value of rows that are not scored (transformers' `-100`).
pub const IGNORE_INDEX: i64 = -100;

/// What a task's forward pass produced for one micro-batch.
///
/// ```
/// use kiln_train::burn::tensor::{Device, Int, Tensor};
/// use kiln_train::{Predictions, StepOutput};
///
/// let d = Device::flex();
/// let logits = Tensor::<2>::from_floats([[2.0, 0.5], [0.1, 1.0]], &d);
/// let labels = Tensor::<1, Int>::from_ints([0, 1], &d);
/// let loss = Tensor::<1>::from_floats([0.3], &d);
/// // The common case: a loss and nothing else.
/// let plain: StepOutput = loss.clone().into();
/// assert!(plain.predictions.is_none());
/// // A classifier that also hands out its logits and dataset ids.
/// let out = StepOutput::new(loss)
///     .with_predictions(Predictions::per_example(logits, labels))
///     .with_example_ids(vec![17, 4]);
/// assert_eq!(out.predictions.unwrap().example_of_row, [0, 1]);
/// ```
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The loss to minimise, `[1]` on the model's (autodiff) device. Algorithms may replace it
    /// at `AfterLoss` (penalties, distillation terms).
    pub loss: Tensor<1>,
    /// The loss of each example of the micro-batch before the reduction, `[B]`.
    pub per_example_loss: Option<Tensor<1>>,
    /// Logits with their targets.
    pub predictions: Option<Predictions>,
    /// The model's inputs (to run a teacher on the same batch).
    pub inputs: Option<ModelInputs>,
    /// Dataset index of each example of the micro-batch, `[B]`: stable under shuffling, packing
    /// and resume, so per-example statistics land on the right example.
    pub example_ids: Option<Vec<u64>>,
}

impl From<Tensor<1>> for StepOutput {
    fn from(loss: Tensor<1>) -> Self {
        Self::new(loss)
    }
}

impl StepOutput {
    /// A step output holding only `loss`.
    pub fn new(loss: Tensor<1>) -> Self {
        Self {
            loss,
            per_example_loss: None,
            predictions: None,
            inputs: None,
            example_ids: None,
        }
    }

    /// With per-example losses `[B]`.
    #[must_use]
    pub fn with_per_example_loss(mut self, losses: Tensor<1>) -> Self {
        self.per_example_loss = Some(losses);
        self
    }

    /// With logits and targets.
    #[must_use]
    pub fn with_predictions(mut self, predictions: Predictions) -> Self {
        self.predictions = Some(predictions);
        self
    }

    /// With the model's inputs.
    #[must_use]
    pub fn with_inputs(mut self, inputs: ModelInputs) -> Self {
        self.inputs = Some(inputs);
        self
    }

    /// With the examples' dataset ids.
    #[must_use]
    pub fn with_example_ids(mut self, ids: Vec<u64>) -> Self {
        self.example_ids = Some(ids);
        self
    }
}

/// Logits rows and their targets. A classifier has one row per example; a token-level head one
/// row per scored token (all of them, or only the masked ones), so each row names its example.
#[derive(Debug, Clone)]
pub struct Predictions {
    /// `[N, C]` logits.
    pub logits: Tensor<2>,
    /// `[N]` class targets, [`IGNORE_INDEX`] where a row is not scored.
    pub targets: Tensor<1, Int>,
    /// `[N]`: the micro-batch row (example) each logits row belongs to.
    pub example_of_row: Vec<usize>,
    /// `[N]`, where a micro-batch row packs several data-set documents: the document each
    /// logits row's target belongs to (per-document statistics use it instead of
    /// `example_ids[example_of_row[r]]`). `None`: one example per micro-batch row.
    pub documents: Option<Vec<u64>>,
}

impl Predictions {
    /// One row per example: `logits` `[B, C]`, `targets` `[B]`.
    pub fn per_example(logits: Tensor<2>, targets: Tensor<1, Int>) -> Self {
        let n = logits.dims()[0];
        Self {
            logits,
            targets,
            example_of_row: (0..n).collect(),
            documents: None,
        }
    }

    /// One row per token: `logits` `[B, L, C]`, `targets` `[B, L]` ([`IGNORE_INDEX`] where not
    /// scored), flattened to `B·L` rows.
    pub fn per_token(logits: Tensor<3>, targets: Tensor<2, Int>) -> Self {
        let [b, l, c] = logits.dims();
        Self {
            logits: logits.reshape([b * l, c]),
            targets: targets.reshape([b * l]),
            example_of_row: (0..b * l).map(|i| i / l.max(1)).collect(),
            documents: None,
        }
    }

    /// Rows chosen by the task: `logits` `[N, C]`, `targets` `[N]`, and each row's example.
    ///
    /// # Errors
    /// [`Error::Config`] if the three lengths differ.
    pub fn rows(
        logits: Tensor<2>,
        targets: Tensor<1, Int>,
        example_of_row: Vec<usize>,
    ) -> Result<Self> {
        let n = logits.dims()[0];
        if targets.dims()[0] != n || example_of_row.len() != n {
            return Err(Error::Config {
                message: format!(
                    "predictions: {n} logits rows, {} targets and {} example indices must agree",
                    targets.dims()[0],
                    example_of_row.len()
                ),
            });
        }
        Ok(Self {
            logits,
            targets,
            example_of_row,
            documents: None,
        })
    }

    /// The document of each row (see [`documents`](Self::documents)).
    ///
    /// # Errors
    /// [`Error::Config`] if there is not one document per row.
    pub fn with_documents(mut self, documents: Vec<u64>) -> Result<Self> {
        if documents.len() != self.example_of_row.len() {
            return Err(Error::Config {
                message: format!(
                    "predictions: {} documents for {} rows; give one per row",
                    documents.len(),
                    self.example_of_row.len()
                ),
            });
        }
        self.documents = Some(documents);
        Ok(self)
    }
}

/// The token inputs of a language model's micro-batch.
#[derive(Debug, Clone)]
pub struct ModelInputs {
    /// `[B, L]`.
    pub input_ids: Tensor<2, Int>,
    /// `[B, L]`, 1 for real tokens.
    pub attention_mask: Option<Tensor<2, Int>>,
    /// `[B, L]`.
    pub token_type_ids: Option<Tensor<2, Int>>,
}

/// The run's length, resolved once by the trainer and handed to the task
/// ([`TrainTask::prepare`](crate::TrainTask::prepare)) and to every algorithm (through
/// [`Context::run`](crate::Context::run)), so schedules of the data, the LR and the algorithms
/// all count the same steps.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    /// `max_duration` with the task's data sizes (steps per epoch, samples and tokens per step).
    pub size: RunSize,
    /// Optimiser steps of the whole run.
    pub total_steps: u64,
}

impl RunPlan {
    /// `duration` in steps of this run (Composer's resolution rules).
    ///
    /// # Errors
    /// [`Error::Schedule`] for a unit the run cannot resolve (`ep` without epochs, …).
    pub fn steps(&self, duration: &Duration) -> Result<f64> {
        Ok(self.size.steps(duration)?)
    }
}

/// Named tensors an algorithm checkpoints (an EMA copy, an anchor, a Fisher diagonal). They
/// are written into the training checkpoint's `algorithms.safetensors` in their own dtype and
/// come back on resume on the training device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorState(BTreeMap<String, TensorData>);

impl TensorState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `tensor` (copied to the host) under `name`.
    pub fn insert<const D: usize>(&mut self, name: impl Into<String>, tensor: Tensor<D>) {
        self.0.insert(name.into(), tensor.into_data());
    }

    /// Adds host data under `name`.
    pub fn insert_data(&mut self, name: impl Into<String>, data: TensorData) {
        self.0.insert(name.into(), data);
    }

    /// The tensor `name` on `device`, of rank `D`.
    ///
    /// # Errors
    /// A message if it is missing or has another rank.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        device: &Device,
    ) -> std::result::Result<Tensor<D>, String> {
        let data = self
            .0
            .get(name)
            .ok_or_else(|| format!("the checkpoint has no tensor `{name}`"))?;
        if data.rank() != D {
            return Err(format!(
                "tensor `{name}` has rank {}, expected {D}",
                data.rank()
            ));
        }
        Ok(Tensor::from_data(data.clone(), device))
    }

    /// The names and data, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TensorData)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// burn's dtype as a safetensors dtype, for the checkpoint file.
pub(crate) fn checkpoint_dtype(d: DType) -> Option<kiln_checkpoint::Dtype> {
    use kiln_checkpoint::Dtype as K;
    Some(match d {
        DType::F64 => K::F64,
        DType::F32 => K::F32,
        DType::F16 => K::F16,
        DType::BF16 => K::BF16,
        DType::I64 => K::I64,
        DType::I32 => K::I32,
        DType::I16 => K::I16,
        DType::I8 => K::I8,
        DType::U64 => K::U64,
        DType::U32 => K::U32,
        DType::U16 => K::U16,
        DType::U8 => K::U8,
        DType::Bool(_) => K::Bool,
        _ => return None,
    })
}

/// A safetensors dtype as burn's.
pub(crate) fn burn_dtype(d: kiln_checkpoint::Dtype) -> Option<DType> {
    use kiln_checkpoint::Dtype as K;
    Some(match d {
        K::F64 => DType::F64,
        K::F32 => DType::F32,
        K::F16 => DType::F16,
        K::BF16 => DType::BF16,
        K::I64 => DType::I64,
        K::I32 => DType::I32,
        K::I16 => DType::I16,
        K::I8 => DType::I8,
        K::U64 => DType::U64,
        K::U32 => DType::U32,
        K::U16 => DType::U16,
        K::U8 => DType::U8,
        _ => return None,
    })
}

/// Algorithm tensor states as one safetensors file: names `<algorithm>/<tensor>`.
pub(crate) fn write_states(
    path: &std::path::Path,
    states: &BTreeMap<String, TensorState>,
) -> Result<()> {
    let mut owned: Vec<(String, kiln_checkpoint::Dtype, Vec<usize>, &[u8])> = Vec::new();
    for (algo, state) in states {
        for (name, data) in state.iter() {
            let dtype = checkpoint_dtype(data.dtype()).ok_or_else(|| Error::Algorithm {
                name: algo.clone(),
                event: crate::Event::Checkpoint,
                message: format!(
                    "tensor `{name}` has dtype {:?}, which a checkpoint cannot store",
                    data.dtype()
                ),
            })?;
            owned.push((
                format!("{algo}/{name}"),
                dtype,
                data.shape().to_vec(),
                data.as_bytes(),
            ));
        }
    }
    let tensors: Vec<(&str, kiln_checkpoint::Dtype, &[usize], &[u8])> = owned
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), *b))
        .collect();
    Ok(kiln_checkpoint::write_file(
        path,
        &tensors,
        &BTreeMap::from([("format".to_owned(), "kiln-train-algorithms".to_owned())]),
    )?)
}

/// Reads what [`write_states`] wrote, by algorithm.
pub(crate) fn read_states(path: &std::path::Path) -> Result<BTreeMap<String, TensorState>> {
    let file = kiln_checkpoint::SafetensorsFile::open(path)?;
    let mut out: BTreeMap<String, TensorState> = BTreeMap::new();
    for info in &file.header().tensors {
        let (algo, name) = info.name.split_once('/').ok_or_else(|| Error::Checkpoint {
            path: path.to_owned(),
            message: format!("tensor `{}` is not named `<algorithm>/<tensor>`", info.name),
        })?;
        let view = file.tensor(&info.name).ok_or_else(|| Error::Checkpoint {
            path: path.to_owned(),
            message: format!("tensor `{}` listed but unreadable", info.name),
        })?;
        let dtype = burn_dtype(view.dtype()).ok_or_else(|| Error::Checkpoint {
            path: path.to_owned(),
            message: format!(
                "tensor `{}` has an unsupported dtype {}",
                info.name,
                view.dtype()
            ),
        })?;
        let data = TensorData::try_from_bytes_vec(view.data.to_vec(), view.shape().to_vec(), dtype)
            .map_err(|e| Error::Checkpoint {
                path: path.to_owned(),
                message: format!("tensor `{}`: {e:?}", info.name),
            })?;
        out.entry(algo.to_owned())
            .or_default()
            .insert_data(name, data);
    }
    Ok(out)
}
