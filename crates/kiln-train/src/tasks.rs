//! Ready-made tasks for kiln-models: masked-LM pretraining of (Mosaic)BERT with a masking-rate
//! schedule over a domain mixture, and sequence-classification fine-tuning.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_data::mixture::{MixtureSampler, MixtureState};
use kiln_data::mlm::{MlmBatch, MlmCollator};
use kiln_models::bert::{BertForMaskedLm, BertForSequenceClassification, SequenceLabels};
use kiln_schedules::ResolvedMasking;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::trainer::{BatchSize, DataSize, TrainState, TrainTask};

fn ints(v: &[i64], shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

fn to_f32(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// Masked-LM pretraining: sequences from a [`MixtureSampler`], masked at the rate a masking
/// schedule gives for the current step (Ankner et al.), evaluated at a fixed rate on held-out
/// batches collated once.
pub struct MlmTask {
    sampler: MixtureSampler,
    collator: MlmCollator,
    masking: ResolvedMasking,
    batch_size: usize,
    seq_len: usize,
    eval_batches: Vec<MlmBatch>,
    device: Device,
    /// Run the final layer and head on masked tokens only (MosaicBERT's shortcut).
    pub masked_only: bool,
    /// Skip padding inside the encoder (MosaicBERT's unpadding).
    pub unpad: bool,
    seed: u64,
    last_rate: f64,
}

impl MlmTask {
    /// A task drawing `batch_size` sequences of `seq_len` per micro-batch.
    ///
    /// `eval` holds held-out sequences; they are masked once at `eval_rate` (0.15 in the paper)
    /// with fixed seeds and split into batches of `batch_size`.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty evaluation set or a zero batch size; collation errors.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sampler: MixtureSampler,
        collator: MlmCollator,
        masking: ResolvedMasking,
        batch_size: usize,
        seq_len: usize,
        eval: &[Vec<u32>],
        eval_rate: f64,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if batch_size == 0 || eval.is_empty() {
            return Err(Error::Config {
                message: "MLM task: batch_size and the evaluation set must not be empty".into(),
            });
        }
        let eval_batches = eval
            .chunks(batch_size)
            .enumerate()
            .map(|(i, c)| collator.collate(c, eval_rate, 0xE7A1 + i as u64))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            sampler,
            collator,
            masking,
            batch_size,
            seq_len,
            eval_batches,
            device: device.clone(),
            masked_only: false,
            unpad: false,
            seed,
            last_rate: f64::NAN,
        })
    }

    /// The masking rate used for the last batch.
    pub fn last_rate(&self) -> f64 {
        self.last_rate
    }

    /// The sampler (per-domain statistics).
    pub fn sampler(&self) -> &MixtureSampler {
        &self.sampler
    }

    fn tensors(
        &self,
        b: &MlmBatch,
        device: &Device,
    ) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2, Int>) {
        let shape = [b.batch, b.seq_len];
        (
            ints(&b.input_ids, shape, device),
            ints(&b.attention_mask, shape, device),
            ints(&b.labels, shape, device),
        )
    }
}

impl TrainTask<BertForMaskedLm> for MlmTask {
    type Batch = MlmBatch;

    fn data_size(&self) -> DataSize {
        DataSize {
            steps_per_epoch: None,
            samples_per_step: Some(self.batch_size as u64),
            tokens_per_step: Some((self.batch_size * self.seq_len) as u64),
        }
    }

    fn next_batch(
        &mut self,
        state: &TrainState,
        micro: usize,
        micros: usize,
    ) -> Result<(MlmBatch, BatchSize)> {
        let rate = self.masking.rate(state.step as f64);
        self.last_rate = rate;
        // Slots of a step are numbered across its micro-batches.
        let seqs: Vec<Vec<u32>> = self
            .sampler
            .batch(state.step * micros as u64 + micro as u64, self.batch_size)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        let b = self
            .collator
            .collate(&seqs, rate, self.seed ^ (state.step << 8 | micro as u64))?;
        let size = BatchSize {
            samples: b.batch as u64,
            tokens: b.num_tokens() as u64,
        };
        Ok((b, size))
    }

    fn loss(&mut self, model: &BertForMaskedLm, b: MlmBatch) -> Result<Tensor<1>> {
        let (ids, mask, labels) = self.tensors(&b, &self.device);
        Ok(model.loss(ids, None, Some(mask), labels, self.unpad, self.masked_only))
    }

    fn evaluate(
        &mut self,
        model: &BertForMaskedLm,
        _: &TrainState,
    ) -> Result<BTreeMap<String, f64>> {
        let valid = model.valid();
        let device = self.device.clone().inner();
        let (mut nll, mut correct, mut n) = (0.0f64, 0usize, 0usize);
        for b in &self.eval_batches {
            let (ids, mask, _) = self.tensors(b, &device);
            let idx: Vec<i64> = b
                .labels
                .iter()
                .enumerate()
                .filter(|(_, l)| **l != kiln_data::mlm::IGNORE_INDEX)
                .map(|(i, _)| i as i64)
                .collect();
            if idx.is_empty() {
                continue;
            }
            let logits = valid.forward(ids, None, Some(mask), self.unpad);
            let v = logits.dims()[2];
            let picked = logits.reshape([b.batch * b.seq_len, v]).select(
                0,
                Tensor::<1, Int>::from_data(TensorData::new(idx.clone(), [idx.len()]), &device),
            );
            let host = to_f32(picked);
            for (row, &k) in host.chunks(v).zip(&idx) {
                let target = b.labels[k as usize] as usize;
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = max as f64
                    + row
                        .iter()
                        .map(|&x| ((x - max) as f64).exp())
                        .sum::<f64>()
                        .ln();
                nll += lse - row[target] as f64;
                let arg = row
                    .iter()
                    .enumerate()
                    .fold(0, |best, (i, &x)| if x > row[best] { i } else { best });
                correct += usize::from(arg == target);
                n += 1;
            }
        }
        let loss = nll / n.max(1) as f64;
        Ok(BTreeMap::from([
            ("mlm_loss".into(), loss),
            ("mlm_accuracy".into(), correct as f64 / n.max(1) as f64),
            ("perplexity".into(), loss.exp()),
            ("masked_tokens".into(), n as f64),
        ]))
    }

    fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::from([("masking_rate".to_owned(), self.last_rate)]);
        for (name, s) in self.sampler.stats() {
            m.insert(format!("tokens/{name}"), s.tokens as f64);
            m.insert(format!("epochs/{name}"), s.epochs);
        }
        m
    }

    fn epoch(&self) -> f64 {
        // The largest repetition among the domains.
        self.sampler
            .stats()
            .values()
            .map(|s| s.epochs)
            .fold(0.0, f64::max)
    }

    fn data_state(&self) -> Value {
        serde_json::to_value(self.sampler.state()).expect("state serialises")
    }

    fn restore_data_state(&mut self, state: &Value) -> Result<()> {
        let s: MixtureState = serde_json::from_value(state.clone()).map_err(|e| Error::Config {
            message: format!("checkpointed data state: {e}"),
        })?;
        Ok(self.sampler.restore(&s)?)
    }
}

/// One labelled sequence for classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledSequence {
    /// Token ids (with `[CLS]`/`[SEP]`).
    pub ids: Vec<u32>,
    /// Class.
    pub label: u32,
}

/// Sequence-classification fine-tuning: shuffled epochs over a training set, accuracy and
/// Matthews correlation (CoLA's metric, for two classes) on an evaluation set.
pub struct ClassificationTask {
    train: Vec<LabelledSequence>,
    eval: Vec<LabelledSequence>,
    batch_size: usize,
    pad_id: u32,
    seed: u64,
    device: Device,
    cursor: u64,
    order: (u64, Vec<u32>),
}

impl ClassificationTask {
    /// A task over `train` and `eval` with `batch_size` sequences per micro-batch.
    ///
    /// # Errors
    /// [`Error::Config`] for empty sets or a zero batch size.
    pub fn new(
        train: Vec<LabelledSequence>,
        eval: Vec<LabelledSequence>,
        batch_size: usize,
        pad_id: u32,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if train.is_empty() || eval.is_empty() || batch_size == 0 {
            return Err(Error::Config { message: "classification task: the training and evaluation sets and the batch size must not be empty".into() });
        }
        let order = (0, kiln_data::packing::permutation(train.len(), seed, 0));
        Ok(Self {
            train,
            eval,
            batch_size,
            pad_id,
            seed,
            device: device.clone(),
            cursor: 0,
            order,
        })
    }

    fn pad(
        &self,
        rows: &[&LabelledSequence],
        device: &Device,
    ) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<1, Int>) {
        let l = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1);
        let (mut ids, mut mask) = (
            vec![i64::from(self.pad_id); rows.len() * l],
            vec![0i64; rows.len() * l],
        );
        for (i, r) in rows.iter().enumerate() {
            for (j, &t) in r.ids.iter().enumerate() {
                ids[i * l + j] = i64::from(t);
                mask[i * l + j] = 1;
            }
        }
        let labels: Vec<i64> = rows.iter().map(|r| i64::from(r.label)).collect();
        (
            ints(&ids, [rows.len(), l], device),
            ints(&mask, [rows.len(), l], device),
            Tensor::from_data(TensorData::new(labels, [rows.len()]), device),
        )
    }
}

impl TrainTask<BertForSequenceClassification> for ClassificationTask {
    type Batch = Vec<usize>;

    fn data_size(&self) -> DataSize {
        DataSize {
            steps_per_epoch: Some(self.train.len().div_ceil(self.batch_size) as u64),
            samples_per_step: Some(self.batch_size as u64),
            tokens_per_step: None,
        }
    }

    fn next_batch(
        &mut self,
        _: &TrainState,
        _: usize,
        _: usize,
    ) -> Result<(Vec<usize>, BatchSize)> {
        let n = self.train.len() as u64;
        let mut idx = Vec::with_capacity(self.batch_size);
        for k in 0..self.batch_size as u64 {
            let at = self.cursor + k;
            if self.order.0 != at / n {
                self.order = (
                    at / n,
                    kiln_data::packing::permutation(self.train.len(), self.seed, at / n),
                );
            }
            idx.push(self.order.1[(at % n) as usize] as usize);
        }
        self.cursor += self.batch_size as u64;
        let tokens = idx.iter().map(|&i| self.train[i].ids.len() as u64).sum();
        Ok((
            idx,
            BatchSize {
                samples: self.batch_size as u64,
                tokens,
            },
        ))
    }

    fn loss(
        &mut self,
        model: &BertForSequenceClassification,
        idx: Vec<usize>,
    ) -> Result<Tensor<1>> {
        let rows: Vec<&LabelledSequence> = idx.iter().map(|&i| &self.train[i]).collect();
        let (ids, mask, labels) = self.pad(&rows, &self.device);
        Ok(model.loss(ids, None, Some(mask), SequenceLabels::Classes(labels)))
    }

    fn evaluate(
        &mut self,
        model: &BertForSequenceClassification,
        _: &TrainState,
    ) -> Result<BTreeMap<String, f64>> {
        let valid = model.valid();
        let device = self.device.clone().inner();
        let mut confusion = [[0u64; 2]; 2];
        let (mut correct, mut nll) = (0usize, 0.0f64);
        for chunk in self.eval.chunks(self.batch_size) {
            let rows: Vec<&LabelledSequence> = chunk.iter().collect();
            let (ids, mask, _) = self.pad(&rows, &device);
            let logits = to_f32(valid.forward(ids, None, Some(mask)));
            let c = logits.len() / rows.len();
            for (row, r) in logits.chunks(c).zip(&rows) {
                let arg = row
                    .iter()
                    .enumerate()
                    .fold(0, |best, (i, &x)| if x > row[best] { i } else { best });
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = max as f64
                    + row
                        .iter()
                        .map(|&x| ((x - max) as f64).exp())
                        .sum::<f64>()
                        .ln();
                nll += lse - row[r.label as usize] as f64;
                correct += usize::from(arg == r.label as usize);
                if c == 2 {
                    confusion[r.label as usize][arg] += 1;
                }
            }
        }
        let n = self.eval.len() as f64;
        let mut out = BTreeMap::from([
            ("accuracy".to_owned(), correct as f64 / n),
            ("loss".to_owned(), nll / n),
        ]);
        if confusion.iter().flatten().sum::<u64>() > 0 {
            out.insert("mcc".into(), mcc(confusion));
        }
        Ok(out)
    }

    fn data_state(&self) -> Value {
        serde_json::json!({"cursor": self.cursor})
    }

    fn restore_data_state(&mut self, state: &Value) -> Result<()> {
        self.cursor = state["cursor"].as_u64().ok_or_else(|| Error::Config {
            message: "checkpointed data state has no cursor".into(),
        })?;
        Ok(())
    }
}

/// Matthews correlation of a 2 × 2 confusion matrix `[truth][prediction]` (0 when undefined, as
/// scikit-learn).
pub fn mcc(c: [[u64; 2]; 2]) -> f64 {
    let (tn, fp, fn_, tp) = (
        c[0][0] as f64,
        c[0][1] as f64,
        c[1][0] as f64,
        c[1][1] as f64,
    );
    let den = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
    if den == 0.0 {
        0.0
    } else {
        (tp * tn - fp * fn_) / den
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcc_matches_its_definition() {
        assert_eq!(mcc([[5, 0], [0, 5]]), 1.0);
        assert_eq!(mcc([[0, 5], [5, 0]]), -1.0);
        assert_eq!(mcc([[5, 5], [0, 0]]), 0.0);
        // (3·4 − 2·1) / √(5·4·6·5)
        assert!((mcc([[4, 2], [1, 3]]) - 10.0 / 600f64.sqrt()).abs() < 1e-15);
    }
}
