//! `kiln run logits|generate --model DIR`: try a GPT-2 or BERT checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use kiln_checkpoint::{Dtype, HfConfig};
use kiln_models::bert::{
    BertConfig, BertForMaskedLm, BertForSequenceClassification, BertForTokenClassification,
};
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::generate::{GenerationConfig, generate};
use kiln_models::gpt2::Gpt2LmHead;
use kiln_models::tokenizer::Tokenizer;
use kiln_models::{LoadOptions, device_from_name};

use crate::error::CliError;

/// Run a Hugging Face GPT-2 or BERT checkpoint.
#[derive(Debug, Subcommand)]
pub(crate) enum RunCommand {
    /// Write the logits for given token ids to a safetensors file.
    Logits(LogitsArgs),
    /// Generate text with a GPT-2 model (greedy, or sampled with --temperature).
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ModelArgs {
    /// Model directory (config.json + model.safetensors or shards); model_type gpt2 or bert.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Device: cpu (burn's flex backend), cuda[:N] (builds with the `cuda` feature), or wgpu /
    /// wgpu:cpu (builds with the `wgpu` feature). Defaults to KILN_DEVICE, else cpu.
    #[arg(long)]
    device: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Token ids: rows separated by `;`, ids by `,` (e.g. `1,2,3;4,5`). Shorter rows are padded on
    /// the right and an `attention_mask` is written beside the logits.
    #[arg(long, value_name = "IDS")]
    input_ids: String,
    /// BERT token types, same layout as --input-ids [default: all 0].
    #[arg(long, value_name = "IDS")]
    token_type_ids: Option<String>,
    /// Output safetensors file: `logits` f32 [batch, seq, vocab] — [batch, seq, labels] for token
    /// classification, [batch, labels] for sequence classification — and `attention_mask` i64
    /// [batch, seq] when rows differ in length. The BERT head comes from `architectures` in
    /// config.json (BertForMaskedLM when absent).
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (needs tokenizer.json in the model directory).
    #[arg(
        long,
        conflicts_with = "input_ids",
        required_unless_present = "input_ids"
    )]
    prompt: Option<String>,
    /// Prompt token ids, comma separated.
    #[arg(long, value_name = "IDS")]
    input_ids: Option<String>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample among the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens up to this cumulative probability, in (0, 1].
    #[arg(long)]
    top_p: Option<f64>,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Recompute the whole prefix each step instead of caching keys and values (same tokens, slower).
    #[arg(long)]
    no_cache: bool,
    /// Print JSON (`prompt_ids`, `new_ids`, `text`).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(command: RunCommand) -> Result<(), CliError> {
    match command {
        RunCommand::Logits(a) => logits(a),
        RunCommand::Generate(a) => generate_text(a),
    }
}

fn device(name: Option<&str>) -> Result<Device, CliError> {
    Ok(match name {
        Some(n) => device_from_name(n)?,
        None => kiln_models::device_from_env()?,
    })
}

fn model_type(dir: &Path) -> Result<String, CliError> {
    let config = HfConfig::read(dir.join("config.json")).map_err(kiln_models::Error::from)?;
    config
        .model_type()
        .map_err(kiln_models::Error::from)?
        .map(str::to_owned)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{}: config.json has no `model_type` (gpt2 or bert)",
                dir.display()
            ))
        })
}

/// Which BERT head a directory holds, from `architectures` in its config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BertHead {
    MaskedLm,
    SequenceClassification,
    TokenClassification,
}

fn bert_head(dir: &Path) -> Result<BertHead, CliError> {
    let config = HfConfig::read(dir.join("config.json")).map_err(kiln_models::Error::from)?;
    let arch = config
        .json()
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .unwrap_or("BertForMaskedLM");
    Ok(match arch {
        a if a.ends_with("ForSequenceClassification") => BertHead::SequenceClassification,
        a if a.ends_with("ForTokenClassification") => BertHead::TokenClassification,
        a if a.ends_with("ForMaskedLM") || a.ends_with("ForPreTraining") => BertHead::MaskedLm,
        other => {
            return Err(CliError::Usage(format!(
                "{}: `{other}` has no output head, so there are no logits to write; \
                 `kiln run logits` runs BertForMaskedLM, BertForSequenceClassification and \
                 BertForTokenClassification directories (use kiln_models::bert::BertModel for \
                 hidden states)",
                dir.display()
            )));
        }
    })
}

/// Parses `1,2,3;4,5` into rows.
pub(crate) fn parse_rows(text: &str, what: &str) -> Result<Vec<Vec<i64>>, CliError> {
    let rows: Vec<Vec<i64>> = text
        .split(';')
        .map(|row| {
            row.split(',')
                .map(|t| {
                    t.trim().parse::<i64>().map_err(|_| {
                        CliError::Usage(format!("{what}: `{t}` is not an integer token id"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    if rows.iter().any(Vec::is_empty) || rows.is_empty() {
        return Err(CliError::Usage(format!(
            "{what}: every row needs at least one id"
        )));
    }
    Ok(rows)
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

fn check_vocab(rows: &[Vec<i64>], vocab: usize) -> Result<(), CliError> {
    if let Some(t) = rows
        .iter()
        .flatten()
        .find(|&&t| t < 0 || t as usize >= vocab)
    {
        return Err(CliError::Usage(format!(
            "token id {t} is outside the model's vocabulary (0..{vocab})"
        )));
    }
    Ok(())
}

fn logits(args: LogitsArgs) -> Result<(), CliError> {
    let dev = device(args.model.device.as_deref())?;
    let dir = &args.model.model;
    let rows = parse_rows(&args.input_ids, "--input-ids")?;
    let ragged = rows.iter().any(|r| r.len() != rows[0].len());
    let b = rows.len();
    let out = match model_type(dir)?.as_str() {
        "gpt2" => {
            let model = Gpt2LmHead::load(
                dir,
                &dev,
                LoadOptions {
                    allow_unexpected: true,
                    ..Default::default()
                },
            )?;
            let c = model.config();
            check_vocab(&rows, c.vocab_size)?;
            let (ids, mask, l) = pad(&rows, c.pad_token_id.or(c.eos_token_id).unwrap_or(0) as i64);
            if l > c.n_positions {
                return Err(CliError::Usage(format!(
                    "{l} tokens exceed the model's {} positions",
                    c.n_positions
                )));
            }
            let ids_t = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, l]), &dev);
            let mask_t = ragged
                .then(|| Tensor::<2, Int>::from_data(TensorData::new(mask.clone(), [b, l]), &dev));
            (model.forward(ids_t, mask_t, None), mask, l, false)
        }
        "bert" => {
            let head = bert_head(dir)?;
            let config = BertConfig::from_file(dir.join("config.json"))?;
            check_vocab(&rows, config.vocab_size)?;
            let (ids, mask, l) = pad(&rows, config.pad_token_id.unwrap_or(0) as i64);
            if !config.uses_alibi() && l > config.max_position_embeddings {
                return Err(CliError::Usage(format!(
                    "{l} tokens exceed the model's {} positions",
                    config.max_position_embeddings
                )));
            }
            let tt = match &args.token_type_ids {
                Some(t) => {
                    let tt_rows = parse_rows(t, "--token-type-ids")?;
                    if tt_rows.iter().map(Vec::len).ne(rows.iter().map(Vec::len)) {
                        return Err(CliError::Usage(
                            "--token-type-ids must have the same rows and lengths as --input-ids"
                                .into(),
                        ));
                    }
                    check_vocab(&tt_rows, config.type_vocab_size)?;
                    Some(Tensor::<2, Int>::from_data(
                        TensorData::new(pad(&tt_rows, 0).0, [b, l]),
                        &dev,
                    ))
                }
                None => None,
            };
            let ids_t = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, l]), &dev);
            let mask_t = Tensor::<2, Int>::from_data(TensorData::new(mask.clone(), [b, l]), &dev);
            let logits = match head {
                BertHead::MaskedLm => {
                    let model = BertForMaskedLm::load(dir, &dev, LoadOptions::default())?;
                    model.forward(ids_t, tt, Some(mask_t), false)
                }
                BertHead::TokenClassification => {
                    let model =
                        BertForTokenClassification::load(dir, &dev, LoadOptions::default())?;
                    model.forward(ids_t, tt, Some(mask_t))
                }
                BertHead::SequenceClassification => {
                    let model =
                        BertForSequenceClassification::load(dir, &dev, LoadOptions::default())?;
                    // One score row per sequence: [batch, 1, labels] keeps the 3-D contract.
                    model.forward(ids_t, tt, Some(mask_t)).unsqueeze_dim(1)
                }
            };
            (logits, mask, l, head == BertHead::SequenceClassification)
        }
        other => {
            return Err(CliError::Usage(format!(
                "model_type `{other}` is not supported; kiln runs gpt2 and bert"
            )));
        }
    };
    let (logits, mask, l, per_sequence) = out;
    let [_, rows_out, v] = logits.dims();
    let values: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("f32 logits");
    let logit_bytes: Vec<u8> = bytemuck_f32(&values);
    let mask_bytes: Vec<u8> = mask.iter().flat_map(|m| m.to_le_bytes()).collect();
    let shape = if per_sequence {
        vec![b, v]
    } else {
        vec![b, rows_out, v]
    };
    let mshape = [b, l];
    let mut tensors: Vec<(&str, Dtype, &[usize], &[u8])> =
        vec![("logits", Dtype::F32, &shape, &logit_bytes)];
    if ragged {
        tensors.push(("attention_mask", Dtype::I64, &mshape, &mask_bytes));
    }
    let meta = BTreeMap::from([("model".to_owned(), dir.display().to_string())]);
    kiln_checkpoint::write_file(&args.output, &tensors, &meta).map_err(kiln_models::Error::from)?;
    println!("wrote logits {shape:?} to {}", args.output.display());
    Ok(())
}

fn bytemuck_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn generate_text(args: GenerateArgs) -> Result<(), CliError> {
    let dev = device(args.model.device.as_deref())?;
    let dir = &args.model.model;
    if model_type(dir)? != "gpt2" {
        return Err(CliError::Usage(
            "generation needs a GPT-2 model (model_type gpt2)".into(),
        ));
    }
    let model = Gpt2LmHead::load(
        dir,
        &dev,
        LoadOptions {
            allow_unexpected: true,
            ..Default::default()
        },
    )?;
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        Some(Tokenizer::from_file(dir).map_err(kiln_models::Error::from)?)
    } else {
        None
    };
    let prompt: Vec<i64> = match (&args.prompt, &args.input_ids) {
        (Some(text), _) => {
            let tok = tokenizer.as_ref().ok_or_else(|| {
                CliError::Usage(format!(
                    "{} has no tokenizer.json; pass --input-ids instead of --prompt",
                    dir.display()
                ))
            })?;
            tok.encode(text, false)
                .map_err(kiln_models::Error::from)?
                .into_iter()
                .map(i64::from)
                .collect()
        }
        (None, Some(ids)) => {
            let rows = parse_rows(ids, "--input-ids")?;
            if rows.len() != 1 {
                return Err(CliError::Usage("generate takes one prompt (no `;`)".into()));
            }
            rows.into_iter().next().expect("one row")
        }
        (None, None) => return Err(CliError::Usage("give --prompt or --input-ids".into())),
    };
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        eos_token_id: model.config().eos_token_id.map(|e| e as i64),
        use_cache: !args.no_cache,
    };
    let new = generate(&model, &prompt, &config)?;
    let text = match &tokenizer {
        Some(t) => Some(
            t.decode(&new.iter().map(|&i| i as u32).collect::<Vec<_>>(), true)
                .map_err(kiln_models::Error::from)?,
        ),
        None => None,
    };
    if args.json {
        let v = serde_json::json!({ "prompt_ids": prompt, "new_ids": new, "text": text });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(CliError::Json)?
        );
    } else {
        match text {
            Some(t) => println!("{t}"),
            None => println!(
                "{}",
                new.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
    Ok(())
}
