//! Loading a Hugging Face directory without knowing what it holds, as transformers' `Auto*`
//! classes do: `config.json` is read once, the family comes from `model_type`, the head from
//! `architectures` (or, when a config has none, from the head weights in the checkpoint), and
//! inputs are checked against the model before any id reaches an embedding.
//!
//! ```no_run
//! use kiln_models::auto::{AutoModel, TokenBatch};
//! use kiln_models::{LoadOptions, device_from_name};
//!
//! let device = device_from_name("cpu")?;
//! let model = AutoModel::load("models/gpt2", &device, LoadOptions::default())?;
//! println!("{}", model.architecture());
//! let out = model.logits(&TokenBatch::new(vec![vec![464, 2068, 7586], vec![1, 2]]))?;
//! println!("{:?}", out.shape); // [2, 3, 50257]
//! # Ok::<(), kiln_models::Error>(())
//! ```

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_checkpoint::Checkpoint;

use crate::bert::{
    BertConfig, BertForMaskedLm, BertForSequenceClassification, BertForTokenClassification,
    BertWithPooler, Padding,
};
use crate::common::config_path;
use crate::error::{Error, Result, config_err};
use crate::gpt2::{self, Gpt2Config, Gpt2LmHead, Gpt2Model, Gpt2MultipleChoice};
use crate::weights::LoadOptions;

/// The model families kiln implements (`model_type` in `config.json`).
#[derive(Debug, Clone, PartialEq)]
pub enum Family {
    /// `gpt2`: GPT-2, BioMedLM.
    Gpt2(Gpt2Config),
    /// `bert`: BERT and MosaicBERT.
    Bert(BertConfig),
}

/// The output head a checkpoint carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Next-token logits (`GPT2LMHeadModel`).
    CausalLm,
    /// Masked-token logits (`BertForMaskedLM`, `BertForPreTraining`'s MLM part).
    MaskedLm,
    /// One score row per sequence (`*ForSequenceClassification`).
    SequenceClassification,
    /// One score row per token (`BertForTokenClassification`).
    TokenClassification,
    /// One score per choice (BioMedLM's `GPT2ForMultipleChoice`).
    MultipleChoice,
    /// No head: hidden states only (`GPT2Model`, `BertModel`).
    None,
}

/// What a model directory holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The directory (or `.safetensors` file).
    pub path: PathBuf,
    /// Family and config.
    pub family: Family,
    /// The head.
    pub head: Head,
    /// The architecture's transformers name (from `architectures`, or inferred).
    pub architecture: String,
}

impl ModelInfo {
    /// Reads `config.json` and classifies the checkpoint `ckpt` opened from `path`.
    ///
    /// # Errors
    /// [`Error::Config`] for a missing or unknown `model_type`, an architecture kiln does not
    /// implement, or an invalid config; I/O errors.
    pub fn read(path: &Path, ckpt: &Checkpoint) -> Result<Self> {
        let config_file = config_path(path);
        // The checkpoint parsed config.json when it opened; it is not read again.
        let json = ckpt
            .config()
            .map(|c| c.json().clone())
            .ok_or_else(|| Error::Io {
                path: config_file.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no config.json beside the weights; kiln needs it to know the model",
                ),
            })?;
        let named = json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .map(str::to_owned);
        let model_type = json.get("model_type").and_then(|t| t.as_str());
        let parse_err =
            |e: serde_json::Error| config_err(format!("{}: {e}", config_file.display()));
        let (family, head, inferred) = match model_type {
            Some("gpt2") => {
                let c: Gpt2Config = serde_json::from_value(json.clone()).map_err(parse_err)?;
                c.validate()?;
                let (head, inferred) = match named.as_deref() {
                    Some(a) => (gpt2_head(a, &config_file)?, a.to_owned()),
                    None if ckpt.contains("score.weight") => (
                        Head::SequenceClassification,
                        "GPT2ForSequenceClassification".to_owned(),
                    ),
                    None if ckpt.contains("classifier.weight") => {
                        (Head::MultipleChoice, "GPT2ForMultipleChoice".to_owned())
                    }
                    None => (Head::CausalLm, "GPT2LMHeadModel".to_owned()),
                };
                (Family::Gpt2(c), head, inferred)
            }
            Some("bert") => {
                let c: BertConfig = serde_json::from_value(json.clone()).map_err(parse_err)?;
                c.validate()?;
                let (head, inferred) = match named.as_deref() {
                    Some(a) => (bert_head(a, &config_file)?, a.to_owned()),
                    None => bert_head_from_weights(ckpt),
                };
                (Family::Bert(c), head, inferred)
            }
            Some(other) => {
                return Err(config_err(format!(
                    "{}: model_type `{other}` is not implemented; kiln runs gpt2 and bert",
                    config_file.display()
                )));
            }
            None => {
                return Err(config_err(format!(
                    "{}: no `model_type` (gpt2 or bert)",
                    config_file.display()
                )));
            }
        };
        Ok(Self {
            path: path.to_owned(),
            family,
            head,
            architecture: inferred,
        })
    }
}

fn gpt2_head(arch: &str, config: &Path) -> Result<Head> {
    Ok(match arch {
        "GPT2LMHeadModel" => Head::CausalLm,
        "GPT2ForSequenceClassification" => Head::SequenceClassification,
        "GPT2Model" => Head::None,
        a if a.ends_with("ForMultipleChoice") => Head::MultipleChoice,
        other => {
            return Err(config_err(format!(
                "{}: architecture `{other}` is not implemented; kiln's GPT-2 heads are \
                 GPT2LMHeadModel, GPT2ForSequenceClassification, GPT2ForMultipleChoice \
                 (BioMedLM's) and GPT2Model",
                config.display()
            )));
        }
    })
}

fn bert_head(arch: &str, config: &Path) -> Result<Head> {
    Ok(match arch {
        a if a.ends_with("ForSequenceClassification") => Head::SequenceClassification,
        a if a.ends_with("ForTokenClassification") => Head::TokenClassification,
        a if a.ends_with("ForMaskedLM") || a.ends_with("ForPreTraining") => Head::MaskedLm,
        "BertModel" => Head::None,
        other => {
            return Err(config_err(format!(
                "{}: architecture `{other}` is not implemented; kiln's BERT heads are \
                 BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification and \
                 BertModel",
                config.display()
            )));
        }
    })
}

/// A BERT config without `architectures`: the head from the weights.
fn bert_head_from_weights(ckpt: &Checkpoint) -> (Head, String) {
    let has = |n: &str| ckpt.contains(n);
    if has("cls.predictions.transform.dense.weight") {
        (Head::MaskedLm, "BertForMaskedLM".into())
    } else if has("classifier.weight") && (has("bert.pooler.dense.weight")) {
        (
            Head::SequenceClassification,
            "BertForSequenceClassification".into(),
        )
    } else if has("classifier.weight") {
        (
            Head::TokenClassification,
            "BertForTokenClassification".into(),
        )
    } else {
        (Head::None, "BertModel".into())
    }
}

/// A model loaded by [`AutoModel::load`].
#[derive(Debug)]
pub enum AutoModel {
    /// `GPT2LMHeadModel`.
    Gpt2Lm(Gpt2LmHead),
    /// `GPT2ForSequenceClassification`.
    Gpt2SequenceClassification(gpt2::Gpt2SequenceClassification),
    /// BioMedLM's `GPT2ForMultipleChoice`.
    Gpt2MultipleChoice(Gpt2MultipleChoice),
    /// `GPT2Model`.
    Gpt2(Gpt2Model),
    /// `BertForMaskedLM` (and MosaicBERT).
    BertMaskedLm(BertForMaskedLm),
    /// `BertForSequenceClassification`.
    BertSequenceClassification(BertForSequenceClassification),
    /// `BertForTokenClassification`.
    BertTokenClassification(BertForTokenClassification),
    /// `BertModel` with its pooler.
    Bert(BertWithPooler),
}

/// Token ids for [`AutoModel::logits`]: rows of different lengths are padded on the right.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenBatch {
    /// One row of ids per sequence.
    pub input_ids: Vec<Vec<i64>>,
    /// Token types, with the same row lengths (BERT: below `type_vocab_size`; GPT-2: below
    /// `vocab_size`, looked up in the token embedding as transformers does).
    pub token_type_ids: Option<Vec<Vec<i64>>>,
}

impl TokenBatch {
    /// Rows of ids without token types.
    pub fn new(input_ids: Vec<Vec<i64>>) -> Self {
        Self {
            input_ids,
            token_type_ids: None,
        }
    }
}

/// What [`AutoModel::logits`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    /// Row-major f32 values.
    pub values: Vec<f32>,
    /// `[batch, seq, vocab]` (LM heads), `[batch, seq, labels]` (token classification) or
    /// `[batch, labels]` (sequence classification).
    pub shape: Vec<usize>,
    /// `[batch, seq]`, 1 for real tokens and 0 for padding.
    pub attention_mask: Vec<i64>,
    /// The padded length.
    pub seq_len: usize,
    /// Whether rows had different lengths.
    pub ragged: bool,
    /// The id padding positions were filled with (masked: it changes no real token's logits).
    pub pad_id: i64,
}

fn input_err(message: String) -> Error {
    Error::Input { message }
}

/// Checks every id against `0..limit`, naming what the ids are and where the limit comes from.
fn check_ids(rows: &[Vec<i64>], limit: usize, what: &str, limit_name: &str) -> Result<()> {
    for (r, row) in rows.iter().enumerate() {
        if let Some((c, &t)) = row
            .iter()
            .enumerate()
            .find(|(_, t)| **t < 0 || **t as usize >= limit)
        {
            return Err(input_err(format!(
                "{what} {t} (row {r}, position {c}) is outside 0..{limit} ({limit_name} {limit})"
            )));
        }
    }
    Ok(())
}

fn pad(rows: &[Vec<i64>], pad: i64) -> (Vec<i64>, Vec<i64>, usize) {
    let l = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * l);
    let mut mask = Vec::with_capacity(rows.len() * l);
    for r in rows {
        ids.extend(
            r.iter()
                .copied()
                .chain(std::iter::repeat_n(pad, l - r.len())),
        );
        mask.extend(std::iter::repeat_n(1, r.len()).chain(std::iter::repeat_n(0, l - r.len())));
    }
    (ids, mask, l)
}

fn ints(v: Vec<i64>, b: usize, l: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(v, [b, l]), device)
}

impl AutoModel {
    /// Opens `path`, reads its config once and loads the model its head names.
    ///
    /// # Errors
    /// As [`ModelInfo::read`], and the loaders' missing/unexpected/shape errors.
    pub fn load(path: impl AsRef<Path>, device: &Device, options: LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let ckpt = Checkpoint::open(path)?;
        let info = ModelInfo::read(path, &ckpt)?;
        Self::from_checkpoint(&ckpt, &info, device, options)
    }

    /// Loads the model `info` describes from its opened checkpoint.
    ///
    /// # Errors
    /// The loaders' missing/unexpected/shape errors.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        info: &ModelInfo,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self> {
        Ok(match (&info.family, info.head) {
            (Family::Gpt2(c), Head::SequenceClassification) => Self::Gpt2SequenceClassification(
                gpt2::Gpt2SequenceClassification::from_checkpoint(ckpt, c, device, options)?,
            ),
            (Family::Gpt2(c), Head::MultipleChoice) => Self::Gpt2MultipleChoice(
                Gpt2MultipleChoice::from_checkpoint(ckpt, c, device, options)?,
            ),
            (Family::Gpt2(c), Head::None) => {
                Self::Gpt2(Gpt2Model::from_checkpoint(ckpt, c, device, options)?)
            }
            (Family::Gpt2(c), _) => {
                Self::Gpt2Lm(Gpt2LmHead::from_checkpoint(ckpt, c, device, options)?)
            }
            (Family::Bert(c), Head::SequenceClassification) => Self::BertSequenceClassification(
                BertForSequenceClassification::from_checkpoint(ckpt, c, device, options)?,
            ),
            (Family::Bert(c), Head::TokenClassification) => Self::BertTokenClassification(
                BertForTokenClassification::from_checkpoint(ckpt, c, device, options)?,
            ),
            (Family::Bert(c), Head::None) => {
                Self::Bert(BertWithPooler::from_checkpoint(ckpt, c, device, options)?)
            }
            (Family::Bert(c), _) => {
                Self::BertMaskedLm(BertForMaskedLm::from_checkpoint(ckpt, c, device, options)?)
            }
        })
    }

    /// The transformers name of what was loaded.
    pub fn architecture(&self) -> &'static str {
        match self {
            Self::Gpt2Lm(_) => "GPT2LMHeadModel",
            Self::Gpt2SequenceClassification(_) => "GPT2ForSequenceClassification",
            Self::Gpt2MultipleChoice(_) => "GPT2ForMultipleChoice",
            Self::Gpt2(_) => "GPT2Model",
            Self::BertMaskedLm(_) => "BertForMaskedLM",
            Self::BertSequenceClassification(_) => "BertForSequenceClassification",
            Self::BertTokenClassification(_) => "BertForTokenClassification",
            Self::Bert(_) => "BertModel",
        }
    }

    /// Why this model has no token logits.
    fn no_logits(&self) -> Error {
        match self {
            Self::Gpt2MultipleChoice(_) => config_err(
                "GPT2ForMultipleChoice scores the choices of a question ([batch, choices, seq] \
                 inputs), not rows of tokens; use kiln_models::gpt2::Gpt2MultipleChoice",
            ),
            other => config_err(format!(
                "{} has no output head, so there are no logits; use kiln_models::gpt2::Gpt2Model \
                 or kiln_models::bert::BertWithPooler for hidden states",
                other.architecture()
            )),
        }
    }

    /// The head's logits for `batch`, after checking every id against the model (vocabulary,
    /// token types, positions). Rows are padded on the right with the config's pad id
    /// (`pad_token_id`, else GPT-2's `eos_token_id`), or 0 when that id is missing or outside
    /// the vocabulary — padding is masked, so the choice changes no real token's logits.
    ///
    /// # Errors
    /// [`Error::Input`] naming the offending id, row and limit; [`Error::Config`] for a model
    /// with no logits to give (multiple choice, or no head).
    pub fn logits(&self, batch: &TokenBatch) -> Result<Logits> {
        let rows = &batch.input_ids;
        if rows.is_empty() || rows.iter().any(Vec::is_empty) {
            return Err(input_err("every row needs at least one id".into()));
        }
        if let Some(tt) = &batch.token_type_ids
            && tt.iter().map(Vec::len).ne(rows.iter().map(Vec::len))
        {
            return Err(input_err(
                "token type ids must have the same rows and lengths as the input ids".into(),
            ));
        }
        let b = rows.len();
        let ragged = rows.iter().any(|r| r.len() != rows[0].len());
        let (vocab, positions, pad_candidate) = match self {
            Self::Gpt2Lm(m) => gpt2_limits(m.config()),
            Self::Gpt2SequenceClassification(m) => gpt2_limits(&m.transformer.config),
            Self::BertMaskedLm(m) => bert_limits(&m.bert.config),
            Self::BertSequenceClassification(m) => bert_limits(&m.bert.bert.config),
            Self::BertTokenClassification(m) => bert_limits(&m.bert.config),
            Self::Gpt2MultipleChoice(_) | Self::Gpt2(_) | Self::Bert(_) => {
                return Err(self.no_logits());
            }
        };
        check_ids(rows, vocab, "token id", "vocab_size")?;
        let l = rows.iter().map(Vec::len).max().unwrap_or(0);
        if let Some(p) = positions
            && l > p
        {
            return Err(input_err(format!(
                "{l} tokens exceed the model's {p} positions"
            )));
        }
        let pad_id = pad_candidate.filter(|&p| p < vocab).map_or(0, |p| p as i64);
        let (ids, mask, l) = pad(rows, pad_id);
        let device = self.device();
        let ids_t = ints(ids, b, l, &device);
        let mask_t = ints(mask.clone(), b, l, &device);
        let types = |limit: usize, limit_name: &str| -> Result<Option<Tensor<2, Int>>> {
            match &batch.token_type_ids {
                None => Ok(None),
                Some(tt) => {
                    check_ids(tt, limit, "token type id", limit_name)?;
                    Ok(Some(ints(pad(tt, 0).0, b, l, &device)))
                }
            }
        };
        let (logits, per_sequence): (Tensor<3>, bool) = match self {
            Self::Gpt2Lm(m) => (
                m.forward_with_token_types(
                    ids_t,
                    types(
                        vocab,
                        "GPT-2 looks token types up in its token embedding: vocab_size",
                    )?,
                    ragged.then_some(mask_t),
                    None,
                ),
                false,
            ),
            Self::Gpt2SequenceClassification(m) => (
                m.forward_with_token_types(
                    ids_t,
                    types(
                        vocab,
                        "GPT-2 looks token types up in its token embedding: vocab_size",
                    )?,
                    Some(mask_t),
                )
                .unsqueeze_dim(1),
                true,
            ),
            Self::BertMaskedLm(m) => {
                let tt = types(m.bert.config.type_vocab_size, "type_vocab_size")?;
                (m.forward(ids_t, tt, Some(mask_t), Padding::Padded), false)
            }
            Self::BertTokenClassification(m) => {
                let tt = types(m.bert.config.type_vocab_size, "type_vocab_size")?;
                (m.forward(ids_t, tt, Some(mask_t)), false)
            }
            Self::BertSequenceClassification(m) => {
                let tt = types(m.bert.bert.config.type_vocab_size, "type_vocab_size")?;
                (m.forward(ids_t, tt, Some(mask_t)).unsqueeze_dim(1), true)
            }
            Self::Gpt2MultipleChoice(_) | Self::Gpt2(_) | Self::Bert(_) => {
                return Err(self.no_logits());
            }
        };
        let [_, rows_out, v] = logits.dims();
        let values: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .map_err(|e| input_err(format!("logits could not be read back: {e:?}")))?;
        Ok(Logits {
            values,
            shape: if per_sequence {
                vec![b, v]
            } else {
                vec![b, rows_out, v]
            },
            attention_mask: mask,
            seq_len: l,
            ragged,
            pad_id,
        })
    }

    fn device(&self) -> Device {
        match self {
            Self::Gpt2Lm(m) => m.transformer.wte.weight.device(),
            Self::Gpt2SequenceClassification(m) => m.transformer.wte.weight.device(),
            Self::Gpt2MultipleChoice(m) => m.transformer.wte.weight.device(),
            Self::Gpt2(m) => m.wte.weight.device(),
            Self::BertMaskedLm(m) => m.bert.word_embeddings.weight.device(),
            Self::BertSequenceClassification(m) => m.bert.bert.word_embeddings.weight.device(),
            Self::BertTokenClassification(m) => m.bert.word_embeddings.weight.device(),
            Self::Bert(m) => m.bert.word_embeddings.weight.device(),
        }
    }
}

/// (vocabulary, positions, pad id) of a GPT-2 config.
fn gpt2_limits(c: &Gpt2Config) -> (usize, Option<usize>, Option<usize>) {
    (
        c.vocab_size,
        Some(c.n_positions),
        c.pad_token_id.or(c.eos_token_id),
    )
}

/// (vocabulary, positions — none with ALiBi —, pad id) of a BERT config.
fn bert_limits(c: &BertConfig) -> (usize, Option<usize>, Option<usize>) {
    (
        c.vocab_size,
        (!c.uses_alibi()).then_some(c.max_position_embeddings),
        c.pad_token_id,
    )
}
