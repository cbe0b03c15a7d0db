//! `kiln run diffuse`: text-to-image with a diffusers Stable Diffusion pipeline directory, or
//! the same sampling loop from given embeddings and initial latents (for parity checks and
//! scripts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use kiln_checkpoint::{Checkpoint, Dtype};
use kiln_data::tokenizer::Tokenizer;
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::{Distribution, TensorData};
use kiln_models::diffusion::pipeline::{Pipeline, SampleOptions};
use kiln_models::diffusion::scheduler::Kind;

use crate::error::CliError;
use crate::progress::Bar;

/// The sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SchedulerArg {
    /// DDIM (deterministic with --eta 0).
    Ddim,
    /// DDPM (ancestral: draws noise every step, seeded by --seed).
    Ddpm,
    /// Euler discrete.
    Euler,
}

#[derive(Debug, Args)]
pub(crate) struct DiffuseArgs {
    /// A diffusers pipeline directory (model_index.json, unet/, scheduler/, and vae/,
    /// text_encoder/, tokenizer/ as the options below need them).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// The prompt. Needs text_encoder/ and tokenizer/ with tokenizer.json or CLIP's
    /// vocab.json + merges.txt (as Stable Diffusion pipelines ship them).
    #[arg(
        long,
        conflicts_with = "prompt_embeds",
        required_unless_present = "prompt_embeds"
    )]
    prompt: Option<String>,
    /// What to steer away from, for classifier-free guidance [default: the empty prompt].
    #[arg(long, conflicts_with = "negative_embeds")]
    negative_prompt: Option<String>,
    /// Prompt embeddings instead of --prompt: a safetensors file with `prompt_embeds`
    /// [batch, tokens, cross_attention_dim] (f32, f16 or bf16).
    #[arg(long, value_name = "FILE")]
    prompt_embeds: Option<PathBuf>,
    /// Negative embeddings with --prompt-embeds (`negative_embeds`, same shape); needed when
    /// --guidance > 1.
    #[arg(long, value_name = "FILE", requires = "prompt_embeds")]
    negative_embeds: Option<PathBuf>,
    /// Initial noise: a safetensors file with `latents` [batch, channels, h, w] (standard
    /// normal; multiplied by the scheduler's init_noise_sigma) [default: drawn with --seed].
    #[arg(long, value_name = "FILE")]
    init_latents: Option<PathBuf>,
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale; 1 or less turns guidance off.
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// The sampler [default: the pipeline's scheduler_config.json `_class_name`], on the
    /// pipeline's noise schedule.
    #[arg(long, value_enum)]
    scheduler: Option<SchedulerArg>,
    /// DDIM's η: 0 is deterministic, 1 is DDPM-like.
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Seed of the initial noise and of stochastic steps.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image height in pixels [default: the UNet's sample_size × the VAE's downscaling].
    #[arg(long)]
    height: Option<usize>,
    /// Image width in pixels [default: as --height].
    #[arg(long)]
    width: Option<usize>,
    /// Write the image here (PNG, 8-bit RGB; needs vae/). Written atomically.
    #[arg(long, value_name = "FILE", required_unless_present = "output_latents")]
    output: Option<PathBuf>,
    /// Write the final latents here (safetensors, `latents` f32) — no VAE needed.
    #[arg(long, value_name = "FILE")]
    output_latents: Option<PathBuf>,
    /// Device: cpu, cuda[:N] (`cuda` feature), wgpu (`wgpu` feature) [default: KILN_DEVICE,
    /// else cpu].
    #[arg(long)]
    device: Option<String>,
}

impl DiffuseArgs {
    pub(crate) fn device_name(&self) -> Option<&str> {
        self.device.as_deref()
    }
}

fn read_tensor<const D: usize>(
    path: &Path,
    name: &str,
    device: &Device,
) -> Result<Tensor<D>, CliError> {
    let ckpt = Checkpoint::open(path)?;
    let names: Vec<String> = ckpt.names().map(str::to_owned).collect();
    let key = if ckpt.contains(name) {
        name.to_owned()
    } else if names.len() == 1 {
        names[0].clone()
    } else {
        return Err(CliError::Usage(format!(
            "{}: no tensor `{name}` (it holds {})",
            path.display(),
            names.join(", ")
        )));
    };
    let t = ckpt.tensor(&key)?;
    let shape: [usize; D] = t.shape().try_into().map_err(|_| {
        CliError::Usage(format!(
            "{}: `{key}` has shape {:?}; expected {D} dimensions",
            path.display(),
            t.shape()
        ))
    })?;
    Ok(Tensor::from_data(
        TensorData::new(t.to_f32()?, shape),
        device,
    ))
}

/// Token ids padded (or cut) to the text encoder's length, as diffusers' pipelines tokenise.
fn tokenize(tok: &Tokenizer, text: &str, len: usize, dir: &Path) -> Result<Vec<i64>, CliError> {
    let mut ids: Vec<i64> = tok.encode(text, true)?.into_iter().map(i64::from).collect();
    if ids.len() > len {
        // keep the end token last, as truncation with special tokens does
        let last = *ids.last().unwrap_or(&0);
        ids.truncate(len);
        if let Some(l) = ids.last_mut() {
            *l = last;
        }
    }
    let special = tok.special_ids();
    let pad = pad_id(tok, dir)?
        .or(special.pad)
        .or(special.sep)
        .unwrap_or(0);
    ids.resize(len, i64::from(pad));
    Ok(ids)
}

/// The pad token named by `tokenizer_config.json` (`pad_token`), if any.
fn pad_id(tok: &Tokenizer, dir: &Path) -> Result<Option<u32>, CliError> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| CliError::Io {
        path: path.clone(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(CliError::Json)?;
    let name = match &v["pad_token"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => {
            o.get("content").and_then(|c| c.as_str()).map(str::to_owned)
        }
        _ => None,
    };
    Ok(name.and_then(|n| tok.inner().token_to_id(&n)))
}

fn encode_prompt(pipe: &Pipeline, text: &str, device: &Device) -> Result<Tensor<3>, CliError> {
    let encoder = pipe.text_encoder.as_ref().ok_or_else(|| {
        CliError::Usage(format!(
            "{}: the pipeline has no text_encoder/; pass --prompt-embeds",
            pipe.dir.display()
        ))
    })?;
    let tdir = pipe.dir.join("tokenizer");
    let has_clip_files = tdir.join("vocab.json").is_file() && tdir.join("merges.txt").is_file();
    if !tdir.join("tokenizer.json").is_file() && !has_clip_files {
        return Err(CliError::Usage(format!(
            "{}: no tokenizer (kiln reads tokenizer.json, or CLIP's vocab.json + merges.txt); \
             pass --prompt-embeds instead",
            tdir.display()
        )));
    }
    let tok = Tokenizer::from_file(&tdir)?;
    let len = encoder.config.max_position_embeddings;
    let ids = tokenize(&tok, text, len, &tdir)?;
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), device);
    Ok(encoder.forward(ids, None)?.last_hidden_state)
}

/// `[1, 3, H, W]` in [0, 1] → 8-bit RGB PNG bytes.
fn png_bytes(image: Tensor<4>) -> Result<Vec<u8>, CliError> {
    let [_, c, h, w] = image.dims();
    let v: Vec<f32> = image
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| CliError::Usage(format!("reading the image: {e:?}")))?;
    let mut rgb = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            for ch in 0..3 {
                let val = v[(ch.min(c - 1) * h + y) * w + x];
                rgb.push((val * 255.0).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc
            .write_header()
            .map_err(|e| CliError::Usage(format!("encoding the PNG: {e}")))?;
        writer
            .write_image_data(&rgb)
            .map_err(|e| CliError::Usage(format!("encoding the PNG: {e}")))?;
    }
    Ok(out)
}

pub(crate) fn diffuse(args: DiffuseArgs, device: Device) -> Result<(), CliError> {
    let mut inputs = vec![("the pipeline".to_owned(), args.model.clone())];
    for (what, p) in [
        ("the prompt embeddings", &args.prompt_embeds),
        ("the negative embeddings", &args.negative_embeds),
        ("the initial latents", &args.init_latents),
    ] {
        if let Some(p) = p {
            inputs.push((what.to_owned(), p.clone()));
        }
    }
    for out in [&args.output, &args.output_latents].into_iter().flatten() {
        kiln_checkpoint::paths::check_output(out, &inputs)?;
    }
    if let (Some(image), Some(latents)) = (&args.output, &args.output_latents) {
        kiln_checkpoint::paths::check_output(
            image,
            &[("--output-latents".to_owned(), latents.clone())],
        )?;
    }
    if args.steps == 0 {
        return Err(CliError::Usage("--steps must be at least 1".into()));
    }
    let pipe = Pipeline::load(&args.model, &device)?;
    if args.output.is_some() && pipe.vae.is_none() {
        return Err(CliError::Usage(format!(
            "{}: the pipeline has no vae/ to make an image with; use --output-latents",
            args.model.display()
        )));
    }
    let guided = args.guidance > 1.0;
    let (pos, neg) = match &args.prompt_embeds {
        Some(p) => {
            let pos: Tensor<3> = read_tensor(p, "prompt_embeds", &device)?;
            let neg = match &args.negative_embeds {
                Some(n) => Some(read_tensor::<3>(n, "negative_embeds", &device)?),
                None if guided => {
                    return Err(CliError::Usage(format!(
                        "--guidance {} > 1 needs --negative-embeds with --prompt-embeds (or --guidance 1)",
                        args.guidance
                    )));
                }
                None => None,
            };
            (pos, neg)
        }
        None => {
            let text = args.prompt.as_deref().unwrap_or_default();
            let pos = encode_prompt(&pipe, text, &device)?;
            let neg = if guided {
                Some(encode_prompt(
                    &pipe,
                    args.negative_prompt.as_deref().unwrap_or(""),
                    &device,
                )?)
            } else {
                None
            };
            (pos, neg)
        }
    };
    let batch = pos.dims()[0];
    let channels = pipe.unet.config.in_channels;
    let factor = pipe
        .vae
        .as_ref()
        .map_or(8, |v| 1usize << (v.config.block_out_channels.len() - 1));
    let init: Tensor<4> = match &args.init_latents {
        Some(p) => read_tensor(p, "latents", &device)?,
        None => {
            let side = pipe.unet.config.sample_size.unwrap_or(64) * factor;
            let (h, w) = (
                args.height.unwrap_or(side),
                args.width.or(args.height).unwrap_or(side),
            );
            if h % factor != 0 || w % factor != 0 {
                return Err(CliError::Usage(format!(
                    "--height {h} and --width {w} must be multiples of {factor} (the VAE's downscaling)"
                )));
            }
            device.seed(args.seed);
            Tensor::random(
                [batch, channels, h / factor, w / factor],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
        }
    };
    let options = SampleOptions {
        steps: args.steps,
        guidance: args.guidance,
        scheduler: args.scheduler.map(|s| match s {
            SchedulerArg::Ddim => Kind::Ddim,
            SchedulerArg::Ddpm => Kind::Ddpm,
            SchedulerArg::Euler => Kind::Euler,
        }),
        eta: args.eta,
    };
    let shape = init.dims();
    let noise_device = device.clone();
    let seed = args.seed;
    let bar = Bar::new(args.steps as u64, "steps", "sampling");
    let latents = pipe.sample(
        pos,
        neg,
        init,
        &options,
        |i| {
            noise_device.seed(seed.wrapping_add(1 + i as u64));
            Tensor::random(shape, Distribution::Normal(0.0, 1.0), &noise_device)
        },
        |i, _| bar.set(i as u64),
    )?;
    bar.finish();
    let meta = BTreeMap::from([
        ("pipeline".to_owned(), args.model.display().to_string()),
        ("steps".to_owned(), args.steps.to_string()),
        ("guidance".to_owned(), args.guidance.to_string()),
        ("seed".to_owned(), args.seed.to_string()),
    ]);
    if let Some(path) = &args.output_latents {
        let dims = latents.dims();
        let v: Vec<f32> = latents
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| CliError::Usage(format!("reading the latents: {e:?}")))?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        kiln_checkpoint::write_file(path, &[("latents", Dtype::F32, &dims, &bytes)], &meta)?;
        eprintln!("wrote latents {dims:?} to {}", path.display());
    }
    if let Some(path) = &args.output {
        let images = pipe.decode(latents)?;
        let [b, ..] = images.dims();
        if b != 1 {
            return Err(CliError::Usage(format!(
                "{b} images: --output writes one PNG; give one prompt (or use --output-latents)"
            )));
        }
        kiln_checkpoint::write_atomic(path, &png_bytes(images)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct ForwardArgs {
    /// A diffusers component directory: `unet/` (UNet2DConditionModel) or `vae/`
    /// (AutoencoderKL), told apart by `_class_name` in its config.json.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Named input tensors (safetensors). UNet: `sample` [B, C, H, W], `timestep` [1] or [B]
    /// (f32), `encoder_hidden_states` [B, L, cross_attention_dim]. VAE: `sample` — latents
    /// [B, latent_channels, h, w] to decode (unscaled, as diffusers' `vae.decode`), or an image
    /// [B, in_channels, H, W] in [−1, 1] to encode with `--encode`.
    #[arg(long, value_name = "FILE")]
    inputs: PathBuf,
    /// VAE: encode `sample` and write the posterior's `mean` and `logvar` instead of decoding.
    #[arg(long)]
    encode: bool,
    /// Output safetensors: `sample` (the UNet's prediction, or the decoded image), or `mean` and
    /// `logvar` with --encode. Written atomically, never onto or inside an input.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Device: cpu, cuda[:N] (`cuda` feature), wgpu (`wgpu` feature) [default: KILN_DEVICE,
    /// else cpu].
    #[arg(long)]
    device: Option<String>,
}

impl ForwardArgs {
    pub(crate) fn device_name(&self) -> Option<&str> {
        self.device.as_deref()
    }
}

/// A tensor's shape and little-endian f32 bytes.
type Raw = (Vec<usize>, Vec<u8>);

fn bytes<const D: usize>(t: Tensor<D>) -> Result<Raw, CliError> {
    let dims = t.dims().to_vec();
    let v: Vec<f32> = t
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| CliError::Usage(format!("reading the output: {e:?}")))?;
    Ok((dims, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
}

pub(crate) fn forward(args: ForwardArgs, device: Device) -> Result<(), CliError> {
    use kiln_models::LoadOptions;
    use kiln_models::diffusion::unet::UNet2DConditionModel;
    use kiln_models::diffusion::vae::AutoencoderKl;
    kiln_checkpoint::paths::check_output(
        &args.output,
        &[
            ("the model".to_owned(), args.model.clone()),
            ("the inputs".to_owned(), args.inputs.clone()),
        ],
    )?;
    let config = args.model.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|source| CliError::Io {
        path: config.clone(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(CliError::Json)?;
    let class = v["_class_name"].as_str().unwrap_or_default().to_owned();
    let mut meta = BTreeMap::from([
        ("model".to_owned(), args.model.display().to_string()),
        ("class".to_owned(), class.clone()),
    ]);
    let outputs: Vec<(&str, Raw)> = match class.as_str() {
        "UNet2DConditionModel" => {
            if args.encode {
                return Err(CliError::Usage("--encode is for a VAE".into()));
            }
            let unet = UNet2DConditionModel::load(&args.model, &device, LoadOptions::default())?;
            let sample: Tensor<4> = read_tensor(&args.inputs, "sample", &device)?;
            let t: Tensor<1> = read_named(&args.inputs, "timestep", &device)?;
            let text: Tensor<3> = read_named(&args.inputs, "encoder_hidden_states", &device)?;
            vec![("sample", bytes(unet.forward(sample, t, text)?)?)]
        }
        "AutoencoderKL" => {
            let vae = AutoencoderKl::load(&args.model, &device, LoadOptions::default())?;
            let sample: Tensor<4> = read_tensor(&args.inputs, "sample", &device)?;
            if args.encode {
                meta.insert("direction".into(), "encode".into());
                let post = vae.encode(sample)?;
                vec![("mean", bytes(post.mean)?), ("logvar", bytes(post.logvar)?)]
            } else {
                meta.insert("direction".into(), "decode".into());
                vec![("sample", bytes(vae.decode(sample)?)?)]
            }
        }
        other => {
            return Err(CliError::Usage(format!(
                "{}: `_class_name` is \"{other}\"; `kiln run forward` runs a diffusers UNet2DConditionModel or AutoencoderKL directory (a pipeline's unet/ or vae/)",
                config.display()
            )));
        }
    };
    let tensors: Vec<(&str, Dtype, &[usize], &[u8])> = outputs
        .iter()
        .map(|(n, (d, b))| (*n, Dtype::F32, d.as_slice(), b.as_slice()))
        .collect();
    kiln_checkpoint::write_file(&args.output, &tensors, &meta)?;
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

/// A tensor that must be present by name.
fn read_named<const D: usize>(
    path: &Path,
    name: &str,
    device: &Device,
) -> Result<Tensor<D>, CliError> {
    let ckpt = Checkpoint::open(path)?;
    if !ckpt.contains(name) {
        return Err(CliError::Usage(format!(
            "{}: no tensor `{name}`",
            path.display()
        )));
    }
    read_tensor(path, name, device)
}
