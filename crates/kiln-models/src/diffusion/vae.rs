//! diffusers' `AutoencoderKL` — Stable Diffusion's VAE: an encoder from images to a diagonal
//! Gaussian over latents (`DownEncoderBlock2D`s, a middle block with single-head attention,
//! `quant_conv`) and a decoder back (`post_quant_conv`, `UpDecoderBlock2D`s). Latents are
//! scaled by the config's `scaling_factor` (0.18215 for SD) before the UNet sees them:
//! [`encode_latents`](AutoencoderKl::encode_latents) multiplies, [`decode_latents`](AutoencoderKl::decode_latents)
//! divides.
//!
//! ```
//! use kiln_models::burn::tensor::{Device, Distribution, Tensor};
//! use kiln_models::diffusion::vae::{AutoencoderKl, VaeConfig};
//!
//! let config: VaeConfig = serde_json::from_str(r#"{
//!     "block_out_channels": [8, 16], "norm_num_groups": 4, "latent_channels": 4,
//!     "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
//!     "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]
//! }"#)?;
//! let d = Device::flex();
//! let vae = AutoencoderKl::init(&config, &d)?;
//! let image = Tensor::<4>::random([1, 3, 16, 16], Distribution::Uniform(-1.0, 1.0), &d);
//! let latents = vae.encode_latents(image)?; // the posterior's mean × scaling_factor
//! assert_eq!(latents.dims(), [1, 4, 8, 8]);
//! assert_eq!(vae.decode_latents(latents)?.dims(), [1, 3, 16, 16]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::silu;
use serde::{Deserialize, Serialize};

use super::unet::{ResnetBlock, conv, group_norm, linear, load_group_norm, load_resnet, upsample2};
use crate::common::{merge_heads, multi_head_attention, split_heads};
use crate::error::{Error, Result, config_err};
use crate::weights::{LoadOptions, WeightLoader};

fn d_three() -> usize {
    3
}
fn d_blocks() -> Vec<usize> {
    vec![64]
}
fn d_down() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn d_up() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn d_one() -> usize {
    1
}
fn d_latent() -> usize {
    4
}
fn d_groups() -> usize {
    32
}
fn d_scale() -> f64 {
    0.18215
}
fn d_true() -> bool {
    true
}
fn d_silu() -> String {
    "silu".into()
}

/// A diffusers `AutoencoderKL` config (`vae/config.json`); defaults are diffusers'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    /// Image channels in.
    #[serde(default = "d_three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "d_three")]
    pub out_channels: usize,
    /// Channels per level.
    #[serde(default = "d_blocks")]
    pub block_out_channels: Vec<usize>,
    /// `DownEncoderBlock2D` per level.
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    /// `UpDecoderBlock2D` per level.
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    /// ResNet blocks per encoder level (decoder levels have one more).
    #[serde(default = "d_one")]
    pub layers_per_block: usize,
    /// Latent channels.
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    /// Latent scale (SD: 0.18215).
    #[serde(default = "d_scale")]
    pub scaling_factor: f64,
    /// Must be `silu`.
    #[serde(default = "d_silu")]
    pub act_fn: String,
    /// Must be `true`.
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    /// Must be unset (SDXL-style latent statistics are not implemented).
    #[serde(default)]
    pub latents_mean: Option<serde_json::Value>,
    /// Must be `true` (the quant convs).
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    /// Must be `true`.
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
}

impl VaeConfig {
    /// Reads `vae/config.json`.
    ///
    /// # Errors
    /// I/O and JSON errors naming the file; [`check`](Self::check)'s.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let c: Self = crate::common::read_json(path.as_ref(), "a VAE config")?;
        c.check()?;
        Ok(c)
    }

    /// Refuses options kiln does not implement, naming the field.
    ///
    /// # Errors
    /// [`Error::Config`].
    pub fn check(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        let bad = |field: &str, value: String, allowed: &str| {
            Err(config_err(format!(
                "vae/config.json: `{field}` = {value} is not supported; kiln implements {allowed}"
            )))
        };
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(config_err(format!(
                "vae/config.json: {n} `block_out_channels`, {} `down_block_types` and {} `up_block_types` must agree",
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return bad("down_block_types", format!("\"{t}\""), "DownEncoderBlock2D");
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return bad("up_block_types", format!("\"{t}\""), "UpDecoderBlock2D");
        }
        for (field, ok, value, allowed) in [
            ("act_fn", self.act_fn == "silu", self.act_fn.clone(), "silu"),
            (
                "mid_block_add_attention",
                self.mid_block_add_attention,
                "false".into(),
                "true",
            ),
            (
                "latents_mean",
                self.latents_mean
                    .as_ref()
                    .is_none_or(serde_json::Value::is_null),
                "set".into(),
                "none",
            ),
            (
                "use_quant_conv",
                self.use_quant_conv && self.use_post_quant_conv,
                "false".into(),
                "true (use_quant_conv and use_post_quant_conv)",
            ),
        ] {
            if !ok {
                return bad(field, value, allowed);
            }
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| !c.is_multiple_of(self.norm_num_groups))
        {
            return Err(config_err(format!(
                "vae/config.json: {c} channels are not a multiple of `norm_num_groups` {}",
                self.norm_num_groups
            )));
        }
        Ok(())
    }
}

/// The middle block's single-head attention over positions, with its own GroupNorm and a
/// residual connection.
#[derive(Module, Debug)]
pub struct VaeAttention {
    /// GroupNorm.
    pub group_norm: GroupNorm,
    /// Queries.
    pub to_q: Linear,
    /// Keys.
    pub to_k: Linear,
    /// Values.
    pub to_v: Linear,
    /// Output.
    pub to_out: Linear,
}

impl VaeAttention {
    fn new(c: &VaeConfig, ch: usize, d: &Device) -> Self {
        Self {
            group_norm: group_norm(c.norm_num_groups, ch, 1e-6, d),
            to_q: linear(ch, ch, true, d),
            to_k: linear(ch, ch, true, d),
            to_v: linear(ch, ch, true, d),
            to_out: linear(ch, ch, true, d),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let t = self
            .group_norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let q = split_heads(self.to_q.forward(t.clone()), 1);
        let k = split_heads(self.to_k.forward(t.clone()), 1);
        let v = split_heads(self.to_v.forward(t), 1);
        let no_dropout = burn::nn::DropoutConfig::new(0.0).init();
        let y = multi_head_attention(
            (q, k, v),
            None,
            None,
            1.0 / (c as f64).sqrt(),
            false,
            &no_dropout,
        );
        let y = self
            .to_out
            .forward(merge_heads(y))
            .swap_dims(1, 2)
            .reshape([b, c, h, w]);
        y + x
    }
}

/// ResNet, attention, ResNet (no time embedding).
#[derive(Module, Debug)]
pub struct VaeMid {
    /// Two ResNet blocks.
    pub resnets: Vec<ResnetBlock>,
    /// The attention.
    pub attention: VaeAttention,
}

impl VaeMid {
    fn new(c: &VaeConfig, ch: usize, d: &Device) -> Self {
        Self {
            resnets: (0..2)
                .map(|_| ResnetBlock::with(c.norm_num_groups, 1e-6, ch, ch, None, d))
                .collect(),
            attention: VaeAttention::new(c, ch, d),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.resnets[0].forward(x, None);
        let x = self.attention.forward(x);
        self.resnets[1].forward(x, None)
    }
}

/// One encoder or decoder level: ResNet blocks, then a resampling conv (absent at the end).
#[derive(Module, Debug)]
pub struct VaeLevel {
    /// ResNet blocks.
    pub resnets: Vec<ResnetBlock>,
    /// Stride-2 conv (encoder, after padding right and bottom by one) or ×2 nearest + conv.
    pub resample: Option<Conv2d>,
}

/// `AutoencoderKL`. See the [module docs](self).
#[derive(Module, Debug)]
pub struct AutoencoderKl {
    /// Encoder input conv.
    pub enc_conv_in: Conv2d,
    /// Encoder levels.
    pub enc_down: Vec<VaeLevel>,
    /// Encoder middle.
    pub enc_mid: VaeMid,
    /// Encoder output norm.
    pub enc_norm_out: GroupNorm,
    /// Encoder output conv (mean and log-variance).
    pub enc_conv_out: Conv2d,
    /// 1×1 conv on the moments.
    pub quant_conv: Conv2d,
    /// 1×1 conv on the latents.
    pub post_quant_conv: Conv2d,
    /// Decoder input conv.
    pub dec_conv_in: Conv2d,
    /// Decoder middle.
    pub dec_mid: VaeMid,
    /// Decoder levels.
    pub dec_up: Vec<VaeLevel>,
    /// Decoder output norm.
    pub dec_norm_out: GroupNorm,
    /// Decoder output conv.
    pub dec_conv_out: Conv2d,
    /// The configuration.
    #[module(skip)]
    pub config: VaeConfig,
}

/// The encoder's diagonal Gaussian over (unscaled) latents.
#[derive(Debug, Clone)]
pub struct Posterior {
    /// Mean `[B, latent, h, w]`.
    pub mean: Tensor<4>,
    /// Log-variance, clamped to [−30, 20] as diffusers.
    pub logvar: Tensor<4>,
}

impl Posterior {
    /// `mean + exp(logvar / 2) · noise` (noise standard normal, shaped like the mean).
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + self.logvar.clone().mul_scalar(0.5).exp() * noise
    }
}

impl AutoencoderKl {
    /// A randomly initialised VAE.
    ///
    /// # Errors
    /// [`VaeConfig::check`]'s.
    pub fn init(config: &VaeConfig, d: &Device) -> Result<Self> {
        config.check()?;
        let c = config;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let g = c.norm_num_groups;
        let res = |i: usize, o: usize| ResnetBlock::with(g, 1e-6, i, o, None, d);
        let mut prev = ch[0];
        let enc_down = (0..n)
            .map(|i| {
                let (input, output) = (prev, ch[i]);
                prev = output;
                VaeLevel {
                    resnets: (0..c.layers_per_block)
                        .map(|j| res(if j == 0 { input } else { output }, output))
                        .collect(),
                    resample: (i + 1 < n).then(|| {
                        burn::nn::conv::Conv2dConfig::new([output, output], [3, 3])
                            .with_stride([2, 2])
                            .init(d)
                    }),
                }
            })
            .collect();
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut prev = rev[0];
        let dec_up = (0..n)
            .map(|i| {
                let output = rev[i];
                let input = prev;
                prev = output;
                VaeLevel {
                    resnets: (0..=c.layers_per_block)
                        .map(|j| res(if j == 0 { input } else { output }, output))
                        .collect(),
                    resample: (i + 1 < n).then(|| conv(output, output, 3, 1, d)),
                }
            })
            .collect();
        let lc = c.latent_channels;
        Ok(Self {
            enc_conv_in: conv(c.in_channels, ch[0], 3, 1, d),
            enc_down,
            enc_mid: VaeMid::new(c, ch[n - 1], d),
            enc_norm_out: group_norm(g, ch[n - 1], 1e-6, d),
            enc_conv_out: conv(ch[n - 1], 2 * lc, 3, 1, d),
            quant_conv: conv(2 * lc, 2 * lc, 1, 1, d),
            post_quant_conv: conv(lc, lc, 1, 1, d),
            dec_conv_in: conv(lc, ch[n - 1], 3, 1, d),
            dec_mid: VaeMid::new(c, ch[n - 1], d),
            dec_up,
            dec_norm_out: group_norm(g, ch[0], 1e-6, d),
            dec_conv_out: conv(ch[0], c.out_channels, 3, 1, d),
            config: config.clone(),
        })
    }

    /// The posterior over latents of `images` `[B, in_channels, H, W]` (values in [−1, 1]; H
    /// and W multiples of 2^(levels − 1)).
    ///
    /// # Errors
    /// [`Error::Input`] for images that do not fit.
    pub fn encode(&self, images: Tensor<4>) -> Result<Posterior> {
        let c = &self.config;
        let [_, ch, h, w] = images.dims();
        let f = 1usize << (c.block_out_channels.len() - 1);
        if ch != c.in_channels || h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(Error::Input {
                message: format!(
                    "images are {ch}×{h}×{w}; the VAE takes {} channels and sides that are multiples of {f}",
                    c.in_channels
                ),
            });
        }
        let mut x = self.enc_conv_in.forward(images);
        for level in &self.enc_down {
            for r in &level.resnets {
                x = r.forward(x, None);
            }
            if let Some(down) = &level.resample {
                // diffusers pads right and bottom by one, then a stride-2 conv without padding
                x = down.forward(x.pad((0, 1, 0, 1), burn::tensor::ops::PadMode::Constant(0.0)));
            }
        }
        x = self.enc_mid.forward(x);
        let m = self.quant_conv.forward(
            self.enc_conv_out
                .forward(silu(self.enc_norm_out.forward(x))),
        );
        let lc = c.latent_channels;
        Ok(Posterior {
            mean: m.clone().narrow(1, 0, lc),
            logvar: m.narrow(1, lc, lc).clamp(-30.0, 20.0),
        })
    }

    /// Images `[B, out_channels, H, W]` from (unscaled) latents `[B, latent_channels, h, w]`.
    ///
    /// # Errors
    /// [`Error::Input`] for latents with another channel count.
    pub fn decode(&self, latents: Tensor<4>) -> Result<Tensor<4>> {
        let lc = latents.dims()[1];
        if lc != self.config.latent_channels {
            return Err(Error::Input {
                message: format!(
                    "latents have {lc} channels; the VAE takes {} (latent_channels)",
                    self.config.latent_channels
                ),
            });
        }
        let mut x = self
            .dec_conv_in
            .forward(self.post_quant_conv.forward(latents));
        x = self.dec_mid.forward(x);
        for level in &self.dec_up {
            for r in &level.resnets {
                x = r.forward(x, None);
            }
            if let Some(up) = &level.resample {
                x = up.forward(upsample2(x));
            }
        }
        Ok(self
            .dec_conv_out
            .forward(silu(self.dec_norm_out.forward(x))))
    }

    /// What a pipeline feeds the UNet: the posterior's mean × `scaling_factor` (diffusers'
    /// `latent_dist.mode()`; use [`encode`](Self::encode) and [`Posterior::sample`] to sample).
    ///
    /// # Errors
    /// As [`encode`](Self::encode).
    pub fn encode_latents(&self, images: Tensor<4>) -> Result<Tensor<4>> {
        Ok(self
            .encode(images)?
            .mean
            .mul_scalar(self.config.scaling_factor as f32))
    }

    /// Images from scaled latents (divided by `scaling_factor` first), as a pipeline decodes.
    ///
    /// # Errors
    /// As [`decode`](Self::decode).
    pub fn decode_latents(&self, latents: Tensor<4>) -> Result<Tensor<4>> {
        self.decode(latents.div_scalar(self.config.scaling_factor as f32))
    }

    /// Loads a diffusers `vae/` directory: `config.json` and
    /// `diffusion_pytorch_model.safetensors` (or shards), with diffusers' names (and the
    /// older `query`/`key`/`value`/`proj_attn` attention names).
    ///
    /// # Errors
    /// Config errors naming the field; checkpoint, missing, unexpected and shape errors naming
    /// the tensor.
    pub fn load(dir: impl AsRef<Path>, device: &Device, options: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let config = VaeConfig::from_file(dir.join("config.json"))?;
        let mut m = Self::init(&config, device)?;
        let ckpt = kiln_checkpoint::Checkpoint::open(dir)?;
        let mut w = WeightLoader::new(&ckpt, device, "");
        w.conv2d("encoder.conv_in", &mut m.enc_conv_in)?;
        for (i, level) in m.enc_down.iter_mut().enumerate() {
            for (j, r) in level.resnets.iter_mut().enumerate() {
                load_resnet(&mut w, &format!("encoder.down_blocks.{i}.resnets.{j}"), r)?;
            }
            if let Some(c) = level.resample.as_mut() {
                w.conv2d(&format!("encoder.down_blocks.{i}.downsamplers.0.conv"), c)?;
            }
        }
        load_mid(&mut w, "encoder.mid_block", &mut m.enc_mid)?;
        load_group_norm(&mut w, "encoder.conv_norm_out", &mut m.enc_norm_out)?;
        w.conv2d("encoder.conv_out", &mut m.enc_conv_out)?;
        w.conv2d("quant_conv", &mut m.quant_conv)?;
        w.conv2d("post_quant_conv", &mut m.post_quant_conv)?;
        w.conv2d("decoder.conv_in", &mut m.dec_conv_in)?;
        load_mid(&mut w, "decoder.mid_block", &mut m.dec_mid)?;
        for (i, level) in m.dec_up.iter_mut().enumerate() {
            for (j, r) in level.resnets.iter_mut().enumerate() {
                load_resnet(&mut w, &format!("decoder.up_blocks.{i}.resnets.{j}"), r)?;
            }
            if let Some(c) = level.resample.as_mut() {
                w.conv2d(&format!("decoder.up_blocks.{i}.upsamplers.0.conv"), c)?;
            }
        }
        load_group_norm(&mut w, "decoder.conv_norm_out", &mut m.dec_norm_out)?;
        w.conv2d("decoder.conv_out", &mut m.dec_conv_out)?;
        w.finish(options, |_| false)?;
        Ok(m)
    }
}

fn load_mid(w: &mut WeightLoader<'_>, p: &str, mid: &mut VaeMid) -> Result<()> {
    for (j, r) in mid.resnets.iter_mut().enumerate() {
        load_resnet(w, &format!("{p}.resnets.{j}"), r)?;
    }
    let a = &mut mid.attention;
    let q = format!("{p}.attentions.0");
    load_group_norm(w, &format!("{q}.group_norm"), &mut a.group_norm)?;
    // diffusers < 0.14 named them query/key/value/proj_attn
    let old = w.has(&format!("{q}.query.weight"));
    for (new, legacy, lin) in [
        ("to_q", "query", &mut a.to_q),
        ("to_k", "key", &mut a.to_k),
        ("to_v", "value", &mut a.to_v),
        ("to_out.0", "proj_attn", &mut a.to_out),
    ] {
        let name = if old { legacy } else { new };
        w.linear_out_in(&format!("{q}.{name}"), lin)?;
    }
    Ok(())
}
