//! Small image classifiers for continual-learning and data-difficulty experiments: an MLP, a
//! ResNet of basic blocks (CIFAR-style stem) and a ViT (timm's layout). Each has a serde config,
//! `init(&device)`, `forward(images [B, C, H, W]) → logits [B, classes]`, and `load`/`save` of
//! a directory (`config.json` + `model.safetensors`) whose tensor names and layouts are
//! PyTorch's: torchvision's ResNet names, timm's ViT names, `[out, in]` linear weights — the
//! fixture script `tests/fixtures/make_vision_fixtures.py` builds the same networks in PyTorch
//! and the tests match their logits.
//!
//! ```
//! use kiln_models::vision::{ImageClassifier, VisionConfig, VitConfig};
//! use kiln_models::burn::tensor::{Device, Distribution, Tensor};
//!
//! let device = Device::flex();
//! let config = VisionConfig::Vit(VitConfig::tiny(8, 2, 1, 10));
//! let model = ImageClassifier::init(&config, &device)?;
//! let images = Tensor::<4>::random([3, 1, 8, 8], Distribution::Uniform(0.0, 1.0), &device);
//! assert_eq!(model.forward(images)?.dims(), [3, 10]);
//! # Ok::<(), kiln_models::Error>(())
//! ```

use std::path::Path;

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Gelu, Initializer, LayerNorm, LayerNormConfig, Linear,
    LinearConfig, PaddingConfig2d,
};
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};
use kiln_checkpoint::{Checkpoint, Dtype};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::weights::{LoadOptions, WeightLoader, WeightWriter, set};

fn bad(message: String) -> Error {
    Error::Config { message }
}

/// The input every classifier takes: `[channels, height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    /// Channels (1 for grey-scale).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl ImageShape {
    fn check(&self, what: &str) -> Result<()> {
        if self.channels == 0 || self.height == 0 || self.width == 0 {
            return Err(bad(format!(
                "{what}: the image shape {}×{}×{} (channels × height × width) has a zero",
                self.channels, self.height, self.width
            )));
        }
        Ok(())
    }

    fn pixels(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// A multi-layer perceptron on flattened pixels: `Linear → ReLU` per hidden width, then a linear
/// head. PyTorch names: `layers.{i}`, `head`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// The input images.
    pub input: ImageShape,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Classes.
    pub classes: usize,
}

/// A ResNet of basic blocks (two 3×3 convolutions with batch norm and a shortcut) for small
/// images: a 3×3 stem without max-pooling (the CIFAR form of He et al. 2016), `blocks` blocks
/// per stage, stage `s > 0` halving the resolution, global average pooling and a linear head.
/// torchvision's names (`conv1`, `bn1`, `layer{s}.{b}.conv1`, `…downsample.0/1`, `fc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// The input images.
    pub input: ImageShape,
    /// Channels of each stage (`[16, 32, 64]` for ResNet-20's layout).
    pub widths: Vec<usize>,
    /// Basic blocks per stage.
    pub blocks: usize,
    /// Classes.
    pub classes: usize,
}

/// A Vision Transformer (Dosovitskiy et al. 2021) in timm's layout: patches embedded by a
/// convolution with stride = kernel = `patch`, a class token and learned position embeddings,
/// pre-norm blocks (`norm1 → attn.qkv/attn.proj`, `norm2 → mlp.fc1/GELU/mlp.fc2`), a final norm
/// and a linear head on the class token. LayerNorm ε = 1e-6 as timm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// The input images (height and width divisible by `patch`).
    pub input: ImageShape,
    /// Patch side in pixels.
    pub patch: usize,
    /// Width of the token embeddings.
    pub dim: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads (dividing `dim`).
    pub heads: usize,
    /// Hidden width of each block's MLP.
    pub mlp_dim: usize,
    /// Classes.
    pub classes: usize,
}

impl VitConfig {
    /// A small ViT for `side`×`side` images of `channels` channels with `patch`-pixel patches:
    /// width 64, 4 blocks, 4 heads, MLP 128.
    pub fn tiny(side: usize, patch: usize, channels: usize, classes: usize) -> Self {
        Self {
            input: ImageShape {
                channels,
                height: side,
                width: side,
            },
            patch,
            dim: 64,
            depth: 4,
            heads: 4,
            mlp_dim: 128,
            classes,
        }
    }
}

/// Which classifier (serde: `{"kind": "mlp", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum VisionConfig {
    /// [`MlpConfig`].
    Mlp(MlpConfig),
    /// [`ResNetConfig`].
    Resnet(ResNetConfig),
    /// [`VitConfig`].
    Vit(VitConfig),
}

impl VisionConfig {
    /// The input images.
    pub fn input(&self) -> ImageShape {
        match self {
            Self::Mlp(c) => c.input,
            Self::Resnet(c) => c.input,
            Self::Vit(c) => c.input,
        }
    }

    /// Classes.
    pub fn classes(&self) -> usize {
        match self {
            Self::Mlp(c) => c.classes,
            Self::Resnet(c) => c.classes,
            Self::Vit(c) => c.classes,
        }
    }

    /// Checks the sizes.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn check(&self) -> Result<()> {
        self.input().check("vision config")?;
        if self.classes() < 2 {
            return Err(bad(format!(
                "vision config: {} classes; a classifier needs at least 2",
                self.classes()
            )));
        }
        match self {
            Self::Mlp(c) => {
                if c.hidden.contains(&0) {
                    return Err(bad("MLP: a hidden width is 0".into()));
                }
            }
            Self::Resnet(c) => {
                if c.widths.is_empty() || c.widths.contains(&0) || c.blocks == 0 {
                    return Err(bad(format!(
                        "ResNet: widths {:?} and blocks {} must be non-empty and non-zero",
                        c.widths, c.blocks
                    )));
                }
            }
            Self::Vit(c) => {
                if c.patch == 0 || c.input.height % c.patch != 0 || c.input.width % c.patch != 0 {
                    return Err(bad(format!(
                        "ViT: patch {} must divide the image's {}×{} pixels",
                        c.patch, c.input.height, c.input.width
                    )));
                }
                if c.dim == 0
                    || c.heads == 0
                    || c.dim % c.heads != 0
                    || c.depth == 0
                    || c.mlp_dim == 0
                {
                    return Err(bad(format!(
                        "ViT: dim {} must be a non-zero multiple of heads {}, depth {} and mlp_dim {} non-zero",
                        c.dim, c.heads, c.depth, c.mlp_dim
                    )));
                }
            }
        }
        Ok(())
    }
}

/// [`MlpConfig`]'s network.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Hidden layers.
    pub layers: Vec<Linear>,
    /// The classifier.
    pub head: Linear,
}

/// One basic block.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// First 3×3 convolution (stride 1 or 2).
    pub conv1: Conv2d,
    /// Its batch norm.
    pub bn1: BatchNorm,
    /// Second 3×3 convolution.
    pub conv2: Conv2d,
    /// Its batch norm.
    pub bn2: BatchNorm,
    /// 1×1 convolution and batch norm on the shortcut when the shape changes.
    pub downsample: Option<(Conv2d, BatchNorm)>,
}

/// [`ResNetConfig`]'s network.
#[derive(Module, Debug)]
pub struct ResNet {
    /// Stem convolution.
    pub conv1: Conv2d,
    /// Stem batch norm.
    pub bn1: BatchNorm,
    /// Stages of blocks.
    pub stages: Vec<Vec<BasicBlock>>,
    /// The classifier.
    pub fc: Linear,
}

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct VitBlock {
    /// Norm before attention.
    pub norm1: LayerNorm,
    /// Fused query/key/value projection (timm's `attn.qkv`).
    pub qkv: Linear,
    /// Attention output projection (`attn.proj`).
    pub proj: Linear,
    /// Norm before the MLP.
    pub norm2: LayerNorm,
    /// MLP in (`mlp.fc1`).
    pub fc1: Linear,
    /// MLP out (`mlp.fc2`).
    pub fc2: Linear,
    /// Attention heads.
    pub heads: usize,
}

/// [`VitConfig`]'s network.
#[derive(Module, Debug)]
pub struct Vit {
    /// Patch embedding (`patch_embed.proj`).
    pub patch_embed: Conv2d,
    /// The class token `[1, 1, dim]`.
    pub cls_token: Param<Tensor<3>>,
    /// Position embeddings `[1, patches + 1, dim]`.
    pub pos_embed: Param<Tensor<3>>,
    /// Blocks.
    pub blocks: Vec<VitBlock>,
    /// Final norm.
    pub norm: LayerNorm,
    /// The classifier.
    pub head: Linear,
}

/// The network of a [`VisionConfig`].
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Network {
    /// An MLP.
    Mlp(Mlp),
    /// A ResNet.
    Resnet(ResNet),
    /// A ViT.
    Vit(Vit),
}

/// An image classifier: a [`VisionConfig`] and its network.
#[derive(Module, Debug)]
pub struct ImageClassifier {
    /// The network.
    pub net: Network,
    /// `[channels, height, width]` of the input.
    pub input: [usize; 3],
    /// Classes.
    pub classes: usize,
}

fn conv(i: usize, o: usize, k: usize, stride: usize, pad: usize, bias: bool, d: &Device) -> Conv2d {
    Conv2dConfig::new([i, o], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(bias)
        .init(d)
}

fn ln(dim: usize, d: &Device) -> LayerNorm {
    LayerNormConfig::new(dim).with_epsilon(1e-6).init(d)
}

impl ImageClassifier {
    /// A freshly initialised classifier (burn's default initialisers; seed the device first for
    /// reproducible weights). The ViT's class token and position embeddings start as
    /// N(0, 0.02²), as timm's.
    ///
    /// # Errors
    /// [`Error::Config`] for sizes that do not fit ([`VisionConfig::check`]).
    pub fn init(config: &VisionConfig, d: &Device) -> Result<Self> {
        config.check()?;
        let input = config.input();
        let net = match config {
            VisionConfig::Mlp(c) => {
                let mut width = input.pixels();
                let mut layers = Vec::new();
                for &h in &c.hidden {
                    layers.push(LinearConfig::new(width, h).init(d));
                    width = h;
                }
                Network::Mlp(Mlp {
                    layers,
                    head: LinearConfig::new(width, c.classes).init(d),
                })
            }
            VisionConfig::Resnet(c) => {
                let mut width = c.widths[0];
                let mut stages = Vec::new();
                for (s, &w) in c.widths.iter().enumerate() {
                    let mut blocks = Vec::new();
                    for b in 0..c.blocks {
                        let stride = if s > 0 && b == 0 { 2 } else { 1 };
                        let downsample = (stride != 1 || width != w).then(|| {
                            (
                                conv(width, w, 1, stride, 0, false, d),
                                BatchNormConfig::new(w).init(d),
                            )
                        });
                        blocks.push(BasicBlock {
                            conv1: conv(width, w, 3, stride, 1, false, d),
                            bn1: BatchNormConfig::new(w).init(d),
                            conv2: conv(w, w, 3, 1, 1, false, d),
                            bn2: BatchNormConfig::new(w).init(d),
                            downsample,
                        });
                        width = w;
                    }
                    stages.push(blocks);
                }
                Network::Resnet(ResNet {
                    conv1: conv(input.channels, c.widths[0], 3, 1, 1, false, d),
                    bn1: BatchNormConfig::new(c.widths[0]).init(d),
                    stages,
                    fc: LinearConfig::new(width, c.classes).init(d),
                })
            }
            VisionConfig::Vit(c) => {
                let patches = (input.height / c.patch) * (input.width / c.patch);
                let normal = Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                };
                Network::Vit(Vit {
                    patch_embed: conv(input.channels, c.dim, c.patch, c.patch, 0, true, d),
                    cls_token: normal.init([1, 1, c.dim], d),
                    pos_embed: normal.init([1, patches + 1, c.dim], d),
                    blocks: (0..c.depth)
                        .map(|_| VitBlock {
                            norm1: ln(c.dim, d),
                            qkv: LinearConfig::new(c.dim, 3 * c.dim).init(d),
                            proj: LinearConfig::new(c.dim, c.dim).init(d),
                            norm2: ln(c.dim, d),
                            fc1: LinearConfig::new(c.dim, c.mlp_dim).init(d),
                            fc2: LinearConfig::new(c.mlp_dim, c.dim).init(d),
                            heads: c.heads,
                        })
                        .collect(),
                    norm: ln(c.dim, d),
                    head: LinearConfig::new(c.dim, c.classes).init(d),
                })
            }
        };
        Ok(Self {
            net,
            input: [input.channels, input.height, input.width],
            classes: config.classes(),
        })
    }

    /// Logits `[B, classes]` of `images` `[B, C, H, W]`. On an autodiff device batch norm uses
    /// the batch's statistics and updates its running ones (PyTorch's `train()`); call
    /// [`valid`](Module::valid) for evaluation.
    ///
    /// # Errors
    /// [`Error::Input`] when the images are not `[B, C, H, W]` of the config's shape.
    pub fn forward(&self, images: Tensor<4>) -> Result<Tensor<2>> {
        let features = self.features(images)?;
        Ok(self.head(features))
    }

    /// The representation the classification head reads, `[B, d]`: the MLP's last hidden
    /// layer, the ResNet's pooled features, the ViT's final class token (after its norm) — what
    /// last-layer gradient scores and prototype distances use.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn features(&self, images: Tensor<4>) -> Result<Tensor<2>> {
        Ok(self.run(images, false)?.0)
    }

    /// Every intermediate representation, flattened per example (`[B, d_l]` each), ending with
    /// [`features`](Self::features) — what layer-wise probes such as prediction depth read:
    /// the MLP's hidden layers; the ResNet's stem and every basic block's output (`C·H·W`
    /// values), then the pooled features; the ViT's whole token sequence (class token and
    /// patches, `(N + 1)·dim` values) after the embedding and after every block, then the normed
    /// class token.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn layer_features(&self, images: Tensor<4>) -> Result<Vec<Tensor<2>>> {
        let (features, mut layers) = self.run(images, true)?;
        if !matches!(self.net, Network::Mlp(_)) {
            layers.push(features);
        }
        Ok(layers)
    }

    /// The head's input and, when `keep`, the flattened intermediate representations.
    fn run(&self, images: Tensor<4>, keep: bool) -> Result<(Tensor<2>, Vec<Tensor<2>>)> {
        let [b, c, h, w] = images.dims();
        if [c, h, w] != self.input {
            return Err(Error::Input {
                message: format!(
                    "images are {c}×{h}×{w} (channels × height × width); the classifier takes {}×{}×{}",
                    self.input[0], self.input[1], self.input[2]
                ),
            });
        }
        let mut layers = Vec::new();
        let flat4 = |x: &Tensor<4>| {
            let [b, c, h, w] = x.dims();
            x.clone().reshape([b, c * h * w])
        };
        let class_token = |x: &Tensor<3>| {
            let [b, _, dim] = x.dims();
            x.clone().slice([0..b, 0..1, 0..dim]).reshape([b, dim])
        };
        let features = match &self.net {
            Network::Mlp(m) => {
                let mut x = images.reshape([b, c * h * w]);
                for l in &m.layers {
                    x = relu(l.forward(x));
                    if keep {
                        layers.push(x.clone());
                    }
                }
                x
            }
            Network::Resnet(r) => {
                let mut x = relu(r.bn1.forward(r.conv1.forward(images)));
                if keep {
                    layers.push(flat4(&x));
                }
                for block in r.stages.iter().flatten() {
                    let y = relu(block.bn1.forward(block.conv1.forward(x.clone())));
                    let y = block.bn2.forward(block.conv2.forward(y));
                    let shortcut = match &block.downsample {
                        Some((conv, bn)) => bn.forward(conv.forward(x)),
                        None => x,
                    };
                    x = relu(y + shortcut);
                    if keep {
                        layers.push(flat4(&x));
                    }
                }
                let [b, ch, hh, ww] = x.dims();
                x.reshape([b, ch, hh * ww]).mean_dim(2).reshape([b, ch])
            }
            Network::Vit(v) => {
                let x = v.patch_embed.forward(images); // [B, dim, h', w']
                let [b, dim, ph, pw] = x.dims();
                let x = x.reshape([b, dim, ph * pw]).swap_dims(1, 2); // [B, N, dim]
                let cls = v.cls_token.val().expand([b, 1, dim]);
                let mut x = Tensor::cat(vec![cls, x], 1) + v.pos_embed.val();
                let flat3 = |x: &Tensor<3>| {
                    let [b, n, dim] = x.dims();
                    x.clone().reshape([b, n * dim])
                };
                if keep {
                    layers.push(flat3(&x));
                }
                for blk in &v.blocks {
                    x = x.clone() + attention(blk, blk.norm1.forward(x));
                    let y = Gelu::new().forward(blk.fc1.forward(blk.norm2.forward(x.clone())));
                    x = x + blk.fc2.forward(y);
                    if keep {
                        layers.push(flat3(&x));
                    }
                }
                class_token(&v.norm.forward(x))
            }
        };
        Ok((features, layers))
    }

    /// The classification head on [`features`](Self::features): logits `[B, classes]`.
    pub fn head(&self, features: Tensor<2>) -> Tensor<2> {
        match &self.net {
            Network::Mlp(m) => m.head.forward(features),
            Network::Resnet(r) => r.fc.forward(features),
            Network::Vit(v) => v.head.forward(features),
        }
    }

    /// Reads a directory written by [`save`](Self::save) (or by the fixture script):
    /// `config.json` (a [`VisionConfig`]) and `model.safetensors` with PyTorch's names.
    ///
    /// # Errors
    /// I/O, config and checkpoint errors; missing, unexpected or misshapen weights.
    pub fn load(dir: impl AsRef<Path>, device: &Device, options: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join(kiln_checkpoint::CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            bad(format!(
                "{}: {e} (an image classifier directory holds config.json and model.safetensors)",
                path.display()
            ))
        })?;
        let config: VisionConfig = serde_json::from_str(&text)
            .map_err(|e| bad(format!("{}: not a vision config: {e}", path.display())))?;
        let mut model = Self::init(&config, device)?;
        let ckpt = Checkpoint::open(dir)?;
        let mut w = WeightLoader::new(&ckpt, device, "");
        match &mut model.net {
            Network::Mlp(m) => {
                for (i, l) in m.layers.iter_mut().enumerate() {
                    w.linear_out_in(&format!("layers.{i}"), l)?;
                }
                w.linear_out_in("head", &mut m.head)?;
            }
            Network::Resnet(r) => {
                w.conv2d("conv1", &mut r.conv1)?;
                load_bn(&mut w, "bn1", &mut r.bn1)?;
                for (s, stage) in r.stages.iter_mut().enumerate() {
                    for (b, blk) in stage.iter_mut().enumerate() {
                        let p = format!("layer{}.{b}", s + 1);
                        w.conv2d(&format!("{p}.conv1"), &mut blk.conv1)?;
                        load_bn(&mut w, &format!("{p}.bn1"), &mut blk.bn1)?;
                        w.conv2d(&format!("{p}.conv2"), &mut blk.conv2)?;
                        load_bn(&mut w, &format!("{p}.bn2"), &mut blk.bn2)?;
                        if let Some((c, n)) = blk.downsample.as_mut() {
                            w.conv2d(&format!("{p}.downsample.0"), c)?;
                            load_bn(&mut w, &format!("{p}.downsample.1"), n)?;
                        }
                    }
                }
                w.linear_out_in("fc", &mut r.fc)?;
            }
            Network::Vit(v) => {
                w.conv2d("patch_embed.proj", &mut v.patch_embed)?;
                for (name, p) in [
                    ("cls_token", &mut v.cls_token),
                    ("pos_embed", &mut v.pos_embed),
                ] {
                    let dims = p.dims();
                    if let Some(t) = w.tensor(name, dims)? {
                        set(p, t);
                    }
                }
                for (i, blk) in v.blocks.iter_mut().enumerate() {
                    let p = format!("blocks.{i}");
                    w.layer_norm(&format!("{p}.norm1"), &mut blk.norm1)?;
                    w.linear_out_in(&format!("{p}.attn.qkv"), &mut blk.qkv)?;
                    w.linear_out_in(&format!("{p}.attn.proj"), &mut blk.proj)?;
                    w.layer_norm(&format!("{p}.norm2"), &mut blk.norm2)?;
                    w.linear_out_in(&format!("{p}.mlp.fc1"), &mut blk.fc1)?;
                    w.linear_out_in(&format!("{p}.mlp.fc2"), &mut blk.fc2)?;
                }
                w.layer_norm("norm", &mut v.norm)?;
                w.linear_out_in("head", &mut v.head)?;
            }
        }
        // PyTorch's batch-norm step counters are not used
        w.finish(options, |n| n.ends_with("num_batches_tracked"))?;
        Ok(model)
    }

    /// Writes `config.json` and `model.safetensors` (PyTorch's names and layouts) into `dir`
    /// atomically, in `dtype`.
    ///
    /// # Errors
    /// [`Error::Config`] when `config` is not this model's; I/O and checkpoint errors; an
    /// existing `dir` without `force`.
    pub fn save(
        &self,
        config: &VisionConfig,
        dir: impl AsRef<Path>,
        dtype: Dtype,
        force: bool,
    ) -> Result<()> {
        let input = config.input();
        if [input.channels, input.height, input.width] != self.input
            || config.classes() != self.classes
        {
            return Err(bad("save: the config given is not this model's".into()));
        }
        let mut w = WeightWriter::new();
        match &self.net {
            Network::Mlp(m) => {
                for (i, l) in m.layers.iter().enumerate() {
                    w.linear_out_in(&format!("layers.{i}"), l);
                }
                w.linear_out_in("head", &m.head);
            }
            Network::Resnet(r) => {
                save_conv(&mut w, "conv1", &r.conv1);
                save_bn(&mut w, "bn1", &r.bn1);
                for (s, stage) in r.stages.iter().enumerate() {
                    for (b, blk) in stage.iter().enumerate() {
                        let p = format!("layer{}.{b}", s + 1);
                        save_conv(&mut w, &format!("{p}.conv1"), &blk.conv1);
                        save_bn(&mut w, &format!("{p}.bn1"), &blk.bn1);
                        save_conv(&mut w, &format!("{p}.conv2"), &blk.conv2);
                        save_bn(&mut w, &format!("{p}.bn2"), &blk.bn2);
                        if let Some((c, n)) = &blk.downsample {
                            save_conv(&mut w, &format!("{p}.downsample.0"), c);
                            save_bn(&mut w, &format!("{p}.downsample.1"), n);
                        }
                    }
                }
                w.linear_out_in("fc", &r.fc);
            }
            Network::Vit(v) => {
                save_conv(&mut w, "patch_embed.proj", &v.patch_embed);
                w.tensor("cls_token", v.cls_token.val());
                w.tensor("pos_embed", v.pos_embed.val());
                for (i, blk) in v.blocks.iter().enumerate() {
                    let p = format!("blocks.{i}");
                    w.layer_norm(&format!("{p}.norm1"), &blk.norm1);
                    w.linear_out_in(&format!("{p}.attn.qkv"), &blk.qkv);
                    w.linear_out_in(&format!("{p}.attn.proj"), &blk.proj);
                    w.layer_norm(&format!("{p}.norm2"), &blk.norm2);
                    w.linear_out_in(&format!("{p}.mlp.fc1"), &blk.fc1);
                    w.linear_out_in(&format!("{p}.mlp.fc2"), &blk.fc2);
                }
                w.layer_norm("norm", &v.norm);
                w.linear_out_in("head", &v.head);
            }
        }
        let json = serde_json::to_string_pretty(config).expect("config serialises");
        w.write(dir.as_ref(), &json, dtype, force)
    }
}

/// timm's `Attention`: fused qkv, heads, softmax(q·kᵀ/√d)·v, output projection.
fn attention(blk: &VitBlock, x: Tensor<3>) -> Tensor<3> {
    let [b, n, dim] = x.dims();
    let h = blk.heads;
    let dh = dim / h;
    let qkv = blk
        .qkv
        .forward(x)
        .reshape([b, n, 3, h, dh])
        .permute([2, 0, 3, 1, 4]); // [3, B, H, N, dh]
    let take = |i: usize| {
        qkv.clone()
            .slice([i..i + 1, 0..b, 0..h, 0..n, 0..dh])
            .reshape([b, h, n, dh])
    };
    let (q, k, v) = (take(0), take(1), take(2));
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(1.0 / (dh as f64).sqrt());
    let out = softmax(scores, 3).matmul(v); // [B, H, N, dh]
    blk.proj.forward(out.swap_dims(1, 2).reshape([b, n, dim]))
}

fn load_bn(w: &mut WeightLoader<'_>, prefix: &str, bn: &mut BatchNorm) -> Result<()> {
    let dims = bn.gamma.dims();
    if let Some(t) = w.tensor(&format!("{prefix}.weight"), dims)? {
        set(&mut bn.gamma, t);
    }
    if let Some(t) = w.tensor(&format!("{prefix}.bias"), dims)? {
        set(&mut bn.beta, t);
    }
    if let Some(t) = w.tensor(&format!("{prefix}.running_mean"), dims)? {
        bn.running_mean = RunningState::new(t);
    }
    if let Some(t) = w.tensor(&format!("{prefix}.running_var"), dims)? {
        bn.running_var = RunningState::new(t);
    }
    Ok(())
}

fn save_conv(w: &mut WeightWriter, prefix: &str, c: &Conv2d) {
    w.tensor(format!("{prefix}.weight"), c.weight.val());
    if let Some(b) = &c.bias {
        w.tensor(format!("{prefix}.bias"), b.val());
    }
}

fn save_bn(w: &mut WeightWriter, prefix: &str, bn: &BatchNorm) {
    w.tensor(format!("{prefix}.weight"), bn.gamma.val());
    w.tensor(format!("{prefix}.bias"), bn.beta.val());
    w.tensor(format!("{prefix}.running_mean"), bn.running_mean.value());
    w.tensor(format!("{prefix}.running_var"), bn.running_var.value());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Tensor<2>, b: Tensor<2>) -> bool {
        let (a, b) = (
            a.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(),
            b.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(),
        );
        a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn layer_features_list_every_representation_and_end_with_the_features() {
        let d = Device::flex();
        d.seed(5);
        let input = ImageShape {
            channels: 1,
            height: 8,
            width: 8,
        };
        let configs = [
            (
                VisionConfig::Mlp(MlpConfig {
                    input,
                    hidden: vec![12, 7],
                    classes: 3,
                }),
                vec![12, 7],
            ),
            (
                VisionConfig::Resnet(ResNetConfig {
                    input,
                    widths: vec![4, 6],
                    blocks: 2,
                    classes: 3,
                }),
                // stem 4·8·8, two blocks at 8×8, two at 4×4, pooled 6
                vec![256, 256, 256, 96, 96, 6],
            ),
            (
                VisionConfig::Vit(VitConfig {
                    depth: 2,
                    ..VitConfig::tiny(8, 4, 1, 3)
                }),
                vec![320, 320, 320, 64],
            ),
        ];
        for (config, dims) in configs {
            let model = ImageClassifier::init(&config, &d).unwrap();
            let x = Tensor::<4>::random([2, 1, 8, 8], burn::tensor::Distribution::Default, &d);
            let layers = model.layer_features(x.clone()).unwrap();
            let got: Vec<usize> = layers.iter().map(|t| t.dims()[1]).collect();
            assert_eq!(got, dims, "{config:?}");
            assert!(layers.iter().all(|t| t.dims()[0] == 2));
            let last = layers.last().unwrap().clone();
            assert!(close(last, model.features(x).unwrap()), "{config:?}");
        }
    }
}
