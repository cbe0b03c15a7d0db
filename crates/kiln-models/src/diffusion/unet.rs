//! diffusers' `UNet2DConditionModel` as Stable Diffusion 1.x/2.x uses it: a sinusoidal time
//! embedding, ResNet blocks with GroupNorm, `CrossAttnDownBlock2D` / `DownBlock2D` /
//! `UNetMidBlock2DCrossAttn` / `UpBlock2D` / `CrossAttnUpBlock2D`, and `Transformer2DModel`s
//! (self-attention, cross-attention on the text encoder's states, a GEGLU feed-forward), with
//! the 1×1-conv or linear (`use_linear_projection`, SD 2) projections. Built from a diffusers
//! `unet/config.json` and loaded from `diffusion_pytorch_model.safetensors` (or its shards) with
//! diffusers' tensor names.
//!
//! diffusers reads `attention_head_dim` as the number of heads when `num_attention_heads` is
//! unset (a naming accident kept for compatibility); kiln does the same, so SD 2's
//! `attention_head_dim: [5, 10, 20, 20]` means 5, 10, 20 and 20 heads.
//!
//! [`UNetSpeed`] holds CommonCanvas's model-side speed switches: low-precision GroupNorm and
//! LayerNorm (Composer's `LowPrecisionGroupNorm`/`LowPrecisionLayerNorm`, checked against a
//! transcription) and the attention implementation (fused or materialised scores). What each
//! buys is measured by `cargo xtask repro commoncanvas`, not assumed.
//!
//! ```
//! use kiln_models::burn::tensor::{Device, Distribution, Tensor};
//! use kiln_models::diffusion::unet::{UNet2DConditionModel, UNetConfig};
//!
//! // diffusers' own tiny test configuration
//! let config: UNetConfig = serde_json::from_str(r#"{
//!     "block_out_channels": [4, 8], "norm_num_groups": 4, "cross_attention_dim": 8,
//!     "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
//!     "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
//!     "attention_head_dim": 2, "in_channels": 4, "out_channels": 4,
//!     "layers_per_block": 1, "sample_size": 16
//! }"#)?;
//! let d = Device::flex();
//! let unet = UNet2DConditionModel::init(&config, &d)?;
//! let x = Tensor::<4>::random([1, 4, 16, 16], Distribution::Default, &d);
//! let text = Tensor::<3>::random([1, 4, 8], Distribution::Default, &d);
//! let t = Tensor::<1>::from_floats([10.0], &d);
//! assert_eq!(unet.forward(x.clone(), t.clone(), text.clone())?.dims(), [1, 4, 16, 16]);
//!
//! // the speed switches change how it computes, not the weights
//! use kiln_models::LayerNormPrecision;
//! use kiln_models::diffusion::unet::{AttentionImpl, UNetSpeed};
//! let mut fast = unet.clone();
//! fast.speed = UNetSpeed { norm_precision: LayerNormPrecision::Bf16, attention: AttentionImpl::Fused };
//! assert_eq!(fast.forward(x, t, text)?.dims(), [1, 4, 16, 16]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::prelude::*;
use burn::tensor::activation::silu;
use serde::{Deserialize, Serialize};

use crate::common::{
    LayerNormPrecision, explicit_attention, group_norm_in, layer_norm_rounded, merge_heads,
    multi_head_attention, split_heads,
};
use crate::error::{Error, Result, config_err};
use crate::weights::{LoadOptions, WeightLoader, set};

/// An int or one value per block (`attention_head_dim`, `num_attention_heads`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same for every block.
    One(usize),
    /// One per down block.
    Each(Vec<usize>),
}

impl PerBlock {
    fn resolve(&self, blocks: usize, field: &str) -> Result<Vec<usize>> {
        match self {
            Self::One(v) => Ok(vec![*v; blocks]),
            Self::Each(v) if v.len() == blocks => Ok(v.clone()),
            Self::Each(v) => Err(config_err(format!(
                "unet/config.json: `{field}` has {} values for {blocks} blocks",
                v.len()
            ))),
        }
    }
}

fn d_channels() -> usize {
    4
}
fn d_blocks() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn d_down() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_up() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_layers() -> usize {
    2
}
fn d_cross() -> usize {
    1280
}
fn d_heads() -> PerBlock {
    PerBlock::One(8)
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_true() -> bool {
    true
}
fn d_silu() -> String {
    "silu".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_default() -> String {
    "default".into()
}
fn d_three() -> usize {
    3
}
fn d_one_f() -> f64 {
    1.0
}
fn d_one() -> usize {
    1
}
fn d_transformer_layers() -> PerBlock {
    PerBlock::One(1)
}

/// A diffusers `UNet2DConditionModel` config (`unet/config.json`); defaults are diffusers'.
/// Options kiln does not implement are read so that [`check`](Self::check) can refuse them by
/// name rather than ignore them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in.
    #[serde(default = "d_channels")]
    pub in_channels: usize,
    /// Channels out.
    #[serde(default = "d_channels")]
    pub out_channels: usize,
    /// Channels of each resolution level.
    #[serde(default = "d_blocks")]
    pub block_out_channels: Vec<usize>,
    /// `CrossAttnDownBlock2D` or `DownBlock2D` per level.
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    /// `UpBlock2D` or `CrossAttnUpBlock2D` per level (lowest resolution first).
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn`.
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    /// ResNet blocks per down level (up levels have one more).
    #[serde(default = "d_layers")]
    pub layers_per_block: usize,
    /// Width of the text encoder's states.
    #[serde(default = "d_cross")]
    pub cross_attention_dim: usize,
    /// Heads (see the [module docs](self)).
    #[serde(default = "d_heads")]
    pub attention_head_dim: PerBlock,
    /// Heads, when given explicitly.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// GroupNorm groups.
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    /// GroupNorm ε of the ResNet blocks and the output norm.
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    /// Linear (`true`, SD 2) or 1×1-conv projections into and out of the transformers.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// The time embedding's `[cos, sin]` order.
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    /// The time embedding's frequency shift.
    #[serde(default)]
    pub freq_shift: f64,
    /// Latent side (documentation; any multiple of 2^(levels−1) works).
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Must be `silu`.
    #[serde(default = "d_silu")]
    pub act_fn: String,
    /// Must be `positional`.
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    /// Must be `default`.
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    /// Must be unset.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Must be unset.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Must be unset.
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    /// Must be unset.
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Must be `false`.
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    /// Must be `false`.
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// Must be `false`.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Must be 3.
    #[serde(default = "d_three")]
    pub conv_in_kernel: usize,
    /// Must be 3.
    #[serde(default = "d_three")]
    pub conv_out_kernel: usize,
    /// Must be 1.
    #[serde(default = "d_transformer_layers")]
    pub transformer_layers_per_block: PerBlock,
    /// Must be 1.
    #[serde(default = "d_one_f")]
    pub mid_block_scale_factor: f64,
    /// Must be 1.
    #[serde(default = "d_one")]
    pub downsample_padding: usize,
    /// Must be `default`.
    #[serde(default = "d_default")]
    pub attention_type: String,
    /// Compute attention scores in f32 (SD 2 sets it; kiln computes in f32 on the CPU anyway).
    #[serde(default)]
    pub upcast_attention: bool,
}

fn unsupported(field: &str, value: impl std::fmt::Display, allowed: &str) -> Error {
    config_err(format!(
        "unet/config.json: `{field}` = {value} is not supported; kiln implements {allowed}"
    ))
}

impl UNetConfig {
    /// Reads `unet/config.json`.
    ///
    /// # Errors
    /// I/O and JSON errors naming the file; [`check`](Self::check)'s.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let c: Self = crate::common::read_json(path.as_ref(), "a UNet config")?;
        c.check()?;
        Ok(c)
    }

    /// Refuses options kiln does not implement, naming the field, and sizes that do not fit.
    ///
    /// # Errors
    /// [`Error::Config`].
    pub fn check(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(config_err(format!(
                "unet/config.json: {n} `block_out_channels`, {} `down_block_types` and {} `up_block_types` must agree",
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return Err(unsupported(
                    "down_block_types",
                    format!("\"{t}\""),
                    "CrossAttnDownBlock2D and DownBlock2D",
                ));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return Err(unsupported(
                    "up_block_types",
                    format!("\"{t}\""),
                    "CrossAttnUpBlock2D and UpBlock2D",
                ));
            }
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return Err(unsupported(
                "mid_block_type",
                format!("{:?}", self.mid_block_type),
                "UNetMidBlock2DCrossAttn",
            ));
        }
        let checks: [(&str, bool, String, &str); 15] = [
            (
                "act_fn",
                self.act_fn == "silu",
                format!("\"{}\"", self.act_fn),
                "\"silu\"",
            ),
            (
                "time_embedding_type",
                self.time_embedding_type == "positional",
                format!("\"{}\"", self.time_embedding_type),
                "\"positional\"",
            ),
            (
                "resnet_time_scale_shift",
                self.resnet_time_scale_shift == "default",
                format!("\"{}\"", self.resnet_time_scale_shift),
                "\"default\"",
            ),
            (
                "class_embed_type",
                self.class_embed_type.is_none(),
                format!("{:?}", self.class_embed_type),
                "none",
            ),
            (
                "addition_embed_type",
                self.addition_embed_type.is_none(),
                format!("{:?}", self.addition_embed_type),
                "none",
            ),
            (
                "encoder_hid_dim",
                self.encoder_hid_dim.is_none(),
                format!("{:?}", self.encoder_hid_dim),
                "none",
            ),
            (
                "time_cond_proj_dim",
                self.time_cond_proj_dim.is_none(),
                format!("{:?}", self.time_cond_proj_dim),
                "none",
            ),
            (
                "only_cross_attention",
                matches!(
                    &self.only_cross_attention,
                    serde_json::Value::Null | serde_json::Value::Bool(false)
                ) || self
                    .only_cross_attention
                    .as_array()
                    .is_some_and(|a| a.iter().all(|v| v == &serde_json::Value::Bool(false))),
                self.only_cross_attention.to_string(),
                "false",
            ),
            (
                "dual_cross_attention",
                !self.dual_cross_attention,
                self.dual_cross_attention.to_string(),
                "false",
            ),
            (
                "center_input_sample",
                !self.center_input_sample,
                self.center_input_sample.to_string(),
                "false",
            ),
            (
                "conv_in_kernel",
                self.conv_in_kernel == 3,
                self.conv_in_kernel.to_string(),
                "3",
            ),
            (
                "conv_out_kernel",
                self.conv_out_kernel == 3,
                self.conv_out_kernel.to_string(),
                "3",
            ),
            (
                "transformer_layers_per_block",
                self.transformer_layers_per_block
                    .resolve(n, "transformer_layers_per_block")?
                    .iter()
                    .all(|&v| v == 1),
                format!("{:?}", self.transformer_layers_per_block),
                "1",
            ),
            (
                "mid_block_scale_factor",
                self.mid_block_scale_factor == 1.0,
                self.mid_block_scale_factor.to_string(),
                "1",
            ),
            (
                "attention_type",
                self.attention_type == "default" && self.downsample_padding == 1,
                format!(
                    "\"{}\" (downsample_padding {})",
                    self.attention_type, self.downsample_padding
                ),
                "\"default\" with downsample_padding 1",
            ),
        ];
        for (field, ok, value, allowed) in checks {
            if !ok {
                return Err(unsupported(field, value, allowed));
            }
        }
        let heads = self.heads()?;
        for (i, (&c, &h)) in self.block_out_channels.iter().zip(&heads).enumerate() {
            if h == 0 || !c.is_multiple_of(h) || !c.is_multiple_of(self.norm_num_groups) {
                return Err(config_err(format!(
                    "unet/config.json: block {i} has {c} channels, which {h} heads and {} groups (`norm_num_groups`) must divide",
                    self.norm_num_groups
                )));
            }
        }
        if !self.block_out_channels[0].is_multiple_of(2) {
            return Err(config_err(
                "unet/config.json: `block_out_channels[0]` must be even (the sinusoidal time embedding)",
            ));
        }
        Ok(())
    }

    /// Heads per block (see the [module docs](self)).
    fn heads(&self) -> Result<Vec<usize>> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.resolve(n, "num_attention_heads"),
            None => self.attention_head_dim.resolve(n, "attention_head_dim"),
        }
    }
}

/// How attention is computed (CommonCanvas's third speed switch, FlashAttention vs diffusers'
/// plain `AttnProcessor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionImpl {
    /// burn's attention op: one fused kernel that never materialises the score matrix where the
    /// backend has one (flash attention on CubeCL backends, a fused loop on flex).
    #[default]
    Fused,
    /// Scores materialised: `softmax(q·kᵀ·scale)·v` as separate tensor ops (diffusers'
    /// `AttnProcessor`).
    Explicit,
}

/// The UNet's speed switches (CommonCanvas §4's low-precision GroupNorm/LayerNorm and the
/// attention implementation). They change how a forward pass computes, not the weights;
/// the defaults compute what diffusers does in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UNetSpeed {
    /// The precision every GroupNorm and LayerNorm computes in (Composer's
    /// `LowPrecisionGroupNorm` / `LowPrecisionLayerNorm`; see [`LayerNormPrecision`]).
    pub norm_precision: LayerNormPrecision,
    /// The attention implementation.
    pub attention: AttentionImpl,
}

/// `ResnetBlock2D`: `x + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(t)))))`.
#[derive(Module, Debug)]
pub struct ResnetBlock {
    /// GroupNorm before the first conv.
    pub norm1: GroupNorm,
    /// 3×3 conv.
    pub conv1: Conv2d,
    /// Time embedding projection (absent in the VAE's blocks).
    pub time_emb_proj: Option<Linear>,
    /// GroupNorm before the second conv.
    pub norm2: GroupNorm,
    /// 3×3 conv.
    pub conv2: Conv2d,
    /// 1×1 conv on the skip path when the channels change.
    pub conv_shortcut: Option<Conv2d>,
}

/// Scaled dot-product attention with `to_q`, `to_k`, `to_v` (no bias) and `to_out.0`.
#[derive(Module, Debug)]
pub struct Attention {
    /// Queries.
    pub to_q: Linear,
    /// Keys.
    pub to_k: Linear,
    /// Values.
    pub to_v: Linear,
    /// Output projection.
    pub to_out: Linear,
    /// Heads.
    pub heads: usize,
}

/// `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward, each pre-LN.
#[derive(Module, Debug)]
pub struct TransformerBlock {
    /// LayerNorm before self-attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn1: Attention,
    /// LayerNorm before cross-attention.
    pub norm2: LayerNorm,
    /// Cross-attention on the text states.
    pub attn2: Attention,
    /// LayerNorm before the feed-forward.
    pub norm3: LayerNorm,
    /// GEGLU's projection to `2 × 4·dim` (value, gate).
    pub ff_in: Linear,
    /// Back to `dim`.
    pub ff_out: Linear,
}

/// A projection that is a 1×1 conv or a linear layer (`use_linear_projection`).
#[derive(Module, Debug)]
pub enum Projection {
    /// 1×1 conv on `[B, C, H, W]`.
    Conv(Conv2d),
    /// Linear on `[B, HW, C]`.
    Linear(Linear),
}

/// `Transformer2DModel` (one transformer block).
#[derive(Module, Debug)]
pub struct Transformer2D {
    /// GroupNorm (ε 1e-6).
    pub norm: GroupNorm,
    /// Into the transformer's width.
    pub proj_in: Projection,
    /// The blocks.
    pub transformer_blocks: Vec<TransformerBlock>,
    /// Back to the channels.
    pub proj_out: Projection,
}

/// One resolution level going down or up: ResNet blocks, each followed by a transformer in a
/// cross-attention level, then a resampling conv (stride-2 down; nearest ×2 then conv up).
#[derive(Module, Debug)]
pub struct Level {
    /// ResNet blocks.
    pub resnets: Vec<ResnetBlock>,
    /// Transformers (empty in a plain level).
    pub attentions: Vec<Transformer2D>,
    /// Resampling conv (absent at the last level).
    pub resample: Option<Conv2d>,
}

/// The middle: ResNet, transformer, ResNet.
#[derive(Module, Debug)]
pub struct MidBlock {
    /// Two ResNet blocks.
    pub resnets: Vec<ResnetBlock>,
    /// One transformer.
    pub attention: Transformer2D,
}

/// `UNet2DConditionModel`. See the [module docs](self).
#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    /// Time embedding MLP, first layer.
    pub time_linear_1: Linear,
    /// Time embedding MLP, second layer.
    pub time_linear_2: Linear,
    /// Input conv.
    pub conv_in: Conv2d,
    /// Down levels.
    pub down_blocks: Vec<Level>,
    /// Middle.
    pub mid_block: MidBlock,
    /// Up levels.
    pub up_blocks: Vec<Level>,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm,
    /// Output conv.
    pub conv_out: Conv2d,
    /// The configuration.
    #[module(skip)]
    pub config: UNetConfig,
    /// The speed switches (default: diffusers' computation in the model's dtype).
    #[module(skip)]
    pub speed: UNetSpeed,
}

pub(crate) fn conv(i: usize, o: usize, k: usize, stride: usize, d: &Device) -> Conv2d {
    let pad = k / 2;
    Conv2dConfig::new([i, o], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(d)
}

pub(crate) fn group_norm(groups: usize, channels: usize, eps: f64, d: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(d)
}

pub(crate) fn linear(i: usize, o: usize, bias: bool, d: &Device) -> Linear {
    LinearConfig::new(i, o).with_bias(bias).init(d)
}

impl ResnetBlock {
    fn new(c: &UNetConfig, i: usize, o: usize, temb: usize, d: &Device) -> Self {
        Self::with(c.norm_num_groups, c.norm_eps, i, o, Some(temb), d)
    }

    /// A block of `i` → `o` channels; `temb`: the time embedding's width, if it takes one.
    pub(crate) fn with(
        groups: usize,
        eps: f64,
        i: usize,
        o: usize,
        temb: Option<usize>,
        d: &Device,
    ) -> Self {
        Self {
            norm1: group_norm(groups, i, eps, d),
            conv1: conv(i, o, 3, 1, d),
            time_emb_proj: temb.map(|t| linear(t, o, true, d)),
            norm2: group_norm(groups, o, eps, d),
            conv2: conv(o, o, 3, 1, d),
            conv_shortcut: (i != o).then(|| conv(i, o, 1, 1, d)),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<4>, temb: Option<Tensor<2>>) -> Tensor<4> {
        self.forward_in(x, temb, LayerNormPrecision::Model)
    }

    /// The block with its GroupNorms at `norm`.
    pub(crate) fn forward_in(
        &self,
        x: Tensor<4>,
        temb: Option<Tensor<2>>,
        norm: LayerNormPrecision,
    ) -> Tensor<4> {
        let mut h = self
            .conv1
            .forward(silu(group_norm_in(norm, &self.norm1, x.clone())));
        if let (Some(p), Some(t)) = (&self.time_emb_proj, temb) {
            let [b, o] = [h.dims()[0], h.dims()[1]];
            h = h + p.forward(silu(t)).reshape([b, o, 1, 1]);
        }
        let h = self
            .conv2
            .forward(silu(group_norm_in(norm, &self.norm2, h)));
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        skip + h
    }
}

impl Attention {
    fn new(dim: usize, context: usize, heads: usize, d: &Device) -> Self {
        Self {
            to_q: linear(dim, dim, false, d),
            to_k: linear(context, dim, false, d),
            to_v: linear(context, dim, false, d),
            to_out: linear(dim, dim, true, d),
            heads,
        }
    }

    fn forward(&self, x: Tensor<3>, context: Tensor<3>, how: AttentionImpl) -> Tensor<3> {
        let dim = x.dims()[2];
        let q = split_heads(self.to_q.forward(x), self.heads);
        let k = split_heads(self.to_k.forward(context.clone()), self.heads);
        let v = split_heads(self.to_v.forward(context), self.heads);
        let scale = 1.0 / ((dim / self.heads) as f64).sqrt();
        let no_dropout = burn::nn::DropoutConfig::new(0.0).init();
        let y = match how {
            AttentionImpl::Fused => {
                multi_head_attention((q, k, v), None, None, scale, false, &no_dropout)
            }
            AttentionImpl::Explicit => {
                explicit_attention((q, k, v), None, None, scale, &no_dropout)
            }
        };
        self.to_out.forward(merge_heads(y))
    }
}

impl Transformer2D {
    fn new(c: &UNetConfig, channels: usize, heads: usize, d: &Device) -> Self {
        let proj = || {
            if c.use_linear_projection {
                Projection::Linear(linear(channels, channels, true, d))
            } else {
                Projection::Conv(conv(channels, channels, 1, 1, d))
            }
        };
        let ln = || LayerNormConfig::new(channels).init(d);
        Self {
            norm: group_norm(c.norm_num_groups, channels, 1e-6, d),
            proj_in: proj(),
            transformer_blocks: vec![TransformerBlock {
                norm1: ln(),
                attn1: Attention::new(channels, channels, heads, d),
                norm2: ln(),
                attn2: Attention::new(channels, c.cross_attention_dim, heads, d),
                norm3: ln(),
                ff_in: linear(channels, 8 * channels, true, d),
                ff_out: linear(4 * channels, channels, true, d),
            }],
            proj_out: proj(),
        }
    }

    fn forward(&self, x: Tensor<4>, context: Tensor<3>, speed: UNetSpeed) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let to_tokens = |t: Tensor<4>| t.swap_dims(1, 2).swap_dims(2, 3).reshape([b, h * w, c]);
        let to_image = |t: Tensor<3>| t.reshape([b, h, w, c]).swap_dims(2, 3).swap_dims(1, 2);
        let n = group_norm_in(speed.norm_precision, &self.norm, x.clone());
        let mut t = match &self.proj_in {
            Projection::Conv(p) => to_tokens(p.forward(n)),
            Projection::Linear(p) => p.forward(to_tokens(n)),
        };
        // diffusers' BasicTransformerBlock LayerNorms: ε 1e-5
        let ln = |l: &LayerNorm, t: Tensor<3>| layer_norm_rounded(speed.norm_precision, l, t, 1e-5);
        for blk in &self.transformer_blocks {
            let n1 = ln(&blk.norm1, t.clone());
            t = t + blk.attn1.forward(n1.clone(), n1, speed.attention);
            t = t.clone()
                + blk
                    .attn2
                    .forward(ln(&blk.norm2, t.clone()), context.clone(), speed.attention);
            let g = blk.ff_in.forward(ln(&blk.norm3, t.clone()));
            let inner = g.dims()[2] / 2;
            let value = g.clone().narrow(2, 0, inner);
            let gate = g.narrow(2, inner, inner);
            t = t + blk.ff_out.forward(value * crate::cpu::gelu(gate));
        }
        let y = match &self.proj_out {
            Projection::Conv(p) => p.forward(to_image(t)),
            Projection::Linear(p) => to_image(p.forward(t)),
        };
        y + x
    }
}

/// Nearest-neighbour ×2 upsampling.
pub(crate) fn upsample2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

impl UNet2DConditionModel {
    /// A randomly initialised UNet.
    ///
    /// # Errors
    /// [`UNetConfig::check`]'s.
    pub fn init(config: &UNetConfig, d: &Device) -> Result<Self> {
        config.check()?;
        let c = config;
        let ch = &c.block_out_channels;
        let heads = c.heads()?;
        let n = ch.len();
        let temb = 4 * ch[0];
        let mut down_blocks = Vec::new();
        let mut out = ch[0];
        for (i, ty) in c.down_block_types.iter().enumerate() {
            let (input, output) = (out, ch[i]);
            out = output;
            let cross = ty == "CrossAttnDownBlock2D";
            down_blocks.push(Level {
                resnets: (0..c.layers_per_block)
                    .map(|j| {
                        ResnetBlock::new(c, if j == 0 { input } else { output }, output, temb, d)
                    })
                    .collect(),
                attentions: if cross {
                    (0..c.layers_per_block)
                        .map(|_| Transformer2D::new(c, output, heads[i], d))
                        .collect()
                } else {
                    Vec::new()
                },
                resample: (i + 1 < n).then(|| conv(output, output, 3, 2, d)),
            });
        }
        let last = ch[n - 1];
        let mid_block = MidBlock {
            resnets: vec![
                ResnetBlock::new(c, last, last, temb, d),
                ResnetBlock::new(c, last, last, temb, d),
            ],
            attention: Transformer2D::new(c, last, heads[n - 1], d),
        };
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let rev_heads: Vec<usize> = heads.iter().rev().copied().collect();
        let mut up_blocks = Vec::new();
        let mut prev = rev[0];
        for (i, ty) in c.up_block_types.iter().enumerate() {
            let output = rev[i];
            let input = rev[(i + 1).min(n - 1)];
            let cross = ty == "CrossAttnUpBlock2D";
            let layers = c.layers_per_block + 1;
            up_blocks.push(Level {
                resnets: (0..layers)
                    .map(|j| {
                        let skip = if j == layers - 1 { input } else { output };
                        let res_in = if j == 0 { prev } else { output };
                        ResnetBlock::new(c, res_in + skip, output, temb, d)
                    })
                    .collect(),
                attentions: if cross {
                    (0..layers)
                        .map(|_| Transformer2D::new(c, output, rev_heads[i], d))
                        .collect()
                } else {
                    Vec::new()
                },
                resample: (i + 1 < n).then(|| conv(output, output, 3, 1, d)),
            });
            prev = output;
        }
        Ok(Self {
            time_linear_1: linear(ch[0], temb, true, d),
            time_linear_2: linear(temb, temb, true, d),
            conv_in: conv(c.in_channels, ch[0], 3, 1, d),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(c.norm_num_groups, ch[0], c.norm_eps, d),
            conv_out: conv(ch[0], c.out_channels, 3, 1, d),
            config: config.clone(),
            speed: UNetSpeed::default(),
        })
    }

    /// diffusers' `get_timestep_embedding`: `[B, C₀]` sinusoids of the timesteps.
    fn time_proj(&self, t: Tensor<1>) -> Tensor<2> {
        let dim = self.config.block_out_channels[0];
        let half = dim / 2;
        let device = t.device();
        let b = t.dims()[0];
        // in f32 as diffusers: −ln(10000)·i / (half − shift), exp
        let (scale, denom) = (
            -(10000f64.ln()) as f32,
            (half as f64 - self.config.freq_shift) as f32,
        );
        let exponent: Vec<f32> = (0..half)
            .map(|i| (i as f32 * scale / denom).exp())
            .collect();
        let freqs = Tensor::<1>::from_data(TensorData::new(exponent, [half]), &device);
        let args = t.reshape([b, 1]) * freqs.reshape([1, half]);
        let (sin, cos) = (args.clone().sin(), args.cos());
        if self.config.flip_sin_to_cos {
            Tensor::cat(vec![cos, sin], 1)
        } else {
            Tensor::cat(vec![sin, cos], 1)
        }
    }

    /// The predicted noise (or velocity) `[B, out, H, W]` for latents `sample` `[B, in, H, W]`
    /// at `timestep` (`[1]` for the whole batch, or `[B]`) given the text states
    /// `encoder_hidden_states` `[B, L, cross_attention_dim]`. H and W must be multiples of
    /// 2^(levels − 1).
    ///
    /// # Errors
    /// [`Error::Input`] for shapes that do not fit the UNet.
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timestep: Tensor<1>,
        encoder_hidden_states: Tensor<3>,
    ) -> Result<Tensor<4>> {
        let c = &self.config;
        let [b, ch, h, w] = sample.dims();
        let factor = 1usize << (c.block_out_channels.len() - 1);
        let [eb, _, ed] = encoder_hidden_states.dims();
        let tn = timestep.dims()[0];
        let problem = if ch != c.in_channels {
            Some(format!(
                "`sample` has {ch} channels; the UNet takes {} (in_channels)",
                c.in_channels
            ))
        } else if !h.is_multiple_of(factor) || !w.is_multiple_of(factor) || h == 0 || w == 0 {
            Some(format!(
                "`sample` is {h}×{w}; height and width must be multiples of {factor} (2 per down level)"
            ))
        } else if eb != b || ed != c.cross_attention_dim {
            Some(format!(
                "`encoder_hidden_states` is {eb}×…×{ed}; the UNet takes {b}×…×{} (batch × tokens × cross_attention_dim)",
                c.cross_attention_dim
            ))
        } else if tn != 1 && tn != b {
            Some(format!("{tn} timesteps for a batch of {b}; give 1 or {b}"))
        } else {
            None
        };
        if let Some(message) = problem {
            return Err(Error::Input { message });
        }
        let timestep = if tn == 1 {
            timestep.expand([b])
        } else {
            timestep
        };
        let speed = self.speed;
        let temb = self
            .time_linear_2
            .forward(silu(self.time_linear_1.forward(self.time_proj(timestep))));
        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for level in &self.down_blocks {
            for (j, r) in level.resnets.iter().enumerate() {
                x = r.forward_in(x, Some(temb.clone()), speed.norm_precision);
                if let Some(a) = level.attentions.get(j) {
                    x = a.forward(x, encoder_hidden_states.clone(), speed);
                }
                skips.push(x.clone());
            }
            if let Some(down) = &level.resample {
                x = down.forward(x);
                skips.push(x.clone());
            }
        }
        let mid = &self.mid_block;
        x = mid.resnets[0].forward_in(x, Some(temb.clone()), speed.norm_precision);
        x = mid
            .attention
            .forward(x, encoder_hidden_states.clone(), speed);
        x = mid.resnets[1].forward_in(x, Some(temb.clone()), speed.norm_precision);
        for level in &self.up_blocks {
            for (j, r) in level.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| Error::Input {
                    message: "the UNet's skip connections do not match its levels".into(),
                })?;
                x = r.forward_in(
                    Tensor::cat(vec![x, skip], 1),
                    Some(temb.clone()),
                    speed.norm_precision,
                );
                if let Some(a) = level.attentions.get(j) {
                    x = a.forward(x, encoder_hidden_states.clone(), speed);
                }
            }
            if let Some(up) = &level.resample {
                x = up.forward(upsample2(x));
            }
        }
        Ok(self.conv_out.forward(silu(group_norm_in(
            speed.norm_precision,
            &self.conv_norm_out,
            x,
        ))))
    }

    /// Loads a diffusers `unet/` directory: `config.json` and
    /// `diffusion_pytorch_model.safetensors` (or its sharded index).
    ///
    /// # Errors
    /// Config errors naming the field; checkpoint, missing, unexpected and shape errors naming
    /// the tensor.
    pub fn load(dir: impl AsRef<Path>, device: &Device, options: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let config = UNetConfig::from_file(dir.join("config.json"))?;
        let mut m = Self::init(&config, device)?;
        let ckpt = kiln_checkpoint::Checkpoint::open(dir)?;
        let mut w = WeightLoader::new(&ckpt, device, "");
        w.linear_out_in("time_embedding.linear_1", &mut m.time_linear_1)?;
        w.linear_out_in("time_embedding.linear_2", &mut m.time_linear_2)?;
        w.conv2d("conv_in", &mut m.conv_in)?;
        for (i, level) in m.down_blocks.iter_mut().enumerate() {
            load_level(&mut w, &format!("down_blocks.{i}"), level, "downsamplers")?;
        }
        for (j, r) in m.mid_block.resnets.iter_mut().enumerate() {
            load_resnet(&mut w, &format!("mid_block.resnets.{j}"), r)?;
        }
        load_transformer(&mut w, "mid_block.attentions.0", &mut m.mid_block.attention)?;
        for (i, level) in m.up_blocks.iter_mut().enumerate() {
            load_level(&mut w, &format!("up_blocks.{i}"), level, "upsamplers")?;
        }
        load_group_norm(&mut w, "conv_norm_out", &mut m.conv_norm_out)?;
        w.conv2d("conv_out", &mut m.conv_out)?;
        w.finish(options, |_| false)?;
        Ok(m)
    }
}

pub(crate) fn load_group_norm(
    w: &mut WeightLoader<'_>,
    prefix: &str,
    n: &mut GroupNorm,
) -> Result<()> {
    let c = n.num_channels;
    for (name, p) in [("weight", n.gamma.as_mut()), ("bias", n.beta.as_mut())] {
        if let Some(p) = p
            && let Some(t) = w.tensor(&format!("{prefix}.{name}"), [c])?
        {
            set(p, t);
        }
    }
    Ok(())
}

pub(crate) fn load_resnet(w: &mut WeightLoader<'_>, p: &str, r: &mut ResnetBlock) -> Result<()> {
    load_group_norm(w, &format!("{p}.norm1"), &mut r.norm1)?;
    w.conv2d(&format!("{p}.conv1"), &mut r.conv1)?;
    if let Some(t) = r.time_emb_proj.as_mut() {
        w.linear_out_in(&format!("{p}.time_emb_proj"), t)?;
    }
    load_group_norm(w, &format!("{p}.norm2"), &mut r.norm2)?;
    w.conv2d(&format!("{p}.conv2"), &mut r.conv2)?;
    if let Some(s) = r.conv_shortcut.as_mut() {
        w.conv2d(&format!("{p}.conv_shortcut"), s)?;
    }
    Ok(())
}

fn load_projection(w: &mut WeightLoader<'_>, p: &str, proj: &mut Projection) -> Result<()> {
    match proj {
        Projection::Conv(c) => w.conv2d(p, c),
        Projection::Linear(l) => w.linear_out_in(p, l),
    }
}

fn load_attention(w: &mut WeightLoader<'_>, p: &str, a: &mut Attention) -> Result<()> {
    w.linear_out_in(&format!("{p}.to_q"), &mut a.to_q)?;
    w.linear_out_in(&format!("{p}.to_k"), &mut a.to_k)?;
    w.linear_out_in(&format!("{p}.to_v"), &mut a.to_v)?;
    w.linear_out_in(&format!("{p}.to_out.0"), &mut a.to_out)
}

fn load_transformer(w: &mut WeightLoader<'_>, p: &str, t: &mut Transformer2D) -> Result<()> {
    load_group_norm(w, &format!("{p}.norm"), &mut t.norm)?;
    load_projection(w, &format!("{p}.proj_in"), &mut t.proj_in)?;
    for (k, b) in t.transformer_blocks.iter_mut().enumerate() {
        let q = format!("{p}.transformer_blocks.{k}");
        w.layer_norm(&format!("{q}.norm1"), &mut b.norm1)?;
        load_attention(w, &format!("{q}.attn1"), &mut b.attn1)?;
        w.layer_norm(&format!("{q}.norm2"), &mut b.norm2)?;
        load_attention(w, &format!("{q}.attn2"), &mut b.attn2)?;
        w.layer_norm(&format!("{q}.norm3"), &mut b.norm3)?;
        w.linear_out_in(&format!("{q}.ff.net.0.proj"), &mut b.ff_in)?;
        w.linear_out_in(&format!("{q}.ff.net.2"), &mut b.ff_out)?;
    }
    load_projection(w, &format!("{p}.proj_out"), &mut t.proj_out)
}

fn load_level(w: &mut WeightLoader<'_>, p: &str, level: &mut Level, resample: &str) -> Result<()> {
    for (j, r) in level.resnets.iter_mut().enumerate() {
        load_resnet(w, &format!("{p}.resnets.{j}"), r)?;
    }
    for (j, a) in level.attentions.iter_mut().enumerate() {
        load_transformer(w, &format!("{p}.attentions.{j}"), a)?;
    }
    if let Some(c) = level.resample.as_mut() {
        w.conv2d(&format!("{p}.{resample}.0.conv"), c)?;
    }
    Ok(())
}
