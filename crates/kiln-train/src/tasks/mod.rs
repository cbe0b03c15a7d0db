//! Ready-made tasks for kiln-models: masked-LM pretraining of (Mosaic)BERT with a masking-rate
//! schedule over a domain mixture, sequence-classification fine-tuning, causal language
//! modelling on GPT-2 (full or LoRA fine-tuning), and image classification on kiln-models'
//! vision classifiers with the replay and Fisher sources continual learning needs.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_data::mixture::{MixtureSampler, MixtureState};
use kiln_data::mlm::{MlmBatch, MlmCollator};
use kiln_data::packing::SequenceStream;
use kiln_models::bert::{BertForMaskedLm, BertForSequenceClassification, MlmPositions, Padding};
use kiln_models::gpt2::Gpt2LmHead;
use kiln_schedules::{DataMix, MaskingSchedule, ResolvedMasking};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::step::{ModelInputs, Predictions, RunPlan, StepOutput};
use crate::trainer::{BatchSize, DataSize, TrainState, TrainTask};

mod diffusion;
pub use diffusion::{
    DiffusionBatch, EncodeEachStep, LatentSet, LatentShards, LatentSource, TextToImageConfig,
    TextToImageTask, precompute,
};
mod curriculum;
mod images;
pub mod mc;
pub use curriculum::{CurriculumLmConfig, CurriculumLmTask};
pub use images::{
    ImageClassificationTask, ImageFisherData, ImageReplaySource, evaluate_images, image_batch,
};

fn ints(v: &[i64], shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

fn to_f32(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// Settings of an [`MlmTask`].
#[derive(Debug, Clone, PartialEq)]
pub struct MlmTaskConfig {
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// The masking-rate schedule (Ankner et al.), resolved against the trainer's run length.
    pub masking: MaskingSchedule,
    /// The data mix over the domains, resolved against the trainer's run length.
    pub mix: DataMix,
    /// Masking rate of the evaluation batches (0.15 in the paper).
    pub eval_rate: f64,
    /// Seed of the sampler and of the masking.
    pub seed: u64,
    /// Where the MLM head runs ([`MlmPositions::MaskedOnly`]: MosaicBERT's shortcut).
    pub positions: MlmPositions,
    /// How the encoder treats padding ([`Padding::Unpadded`]: MosaicBERT's unpadding).
    pub padding: Padding,
}

impl MlmTaskConfig {
    /// `batch_size` sequences of `seq_len` tokens, masked by `masking`, drawn from `mix`;
    /// evaluation at 15%, seed 0, every position, padded.
    pub fn new(batch_size: usize, seq_len: usize, masking: MaskingSchedule, mix: DataMix) -> Self {
        Self {
            batch_size,
            seq_len,
            masking,
            mix,
            eval_rate: 0.15,
            seed: 0,
            positions: MlmPositions::All,
            padding: Padding::Padded,
        }
    }
}

/// Masked-LM pretraining: sequences from a mixture of domain streams, masked at the rate a
/// masking schedule gives for the current step (Ankner et al.), evaluated at a fixed rate on
/// held-out batches collated once. The masking schedule and the data mix are resolved in
/// [`TrainTask::prepare`], against the run length the trainer resolved.
pub struct MlmTask {
    streams: BTreeMap<String, SequenceStream>,
    sampler: Option<MixtureSampler>,
    collator: MlmCollator,
    masking: Option<ResolvedMasking>,
    config: MlmTaskConfig,
    eval_batches: Vec<MlmBatch>,
    device: Device,
    last_rate: f64,
}

impl MlmTask {
    /// A task over `streams` (one per domain of `config.mix`).
    ///
    /// `eval` holds held-out sequences; they are masked once at `config.eval_rate` with fixed
    /// seeds and split into batches of `config.batch_size`.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty evaluation set, a zero batch size or sequence length;
    /// collation errors.
    pub fn new(
        streams: BTreeMap<String, SequenceStream>,
        collator: MlmCollator,
        eval: &[Vec<u32>],
        config: MlmTaskConfig,
        device: &Device,
    ) -> Result<Self> {
        if config.batch_size == 0 || config.seq_len == 0 || eval.is_empty() {
            return Err(Error::Config {
                message: "MLM task: batch_size, seq_len and the evaluation set must not be empty"
                    .into(),
            });
        }
        let eval_batches = eval
            .chunks(config.batch_size)
            .enumerate()
            .map(|(i, c)| collator.collate(c, config.eval_rate, 0xE7A1 + i as u64))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            streams,
            sampler: None,
            collator,
            masking: None,
            config,
            eval_batches,
            device: device.clone(),
            last_rate: f64::NAN,
        })
    }

    /// The masking rate used for the last batch.
    pub fn last_rate(&self) -> f64 {
        self.last_rate
    }

    /// The sampler (per-domain statistics), once the run is prepared.
    pub fn sampler(&self) -> Option<&MixtureSampler> {
        self.sampler.as_ref()
    }

    fn prepared(&mut self) -> Result<(&mut MixtureSampler, &ResolvedMasking)> {
        match (self.sampler.as_mut(), self.masking.as_ref()) {
            (Some(s), Some(m)) => Ok((s, m)),
            _ => Err(Error::Config {
                message: "MLM task used before the trainer prepared it (TrainTask::prepare)".into(),
            }),
        }
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
            samples_per_step: Some(self.config.batch_size as u64),
            tokens_per_step: Some((self.config.batch_size * self.config.seq_len) as u64),
        }
    }

    fn prepare(&mut self, run: &RunPlan) -> Result<()> {
        self.masking = Some(self.config.masking.resolve(&run.size)?);
        let mix = self.config.mix.resolve(&run.size)?;
        self.sampler = Some(MixtureSampler::new(
            self.streams.clone(),
            mix,
            self.config.seed,
        )?);
        Ok(())
    }

    fn next_batch(
        &mut self,
        state: &TrainState,
        micro: usize,
        micros: usize,
    ) -> Result<(MlmBatch, BatchSize)> {
        let (batch_size, seed) = (self.config.batch_size, self.config.seed);
        let (sampler, masking) = self.prepared()?;
        let rate = masking.rate(state.step as f64);
        // Slots of a step are numbered across its micro-batches.
        let seqs: Vec<Vec<u32>> = sampler
            .batch(state.step * micros as u64 + micro as u64, batch_size)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        self.last_rate = rate;
        let b = self
            .collator
            .collate(&seqs, rate, seed ^ (state.step << 8 | micro as u64))?;
        let size = BatchSize {
            samples: b.batch as u64,
            tokens: b.num_tokens() as u64,
        };
        Ok((b, size))
    }

    /// The loss, the logits of the positions the head ran on (every position, or the masked ones)
    /// with their targets and rows, and the inputs. Sequences come from an endless mixture of
    /// streams, so there are no dataset example ids.
    fn forward(&mut self, model: &BertForMaskedLm, b: MlmBatch) -> Result<StepOutput> {
        let (ids, mask, labels) = self.tensors(&b, &self.device);
        let (loss, logits, targets) = model.loss_with_logits(
            ids.clone(),
            None,
            Some(mask.clone()),
            labels,
            self.config.padding,
            self.config.positions,
        );
        let rows: Vec<usize> = match self.config.positions {
            MlmPositions::MaskedOnly => b
                .labels
                .iter()
                .enumerate()
                .filter(|(_, l)| **l != kiln_data::mlm::IGNORE_INDEX)
                .map(|(i, _)| i / b.seq_len)
                .collect(),
            MlmPositions::All => (0..b.batch * b.seq_len).map(|i| i / b.seq_len).collect(),
        };
        Ok(StepOutput::new(loss)
            .with_predictions(Predictions::rows(logits, targets, rows)?)
            .with_inputs(ModelInputs {
                input_ids: ids,
                attention_mask: Some(mask),
                token_type_ids: None,
            }))
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
            let logits = valid.forward(ids, None, Some(mask), self.config.padding);
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
        if let Some(sampler) = &self.sampler {
            for (name, s) in sampler.stats() {
                m.insert(format!("tokens/{name}"), s.tokens as f64);
                m.insert(format!("epochs/{name}"), s.epochs);
            }
        }
        m
    }

    fn epoch(&self) -> f64 {
        // The largest repetition among the domains.
        self.sampler.as_ref().map_or(0.0, |s| {
            s.stats().values().map(|s| s.epochs).fold(0.0, f64::max)
        })
    }

    fn data_state(&self) -> Value {
        self.sampler.as_ref().map_or(Value::Null, |s| {
            serde_json::to_value(s.state()).expect("state serialises")
        })
    }

    fn restore_data_state(&mut self, state: &Value) -> Result<()> {
        let s: MixtureState = serde_json::from_value(state.clone()).map_err(|e| Error::Config {
            message: format!("checkpointed data state: {e}"),
        })?;
        let (sampler, _) = self.prepared()?;
        Ok(sampler.restore(&s)?)
    }
}

/// Shuffled epochs over `len` examples: a cursor counting examples handed out, each epoch in a
/// permutation drawn from `(seed, epoch)` — so a checkpointed cursor resumes the same order.
pub(crate) struct ShuffledEpochs {
    len: usize,
    seed: u64,
    cursor: u64,
    order: (u64, Vec<u32>),
}

impl ShuffledEpochs {
    pub(crate) fn new(len: usize, seed: u64) -> Self {
        Self {
            len,
            seed,
            cursor: 0,
            order: (0, kiln_data::packing::permutation(len, seed, 0)),
        }
    }

    /// The next `k` example indices.
    pub(crate) fn take(&mut self, k: usize) -> Vec<usize> {
        let n = self.len as u64;
        let mut idx = Vec::with_capacity(k);
        for j in 0..k as u64 {
            let at = self.cursor + j;
            if self.order.0 != at / n {
                self.order = (
                    at / n,
                    kiln_data::packing::permutation(self.len, self.seed, at / n),
                );
            }
            idx.push(self.order.1[(at % n) as usize] as usize);
        }
        self.cursor += k as u64;
        idx
    }

    /// Sizes for duration resolution at `batch` examples per step.
    pub(crate) fn data_size(&self, batch: usize) -> DataSize {
        DataSize {
            steps_per_epoch: Some(self.len.div_ceil(batch) as u64),
            samples_per_step: Some(batch as u64),
            tokens_per_step: None,
        }
    }

    pub(crate) fn state(&self) -> Value {
        serde_json::json!({"cursor": self.cursor})
    }

    pub(crate) fn restore(&mut self, state: &Value) -> Result<()> {
        self.cursor = state["cursor"].as_u64().ok_or_else(|| Error::Config {
            message: "checkpointed data state has no cursor".into(),
        })?;
        Ok(())
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
    device: Device,
    epochs: ShuffledEpochs,
    checked: bool,
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
        Ok(Self {
            epochs: ShuffledEpochs::new(train.len(), seed),
            train,
            eval,
            batch_size,
            pad_id,
            device: device.clone(),
            checked: false,
        })
    }

    /// Checks every sequence against the model once: token ids below `vocab_size`, lengths
    /// within the learned positions, labels below the number of outputs, the pad id in the
    /// vocabulary — so bad data is an error naming the example, not a panic inside burn.
    fn check(&mut self, model: &BertForSequenceClassification) -> Result<()> {
        if self.checked {
            return Ok(());
        }
        let c = &model.bert.bert.config;
        // `lazy_shape`: reading a parameter's dims would draw a fresh model's lazy
        // initialisation now, in another order than its first forward pass does.
        let labels = model.classifier.weight.lazy_shape()[1];
        let positions = (!c.uses_alibi()).then_some(c.max_position_embeddings);
        let bad = |message: String| Err(Error::Config { message });
        if self.pad_id as usize >= c.vocab_size {
            return bad(format!(
                "classification task: pad id {} is outside the model's vocabulary (vocab_size {})",
                self.pad_id, c.vocab_size
            ));
        }
        for (set, examples) in [("training", &self.train), ("evaluation", &self.eval)] {
            for (i, e) in examples.iter().enumerate() {
                if e.ids.is_empty() {
                    return bad(format!("{set} example {i} has no tokens"));
                }
                if let Some(&t) = e.ids.iter().find(|&&t| t as usize >= c.vocab_size) {
                    return bad(format!(
                        "{set} example {i}: token id {t} is outside the model's vocabulary (vocab_size {})",
                        c.vocab_size
                    ));
                }
                if let Some(p) = positions
                    && e.ids.len() > p
                {
                    return bad(format!(
                        "{set} example {i} has {} tokens, more than the model's {p} positions (max_position_embeddings); truncate it",
                        e.ids.len()
                    ));
                }
                if e.label as usize >= labels {
                    return bad(format!(
                        "{set} example {i} has label {}, but the classifier has {labels} outputs (labels 0..{labels})",
                        e.label
                    ));
                }
            }
        }
        self.checked = true;
        Ok(())
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
        self.epochs.data_size(self.batch_size)
    }

    fn next_batch(
        &mut self,
        _: &TrainState,
        _: usize,
        _: usize,
    ) -> Result<(Vec<usize>, BatchSize)> {
        let idx = self.epochs.take(self.batch_size);
        let tokens = idx.iter().map(|&i| self.train[i].ids.len() as u64).sum();
        Ok((
            idx,
            BatchSize {
                samples: self.batch_size as u64,
                tokens,
            },
        ))
    }

    /// The mean cross-entropy, the per-example losses, the logits with their labels, the inputs
    /// and the examples' indices in the training set.
    fn forward(
        &mut self,
        model: &BertForSequenceClassification,
        idx: Vec<usize>,
    ) -> Result<StepOutput> {
        self.check(model)?;
        let rows: Vec<&LabelledSequence> = idx.iter().map(|&i| &self.train[i]).collect();
        let (ids, mask, labels) = self.pad(&rows, &self.device);
        let logits = model.forward(ids.clone(), None, Some(mask.clone()));
        // Per-example negative log-likelihoods (fused with their gradient on flex).
        let nll = kiln_models::cpu::nll_rows(logits.clone(), labels.clone());
        Ok(StepOutput::new(nll.clone().mean())
            .with_per_example_loss(nll)
            .with_predictions(Predictions::per_example(logits, labels))
            .with_inputs(ModelInputs {
                input_ids: ids,
                attention_mask: Some(mask),
                token_type_ids: None,
            })
            .with_example_ids(idx.iter().map(|&i| i as u64).collect()))
    }

    fn evaluate(
        &mut self,
        model: &BertForSequenceClassification,
        _: &TrainState,
    ) -> Result<BTreeMap<String, f64>> {
        self.check(model)?;
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
        self.epochs.state()
    }

    fn restore_data_state(&mut self, state: &Value) -> Result<()> {
        self.epochs.restore(state)
    }
}

/// Causal language modelling on a GPT-2 (`Gpt2LmHead`): shuffled epochs over token sequences,
/// mean next-token cross-entropy (padding of shorter rows masked), and the same loss with its
/// perplexity on an evaluation set — fine-tuning and the "learns / forgets" losses of LoRA
/// studies.
pub struct CausalLmTask {
    train: Vec<Vec<u32>>,
    /// Per training sequence, the data-set document of each token (packed data).
    documents: Option<Vec<Vec<u32>>>,
    eval: Vec<Vec<u32>>,
    /// Further named evaluation sets (`{name}_loss`, `{name}_perplexity`).
    extra_eval: Vec<(String, Vec<Vec<u32>>)>,
    batch_size: usize,
    device: Device,
    epochs: ShuffledEpochs,
    checked: bool,
}

impl CausalLmTask {
    /// A task over `train` and `eval` sequences with `batch_size` sequences per micro-batch.
    ///
    /// # Errors
    /// [`Error::Config`] for empty sets, a zero batch size or a sequence of fewer than 2 tokens.
    pub fn new(
        train: Vec<Vec<u32>>,
        eval: Vec<Vec<u32>>,
        batch_size: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let bad = |message: String| Err(Error::Config { message });
        if train.is_empty() || eval.is_empty() || batch_size == 0 {
            return bad("causal LM task: the training and evaluation sets and the batch size must not be empty".into());
        }
        for (set, seqs) in [("training", &train), ("evaluation", &eval)] {
            if let Some(i) = seqs.iter().position(|s| s.len() < 2) {
                return bad(format!(
                    "causal LM task: {set} sequence {i} has fewer than 2 tokens (nothing to predict)"
                ));
            }
        }
        Ok(Self {
            epochs: ShuffledEpochs::new(train.len(), seed),
            train,
            documents: None,
            eval,
            extra_eval: Vec::new(),
            batch_size,
            device: device.clone(),
            checked: false,
        })
    }

    /// For packed training sequences: the data-set document of every token of every training
    /// sequence (kiln-data's [`PackedSequences::documents`](kiln_data::packing::PackedSequences::documents)).
    /// The step output's predictions then name the document of each row's target token, so
    /// per-example statistics (difficulty scores) land on documents rather than on sequences;
    /// `example_ids` stay the sequences' indices (what a logit cache is keyed on).
    ///
    /// # Errors
    /// [`Error::Config`] unless there is one list per training sequence, as long as it.
    pub fn with_documents(mut self, documents: Vec<Vec<u32>>) -> Result<Self> {
        if documents.len() != self.train.len() {
            return Err(Error::Config {
                message: format!(
                    "causal LM task: documents for {} sequences, {} training sequences",
                    documents.len(),
                    self.train.len()
                ),
            });
        }
        if let Some(i) = (0..documents.len()).find(|&i| documents[i].len() != self.train[i].len()) {
            return Err(Error::Config {
                message: format!(
                    "causal LM task: training sequence {i} has {} tokens and {} document labels",
                    self.train[i].len(),
                    documents[i].len()
                ),
            });
        }
        self.documents = Some(documents);
        Ok(self)
    }

    /// Adds a named evaluation set, evaluated beside the main one and reported as
    /// `{name}_loss` and `{name}_perplexity`: the source domain's loss while fine-tuning on a
    /// target domain (what a fine-tune "forgets"), a second held-out domain…
    ///
    /// # Errors
    /// [`Error::Config`] for an empty set, a sequence of fewer than 2 tokens, a name that is empty,
    /// not `[A-Za-z0-9_]`, or already used.
    pub fn with_eval_set(mut self, name: &str, seqs: Vec<Vec<u32>>) -> Result<Self> {
        let bad = |message: String| Err(Error::Config { message });
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return bad(format!(
                "causal LM task: evaluation set name `{name}` must be non-empty letters, digits or `_` (it prefixes metric names)"
            ));
        }
        if self.extra_eval.iter().any(|(n, _)| n == name) {
            return bad(format!(
                "causal LM task: evaluation set `{name}` was added twice"
            ));
        }
        if seqs.is_empty() {
            return bad(format!("causal LM task: evaluation set `{name}` is empty"));
        }
        if let Some(i) = seqs.iter().position(|s| s.len() < 2) {
            return bad(format!(
                "causal LM task: evaluation set `{name}`, sequence {i} has fewer than 2 tokens (nothing to predict)"
            ));
        }
        self.extra_eval.push((name.to_owned(), seqs));
        self.checked = false;
        Ok(self)
    }

    fn eval_loss(&self, valid: &Gpt2LmHead, seqs: &[Vec<u32>], device: &Device) -> f64 {
        lm_eval_loss(valid, seqs, self.batch_size, device)
    }

    /// Token ids below `vocab_size`, lengths within `n_positions`: checked once, naming the
    /// sequence.
    fn check(&mut self, model: &Gpt2LmHead) -> Result<()> {
        if self.checked {
            return Ok(());
        }
        let sets = [("training", &self.train), ("evaluation", &self.eval)]
            .into_iter()
            .map(|(n, s)| (n.to_owned(), s))
            .chain(
                self.extra_eval
                    .iter()
                    .map(|(n, s)| (format!("evaluation set `{n}`"), s)),
            );
        check_lm_sets(model, sets)?;
        self.checked = true;
        Ok(())
    }

    fn pad(rows: &[&Vec<u32>], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        pad_rows(rows, device)
    }
}

/// The mean next-token cross-entropy per predicted token over `seqs` (batches of
/// `batch_size`), in nats.
fn lm_eval_loss(valid: &Gpt2LmHead, seqs: &[Vec<u32>], batch_size: usize, device: &Device) -> f64 {
    let (mut sum, mut count) = (0.0f64, 0.0f64);
    for chunk in seqs.chunks(batch_size) {
        let rows: Vec<&Vec<u32>> = chunk.iter().collect();
        let (ids, mask) = pad_rows(&rows, device);
        let targets: f64 = rows.iter().map(|r| (r.len() - 1) as f64).sum();
        let loss = valid.loss(ids, Some(mask)).into_scalar::<f32>() as f64;
        sum += loss * targets;
        count += targets;
    }
    sum / count
}

/// Token ids below `vocab_size`, lengths within `n_positions`, naming the set and sequence.
fn check_lm_sets<'a>(
    model: &Gpt2LmHead,
    sets: impl IntoIterator<Item = (String, &'a Vec<Vec<u32>>)>,
) -> Result<()> {
    let c = &model.transformer.config;
    for (set, seqs) in sets {
        for (i, s) in seqs.iter().enumerate() {
            if let Some(&t) = s.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(Error::Config {
                    message: format!(
                        "{set} sequence {i}: token id {t} is outside the model's vocabulary (vocab_size {})",
                        c.vocab_size
                    ),
                });
            }
            if s.len() > c.n_positions {
                return Err(Error::Config {
                    message: format!(
                        "{set} sequence {i} has {} tokens, more than the model's {} positions (n_positions); split it",
                        s.len(),
                        c.n_positions
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Right-pads rows with 0 into ids and an attention mask.
fn pad_rows(rows: &[&Vec<u32>], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let l = rows.iter().map(|r| r.len()).max().unwrap_or(2);
    let (mut ids, mut mask) = (vec![0i64; rows.len() * l], vec![0i64; rows.len() * l]);
    for (i, r) in rows.iter().enumerate() {
        for (j, &t) in r.iter().enumerate() {
            ids[i * l + j] = i64::from(t);
            mask[i * l + j] = 1;
        }
    }
    (
        ints(&ids, [rows.len(), l], device),
        ints(&mask, [rows.len(), l], device),
    )
}

impl TrainTask<Gpt2LmHead> for CausalLmTask {
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
        let idx = self.epochs.take(self.batch_size);
        let tokens = idx.iter().map(|&i| self.train[i].len() as u64).sum();
        Ok((
            idx,
            BatchSize {
                samples: self.batch_size as u64,
                tokens,
            },
        ))
    }

    /// The mean next-token cross-entropy over real targets, the next-token logits with their
    /// targets (row `b·(L−1) + i` predicts token `i + 1` of sequence `b`; padding targets are
    /// [`IGNORE_INDEX`](crate::IGNORE_INDEX)), the inputs and the sequences' indices.
    fn forward(&mut self, model: &Gpt2LmHead, idx: Vec<usize>) -> Result<StepOutput> {
        self.check(model)?;
        let rows: Vec<&Vec<u32>> = idx.iter().map(|&i| &self.train[i]).collect();
        let (ids, mask) = Self::pad(&rows, &self.device);
        let (loss, logits, targets) = model.loss_with_logits(ids.clone(), Some(mask.clone()));
        let per_seq = ids.dims()[1] - 1;
        let example_of_row: Vec<usize> = (0..logits.dims()[0]).map(|r| r / per_seq).collect();
        let mut predictions = Predictions::rows(logits, targets, example_of_row)?;
        if let Some(docs) = &self.documents {
            // row b·(L−1) + i predicts token i + 1 of sequence b (padding rows: its last token's)
            let owners = (0..idx.len() * per_seq)
                .map(|r| {
                    let d = &docs[idx[r / per_seq]];
                    u64::from(d[(r % per_seq + 1).min(d.len() - 1)])
                })
                .collect();
            predictions = predictions.with_documents(owners)?;
        }
        Ok(StepOutput::new(loss)
            .with_predictions(predictions)
            .with_inputs(ModelInputs {
                input_ids: ids,
                attention_mask: Some(mask),
                token_type_ids: None,
            })
            .with_example_ids(idx.iter().map(|&i| i as u64).collect()))
    }

    /// `loss` (mean next-token cross-entropy per predicted token, in nats) and `perplexity`,
    /// and `{name}_loss`, `{name}_perplexity` for each [`with_eval_set`](Self::with_eval_set).
    fn evaluate(&mut self, model: &Gpt2LmHead, _: &TrainState) -> Result<BTreeMap<String, f64>> {
        self.check(model)?;
        let valid = model.valid();
        let device = self.device.clone().inner();
        let loss = self.eval_loss(&valid, &self.eval, &device);
        let mut out = BTreeMap::from([
            ("loss".to_owned(), loss),
            ("perplexity".to_owned(), loss.exp()),
        ]);
        for (name, seqs) in &self.extra_eval {
            let loss = self.eval_loss(&valid, seqs, &device);
            out.insert(format!("{name}_loss"), loss);
            out.insert(format!("{name}_perplexity"), loss.exp());
        }
        Ok(out)
    }

    fn data_state(&self) -> Value {
        self.epochs.state()
    }

    fn restore_data_state(&mut self, state: &Value) -> Result<()> {
        self.epochs.restore(state)
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
