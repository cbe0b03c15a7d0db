//! `kiln run logits|generate|diffuse|forward --model DIR`: try a GPT-2 or BERT checkpoint, or make an
//! image with a diffusers pipeline.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use kiln_checkpoint::Dtype;
use kiln_data::tokenizer::Tokenizer;
use kiln_models::auto::{AutoModel, TokenBatch};
use kiln_models::burn::prelude::*;
use kiln_models::generate::{GenerationConfig, generate};
use kiln_models::{LoadOptions, device_from_name};

use crate::error::CliError;

/// Run a Hugging Face GPT-2 or BERT checkpoint, or a diffusers Stable Diffusion pipeline.
#[derive(Debug, Subcommand)]
pub(crate) enum RunCommand {
    /// Write the logits for given token ids to a safetensors file.
    Logits(LogitsArgs),
    /// Generate text with a GPT-2 model (greedy, or sampled with --temperature).
    Generate(GenerateArgs),
    /// Make an image with a diffusers Stable Diffusion pipeline directory (classifier-free
    /// guided DDIM, DDPM or Euler sampling), or run the same loop from given embeddings and
    /// initial latents and write the final latents.
    Diffuse(crate::diffuse::DiffuseArgs),
    /// One forward pass of a diffusers UNet or VAE directory: named tensors in, named tensors
    /// out (safetensors).
    Forward(crate::diffuse::ForwardArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ModelArgs {
    /// Model directory (config.json + model.safetensors or shards); model_type gpt2 or bert. Its
    /// head comes from `architectures` in config.json.
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
    /// the right (with pad_token_id, else GPT-2's eos_token_id, else 0 — padding is masked, so it
    /// changes no real token's logits) and an `attention_mask` is written beside the logits.
    /// Every id must be below the model's vocab_size.
    #[arg(long, value_name = "IDS")]
    input_ids: String,
    /// Token types, same layout as --input-ids [default: none — BERT then uses type 0]. BERT:
    /// below type_vocab_size. GPT-2: below vocab_size, added through the token embedding as
    /// transformers does.
    #[arg(long, value_name = "IDS")]
    token_type_ids: Option<String>,
    /// A PEFT LoRA adapter directory to apply (adapter_config.json + adapter_model.safetensors).
    /// Repeat to apply several. The adapters are merged into a temporary copy of the model in f32
    /// (in the system temp directory; as much disk as the model), which gives the adapter's
    /// logits up to float rounding.
    #[arg(long, value_name = "DIR")]
    adapter: Vec<PathBuf>,
    /// One weight per --adapter, comma separated: ΔW = Σ wᵢ·scaleᵢ·Bᵢ·Aᵢ, PEFT's
    /// `add_weighted_adapter(..., combination_type="cat")` [default: 1 for each].
    #[arg(
        long,
        value_name = "W,W,...",
        value_delimiter = ',',
        requires = "adapter"
    )]
    adapter_weights: Vec<f64>,
    /// Output safetensors file: `logits` f32 [batch, seq, vocab] for LM heads (GPT2LMHeadModel,
    /// BertForMaskedLM), [batch, seq, labels] for BertForTokenClassification, [batch, labels] for
    /// *ForSequenceClassification — the head `architectures` in config.json names (or, without
    /// it, the head weights present) — and `attention_mask` i64 [batch, seq] when rows differ in
    /// length. Models without token logits (GPT2ForMultipleChoice, GPT2Model, BertModel) are
    /// refused. Written atomically; never onto or inside the model directory.
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
        RunCommand::Diffuse(a) => {
            let dev = device(a.device_name())?;
            crate::diffuse::diffuse(a, dev)
        }
        RunCommand::Forward(a) => {
            let dev = device(a.device_name())?;
            crate::diffuse::forward(a, dev)
        }
    }
}

fn device(name: Option<&str>) -> Result<Device, CliError> {
    Ok(match name {
        Some(n) => device_from_name(n)?,
        None => kiln_models::device_from_env()?,
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

fn logits(args: LogitsArgs) -> Result<(), CliError> {
    let dir = &args.model.model;
    // Before any work: the logits must not replace the weights they come from.
    let mut inputs = vec![("the model".to_owned(), dir.clone())];
    inputs.extend(
        args.adapter
            .iter()
            .map(|a| ("an adapter".to_owned(), a.clone())),
    );
    kiln_checkpoint::paths::check_output(&args.output, &inputs)?;
    let dev = device(args.model.device.as_deref())?;
    // With adapters: merge them into a temporary copy and load that.
    let merged = if args.adapter.is_empty() {
        None
    } else {
        let weights = crate::lora::weights(args.adapter.len(), &args.adapter_weights)?;
        let adapters = crate::lora::load_adapters(&args.adapter)?;
        let tmp = tempfile::Builder::new()
            .prefix("kiln-adapter-")
            .tempdir()
            .map_err(|source| CliError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        // An interrupted run removes the scratch copy too (the handler's interrupt_cleanup);
        // the guard is dropped before `tmp`, which removes it at the end.
        let guard = kiln_checkpoint::register_scratch(tmp.path());
        let out = tmp.path().join("merged");
        crate::lora::merge_with_progress(dir, &adapters, &weights, &out, Default::default())?;
        Some((guard, tmp, out))
    };
    let load_dir = merged.as_ref().map_or(dir, |(_, _, p)| p);
    let batch = TokenBatch {
        input_ids: parse_rows(&args.input_ids, "--input-ids")?,
        token_type_ids: args
            .token_type_ids
            .as_deref()
            .map(|t| parse_rows(t, "--token-type-ids"))
            .transpose()?,
    };
    let model = AutoModel::load(load_dir, &dev, LoadOptions::default())?;
    let out = model.logits(&batch)?;
    let logit_bytes = bytemuck_f32(&out.values);
    let mask_bytes: Vec<u8> = out
        .attention_mask
        .iter()
        .flat_map(|m| m.to_le_bytes())
        .collect();
    let mshape = [batch.input_ids.len(), out.seq_len];
    let mut tensors: Vec<(&str, Dtype, &[usize], &[u8])> =
        vec![("logits", Dtype::F32, &out.shape, &logit_bytes)];
    if out.ragged {
        tensors.push(("attention_mask", Dtype::I64, &mshape, &mask_bytes));
    }
    let mut meta = BTreeMap::from([
        ("model".to_owned(), dir.display().to_string()),
        ("architecture".to_owned(), model.architecture().to_owned()),
    ]);
    if !args.adapter.is_empty() {
        let names: Vec<String> = args
            .adapter
            .iter()
            .map(|a| a.display().to_string())
            .collect();
        meta.insert("adapters".to_owned(), names.join(","));
        if !args.adapter_weights.is_empty() {
            let w: Vec<String> = args.adapter_weights.iter().map(f64::to_string).collect();
            meta.insert("adapter_weights".to_owned(), w.join(","));
        }
    }
    kiln_checkpoint::write_file(&args.output, &tensors, &meta)?;
    println!(
        "wrote {} logits {:?} to {}",
        model.architecture(),
        out.shape,
        args.output.display()
    );
    Ok(())
}

fn bytemuck_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn generate_text(args: GenerateArgs) -> Result<(), CliError> {
    let dev = device(args.model.device.as_deref())?;
    let dir = &args.model.model;
    let model = match AutoModel::load(dir, &dev, LoadOptions::default())? {
        AutoModel::Gpt2Lm(m) => m,
        other => {
            return Err(CliError::Usage(format!(
                "generation needs a GPT-2 language model (GPT2LMHeadModel); {} holds {}",
                dir.display(),
                other.architecture()
            )));
        }
    };
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        Some(Tokenizer::from_file(dir)?)
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
            tok.encode(text, false)?
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
        Some(t) => Some(t.decode(&new.iter().map(|&i| i as u32).collect::<Vec<_>>(), true)?),
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
