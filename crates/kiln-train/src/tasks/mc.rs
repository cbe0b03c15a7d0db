//! Zero- and few-shot multiple-choice evaluation of a GPT-2 with lm-evaluation-harness's
//! `multiple_choice` semantics: each option is the continuation `" " + letter` of the task's
//! prompt, scored by its summed log-likelihood; `acc` takes the most likely continuation,
//! `acc_norm` the most likely per character of the option (`lls / len(choice)`, the length of
//! the letter in Python characters, as lm-eval's `process_results`); ties go to the first.
//!
//! The request is tokenized as lm-eval's `HFLM._encode_pair`: trailing whitespace of the context
//! moves to the continuation, the continuation's tokens are those of `context + continuation`
//! after the context's own tokens, and the model sees the last `max_length + 1` tokens minus the
//! final one (an empty context starts with the end-of-text token); options whose inputs
//! coincide (one-token continuations such as ` A` … ` D`) share one forward pass, as lm-eval
//! groups requests by context, and the log-softmax runs only at the positions that predict
//! continuation tokens. Accuracy is also reported
//! per subject and per MedMCQA `choice_type`, each with a percentile bootstrap interval.
//!
//! [`MultipleChoiceTask`] fine-tunes BioMedLM's multiple-choice head instead (options encoded
//! by [`encode_for_head`]).

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_data::mc::{LETTERS, McExample, McFormat, fewshot_context};
use kiln_data::tokenizer::Tokenizer;
use kiln_models::gpt2::{Gpt2LmHead, Gpt2MultipleChoice};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::step::{Predictions, StepOutput};
use crate::trainer::{BatchSize, DataSize, TrainState, TrainTask};

/// How to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct McEvalOptions {
    /// Prompt layout: lm-eval's `medmcqa` (`Question: … Choices: …`) or `medqa_4options`
    /// (used for MedQA and SWAG-style rows).
    pub format: McFormat,
    /// Solved examples put before every question (lm-eval's `num_fewshot` context, `"\n\n"`
    /// between examples).
    pub shots: Vec<McExample>,
    /// Tokens the model sees at most (lm-eval's `max_length`; the model's context by default).
    pub max_length: Option<usize>,
    /// Bootstrap resamples of the confidence intervals.
    pub bootstrap: usize,
    /// Confidence level of the intervals.
    pub confidence: f64,
    /// Seed of the bootstrap.
    pub seed: u64,
}

impl McEvalOptions {
    /// Zero-shot, the model's context, 1,000 resamples for 95% intervals, seed 0.
    pub fn new(format: McFormat) -> Self {
        Self {
            format,
            shots: Vec::new(),
            max_length: None,
            bootstrap: 1000,
            confidence: 0.95,
            seed: 0,
        }
    }
}

/// One question's result (what lm-eval's `--log_samples` shows).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct McExampleResult {
    /// The row's id.
    pub id: String,
    /// Summed log-likelihood of each continuation, in nats.
    pub loglikelihoods: Vec<f64>,
    /// Index of the most likely continuation.
    pub pred: usize,
    /// Index of the most likely continuation per character.
    pub pred_norm: usize,
    /// The correct index, if labelled.
    pub answer: Option<usize>,
    /// Subject, if given.
    pub subject: Option<String>,
    /// `choice_type`, if given.
    pub choice_type: Option<String>,
}

/// Accuracy of a group with a bootstrap interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupAccuracy {
    /// Labelled questions in the group.
    pub n: usize,
    /// `acc`.
    pub acc: f64,
    /// `acc_norm`.
    pub acc_norm: f64,
    /// Lower end of the `acc` interval.
    pub acc_low: f64,
    /// Upper end of the `acc` interval.
    pub acc_high: f64,
}

/// The whole evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct McReport {
    /// Mean accuracy over labelled questions.
    pub acc: f64,
    /// Mean length-normalised accuracy.
    pub acc_norm: f64,
    /// Labelled questions.
    pub n: usize,
    /// Every question, with the interval over all labelled ones.
    pub overall: GroupAccuracy,
    /// Per subject.
    pub by_subject: BTreeMap<String, GroupAccuracy>,
    /// Per `choice_type`.
    pub by_choice_type: BTreeMap<String, GroupAccuracy>,
    /// Per question.
    pub examples: Vec<McExampleResult>,
    /// Which scoring this is (for reports: prompts, normalisation, shots).
    pub scoring: String,
}

/// The prompt of `ex` in `options.format`'s lm-eval layout, after the few-shot examples
/// ([`kiln_data::mc::fewshot_context`]).
///
/// # Errors
/// [`Error::Config`] for a shot without an answer.
pub fn context(ex: &McExample, options: &McEvalOptions) -> Result<String> {
    fewshot_context(options.format, &options.shots, ex).map_err(|e| Error::Config {
        message: e.to_string(),
    })
}

/// lm-eval's `_encode_pair`: (context tokens, continuation tokens).
fn encode_pair(tok: &Tokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end();
    let (ctx, cont) = if trimmed.len() < context.len() {
        (
            trimmed.to_owned(),
            format!("{}{continuation}", &context[trimmed.len()..]),
        )
    } else {
        (context.to_owned(), continuation.to_owned())
    };
    let whole = tok.encode(&format!("{ctx}{cont}"), false)?;
    let ctx_enc = tok.encode(&ctx, false)?;
    Ok((
        ctx_enc.clone(),
        whole[ctx_enc.len().min(whole.len())..].to_vec(),
    ))
}

/// Evaluates `model` (switched to evaluation mode) on `rows` with `tokenizer` (the model's).
///
/// # Errors
/// [`Error::Config`] for a row with more than 4 options, a continuation that tokenizes to
/// nothing, token ids outside the model's vocabulary or a bad option.
pub fn evaluate_mc(
    model: &Gpt2LmHead,
    tokenizer: &Tokenizer,
    rows: &[McExample],
    options: &McEvalOptions,
    device: &Device,
    mut progress: impl FnMut(usize),
) -> Result<McReport> {
    let model = model.valid();
    let cfg = model.config().clone();
    let max_length = options
        .max_length
        .unwrap_or(cfg.n_positions)
        .min(cfg.n_positions);
    let eot = cfg.eos_token_id.unwrap_or(0) as u32;
    if !(options.confidence > 0.0 && options.confidence < 1.0) {
        return Err(Error::Config {
            message: format!("confidence {} must be in (0, 1)", options.confidence),
        });
    }
    let mut examples = Vec::with_capacity(rows.len());
    for (k, ex) in rows.iter().enumerate() {
        if ex.choices.len() > LETTERS.len() {
            return Err(Error::Config {
                message: format!(
                    "row `{}` has {} options; the lettered prompts score at most 4 (A–D)",
                    ex.id,
                    ex.choices.len()
                ),
            });
        }
        let ctx = context(ex, options)?;
        // One row per option: (input tokens, continuation length).
        let mut inputs = Vec::new();
        for letter in &LETTERS[..ex.choices.len()] {
            let (mut c, cont) = encode_pair(tokenizer, &ctx, &format!(" {letter}"))?;
            if cont.is_empty() {
                return Err(Error::Config {
                    message: format!(
                        "row `{}`: the continuation ` {letter}` has no tokens",
                        ex.id
                    ),
                });
            }
            if c.is_empty() {
                c.push(eot);
            }
            let mut all = c;
            all.extend(&cont);
            let start = all.len().saturating_sub(max_length + 1);
            let inp = all[start..all.len() - 1].to_vec();
            if let Some(&t) = inp
                .iter()
                .chain(&cont)
                .find(|&&t| t as usize >= cfg.vocab_size)
            {
                return Err(Error::Config {
                    message: format!(
                        "row `{}`: token id {t} is outside the model's vocabulary ({}); is this the model's tokenizer?",
                        ex.id, cfg.vocab_size
                    ),
                });
            }
            inputs.push((inp, cont));
        }
        // Options whose model input is the same (one-token continuations after one context,
        // as " A" … " D") share one forward pass, as lm-eval groups them by context.
        let mut unique: Vec<&Vec<u32>> = Vec::new();
        let row_of: Vec<usize> = inputs
            .iter()
            .map(|(inp, _)| match unique.iter().position(|u| *u == inp) {
                Some(r) => r,
                None => {
                    unique.push(inp);
                    unique.len() - 1
                }
            })
            .collect();
        let b = unique.len();
        let l = unique.iter().map(|r| r.len()).max().unwrap_or(1);
        let (mut ids, mut mask) = (vec![0i64; b * l], vec![0i64; b * l]);
        for (i, inp) in unique.iter().enumerate() {
            for (j, &t) in inp.iter().enumerate() {
                ids[i * l + j] = i64::from(t);
                mask[i * l + j] = 1;
            }
        }
        let t = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [b, l]), device);
        let logits = model.forward(t(ids), Some(t(mask)), None);
        // The positions that predict continuation tokens (each once), then their
        // log-probabilities: a log-softmax over those rows only.
        let mut positions: Vec<i64> = Vec::new();
        let mut wanted: Vec<(usize, usize, u32)> = Vec::new(); // (option, position slot, token)
        for (k, (inp, cont)) in inputs.iter().enumerate() {
            let first = inp.len() - cont.len();
            for (j, &c) in cont.iter().enumerate() {
                let flat = (row_of[k] * l + first + j) as i64;
                let slot = match positions.iter().position(|&p| p == flat) {
                    Some(x) => x,
                    None => {
                        positions.push(flat);
                        positions.len() - 1
                    }
                };
                wanted.push((k, slot, c));
            }
        }
        let v = cfg.vocab_size;
        let np = positions.len();
        let rows = logits.reshape([b * l, v]).select(
            0,
            Tensor::<1, Int>::from_data(TensorData::new(positions, [np]), device),
        );
        let index: Vec<i64> = wanted
            .iter()
            .map(|&(_, slot, c)| (slot * v) as i64 + i64::from(c))
            .collect();
        let n = index.len();
        let picked = log_softmax(rows, 1)
            .reshape([np * v])
            .select(
                0,
                Tensor::<1, Int>::from_data(TensorData::new(index, [n]), device),
            )
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        let options_n = inputs.len();
        let mut lls = vec![0.0f64; options_n];
        for (&(k, _, _), &p) in wanted.iter().zip(&picked) {
            lls[k] += f64::from(p);
        }
        let argmax = |xs: &[f64]| {
            xs.iter()
                .enumerate()
                .fold(0, |best, (i, &x)| if x > xs[best] { i } else { best })
        };
        let lens: Vec<f64> = LETTERS[..options_n]
            .iter()
            .map(|c| c.chars().count() as f64)
            .collect();
        let normed: Vec<f64> = lls.iter().zip(&lens).map(|(x, n)| x / n).collect();
        examples.push(McExampleResult {
            id: ex.id.clone(),
            pred: argmax(&lls),
            pred_norm: argmax(&normed),
            loglikelihoods: lls,
            answer: ex.answer,
            subject: ex.subject.clone(),
            choice_type: ex.choice_type.clone(),
        });
        progress(k + 1);
    }
    Ok(summarise(examples, options, options.shots.len()))
}

/// Accuracy overall and per group, with percentile bootstrap intervals (`shots`: the examples
/// each question was given, for the report's description).
pub fn summarise(
    examples: Vec<McExampleResult>,
    options: &McEvalOptions,
    shots: usize,
) -> McReport {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut group = |members: &[&McExampleResult]| -> GroupAccuracy {
        let hits: Vec<f64> = members
            .iter()
            .filter_map(|e| e.answer.map(|a| f64::from(u8::from(e.pred == a))))
            .collect();
        let norm: Vec<f64> = members
            .iter()
            .filter_map(|e| e.answer.map(|a| f64::from(u8::from(e.pred_norm == a))))
            .collect();
        let n = hits.len();
        let mean = |x: &[f64]| {
            if x.is_empty() {
                f64::NAN
            } else {
                x.iter().sum::<f64>() / x.len() as f64
            }
        };
        let (low, high) = bootstrap(&hits, options.bootstrap, options.confidence, &mut rng);
        GroupAccuracy {
            n,
            acc: mean(&hits),
            acc_norm: mean(&norm),
            acc_low: low,
            acc_high: high,
        }
    };
    let all: Vec<&McExampleResult> = examples.iter().collect();
    let overall = group(&all);
    let mut by = |key: &dyn Fn(&McExampleResult) -> Option<String>| {
        let mut groups: BTreeMap<String, Vec<&McExampleResult>> = BTreeMap::new();
        for e in &examples {
            if let Some(k) = key(e) {
                groups.entry(k).or_default().push(e);
            }
        }
        groups
            .into_iter()
            .map(|(k, v)| (k, group(&v)))
            .collect::<BTreeMap<_, _>>()
    };
    let by_subject = by(&|e| e.subject.clone());
    let by_choice_type = by(&|e| e.choice_type.clone());
    McReport {
        acc: overall.acc,
        acc_norm: overall.acc_norm,
        n: overall.n,
        overall,
        by_subject,
        by_choice_type,
        scoring: format!(
            "lm-evaluation-harness multiple_choice: {} prompt, {}-shot, continuations \" A\"…\" D\" scored by summed log-likelihood; acc_norm divides by the option's length in characters; {:.0}% percentile bootstrap intervals ({} resamples)",
            match options.format {
                McFormat::MedMcqa => "medmcqa",
                McFormat::MedQa | McFormat::Swag => "medqa_4options",
            },
            shots,
            options.confidence * 100.0,
            options.bootstrap
        ),
        examples,
    }
}

/// Percentile bootstrap interval of the mean of 0/1 `hits`.
fn bootstrap(hits: &[f64], resamples: usize, confidence: f64, rng: &mut ChaCha8Rng) -> (f64, f64) {
    let n = hits.len();
    if n == 0 || resamples == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            (0..n)
                .map(|_| hits[(rng.next_u64() % n as u64) as usize])
                .sum::<f64>()
                / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let q = |p: f64| means[((p * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    let alpha = (1.0 - confidence) / 2.0;
    (q(alpha), q(1.0 - alpha))
}

/// One question encoded for BioMedLM's multiple-choice head: one token row per option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McEncoded {
    /// Token ids of each option's input.
    pub choices: Vec<Vec<u32>>,
    /// The correct option (`None`: unlabelled, not trainable).
    pub label: Option<usize>,
}

/// BioMedLM's input for each option of `ex` (`finetune/mc/run_multiple_choice.py` with a GPT-2
/// tokenizer): `question + sep` followed by `f"{header} {option}" + sep`, the two encodings
/// concatenated (GPT-2's tokenizer adds nothing around a pair) and cut to `max_length` tokens
/// longest-first (tokens dropped from the end of the longer part). `sep` is the added `[SEP]`
/// token, which the tokenizer keeps whole.
///
/// # Errors
/// Tokenizer errors.
pub fn encode_for_head(
    tok: &Tokenizer,
    ex: &McExample,
    sep: &str,
    max_length: usize,
) -> Result<McEncoded> {
    let first = tok.encode(&format!("{}{sep}", ex.question), false)?;
    let mut choices = Vec::with_capacity(ex.choices.len());
    for option in &ex.choices {
        let mut a = first.clone();
        let mut b = tok.encode(&format!("{} {option}{sep}", ex.header), false)?;
        while a.len() + b.len() > max_length {
            if a.len() > b.len() {
                a.pop();
            } else {
                b.pop();
            }
        }
        a.extend(b);
        choices.push(a);
    }
    Ok(McEncoded {
        choices,
        label: ex.answer,
    })
}

/// Fine-tuning BioMedLM's `GPT2ForMultipleChoice` (kiln-models' [`Gpt2MultipleChoice`]):
/// shuffled epochs over encoded questions, each batch `[B, C, L]` right-padded with `pad_id`
/// (so the head pools each option's last real token, the final `[SEP]`), cross-entropy over
/// the options; evaluation reports `accuracy` and `loss` on held-out questions. Every question
/// needs the same number of options and a label.
pub struct MultipleChoiceTask {
    train: Vec<McEncoded>,
    eval: Vec<McEncoded>,
    batch_size: usize,
    pad_id: u32,
    device: Device,
    epochs: super::ShuffledEpochs,
    checked: bool,
}

impl MultipleChoiceTask {
    /// A task over encoded `train` and `eval` questions.
    ///
    /// # Errors
    /// [`Error::Config`] for empty sets, a zero batch size, an unlabelled question, an option
    /// with no tokens, or questions with different numbers of options.
    pub fn new(
        train: Vec<McEncoded>,
        eval: Vec<McEncoded>,
        batch_size: usize,
        pad_id: u32,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let bad = |message: String| Err(Error::Config { message });
        if train.is_empty() || eval.is_empty() || batch_size == 0 {
            return bad("multiple-choice task: the training and evaluation sets and the batch size must not be empty".into());
        }
        let c = train[0].choices.len();
        for (set, rows) in [("training", &train), ("evaluation", &eval)] {
            for (i, r) in rows.iter().enumerate() {
                if r.choices.len() != c {
                    return bad(format!(
                        "multiple-choice task: {set} question {i} has {} options, the first has {c}; batches need one count",
                        r.choices.len()
                    ));
                }
                if r.choices.iter().any(Vec::is_empty) {
                    return bad(format!(
                        "multiple-choice task: {set} question {i} has an option with no tokens"
                    ));
                }
                if r.label.is_none_or(|l| l >= c) {
                    return bad(format!(
                        "multiple-choice task: {set} question {i} has no answer among its {c} options"
                    ));
                }
            }
        }
        Ok(Self {
            epochs: super::ShuffledEpochs::new(train.len(), seed),
            train,
            eval,
            batch_size,
            pad_id,
            device: device.clone(),
            checked: false,
        })
    }

    fn tensors(
        &self,
        rows: &[&McEncoded],
        device: &Device,
    ) -> (Tensor<3, Int>, Tensor<3, Int>, Tensor<1, Int>) {
        let (b, c) = (rows.len(), rows[0].choices.len());
        let l = rows
            .iter()
            .flat_map(|r| r.choices.iter().map(Vec::len))
            .max()
            .unwrap_or(1);
        let mut ids = vec![i64::from(self.pad_id); b * c * l];
        let mut mask = vec![0i64; b * c * l];
        for (i, r) in rows.iter().enumerate() {
            for (j, ch) in r.choices.iter().enumerate() {
                for (k, &t) in ch.iter().enumerate() {
                    ids[(i * c + j) * l + k] = i64::from(t);
                    mask[(i * c + j) * l + k] = 1;
                }
            }
        }
        let labels: Vec<i64> = rows.iter().map(|r| r.label.unwrap_or(0) as i64).collect();
        let t3 = |v: Vec<i64>| Tensor::<3, Int>::from_data(TensorData::new(v, [b, c, l]), device);
        (
            t3(ids),
            t3(mask),
            Tensor::<1, Int>::from_data(TensorData::new(labels, [b]), device),
        )
    }

    fn check(&mut self, model: &Gpt2MultipleChoice) -> Result<()> {
        if self.checked {
            return Ok(());
        }
        let cfg = &model.transformer.config;
        for (set, rows) in [("training", &self.train), ("evaluation", &self.eval)] {
            for (i, r) in rows.iter().enumerate() {
                for ch in &r.choices {
                    if let Some(&t) = ch.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                        return Err(Error::Config {
                            message: format!(
                                "{set} question {i}: token id {t} is outside the model's vocabulary ({}); resize the embeddings after adding tokens (Gpt2Model::resize_token_embeddings)",
                                cfg.vocab_size
                            ),
                        });
                    }
                    if ch.len() > cfg.n_positions {
                        return Err(Error::Config {
                            message: format!(
                                "{set} question {i}: an option has {} tokens, more than the model's {} positions; encode with a smaller max_length",
                                ch.len(),
                                cfg.n_positions
                            ),
                        });
                    }
                }
            }
        }
        if (self.pad_id as usize) >= cfg.vocab_size {
            return Err(Error::Config {
                message: format!("pad id {} is outside the model's vocabulary", self.pad_id),
            });
        }
        self.checked = true;
        Ok(())
    }
}

impl TrainTask<Gpt2MultipleChoice> for MultipleChoiceTask {
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
        let tokens = idx
            .iter()
            .map(|&i| {
                self.train[i]
                    .choices
                    .iter()
                    .map(|c| c.len() as u64)
                    .sum::<u64>()
            })
            .sum();
        Ok((
            idx,
            BatchSize {
                samples: self.batch_size as u64,
                tokens,
            },
        ))
    }

    /// Cross-entropy over the options; the option scores with their labels as predictions,
    /// the questions' indices as example ids.
    fn forward(&mut self, model: &Gpt2MultipleChoice, idx: Vec<usize>) -> Result<StepOutput> {
        self.check(model)?;
        let rows: Vec<&McEncoded> = idx.iter().map(|&i| &self.train[i]).collect();
        let (ids, mask, labels) = self.tensors(&rows, &self.device);
        let (loss, scores) = model.loss_with_scores(ids, Some(mask), labels.clone());
        let b = rows.len();
        Ok(StepOutput::new(loss)
            .with_predictions(Predictions::rows(scores, labels, (0..b).collect())?)
            .with_example_ids(idx.iter().map(|&i| i as u64).collect()))
    }

    /// `accuracy` and `loss` (mean cross-entropy over options) on the held-out questions.
    fn evaluate(
        &mut self,
        model: &Gpt2MultipleChoice,
        _: &TrainState,
    ) -> Result<BTreeMap<String, f64>> {
        self.check(model)?;
        let valid = model.valid();
        let device = self.device.clone().inner();
        let (mut right, mut nll, mut n) = (0usize, 0.0f64, 0usize);
        let eval: Vec<&McEncoded> = self.eval.iter().collect();
        for chunk in eval.chunks(self.batch_size) {
            let (ids, mask, _) = self.tensors(chunk, &device);
            let scores = valid.forward(ids, Some(mask));
            let c = scores.dims()[1];
            let host = scores
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap_or_default();
            for (r, row) in chunk.iter().zip(host.chunks(c)) {
                let label = r.label.unwrap_or(0);
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = f64::from(max)
                    + row
                        .iter()
                        .map(|&x| f64::from(x - max).exp())
                        .sum::<f64>()
                        .ln();
                nll += lse - f64::from(row[label]);
                let arg = row
                    .iter()
                    .enumerate()
                    .fold(0, |best, (i, &x)| if x > row[best] { i } else { best });
                right += usize::from(arg == label);
                n += 1;
            }
        }
        Ok(BTreeMap::from([
            ("accuracy".to_owned(), right as f64 / n as f64),
            ("loss".to_owned(), nll / n as f64),
        ]))
    }

    fn data_state(&self) -> Value {
        self.epochs.state()
    }

    fn restore_data_state(&mut self, state: &Value) -> Result<()> {
        self.epochs.restore(state)
    }
}
