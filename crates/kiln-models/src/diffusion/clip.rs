//! The CLIP text encoder as transformers' `CLIPTextModel` defines it — what a Stable Diffusion
//! pipeline keeps in `text_encoder/` (SD 1.x: OpenAI CLIP ViT-L/14; SD 2: OpenCLIP ViT-H/14
//! with its last layer dropped, 23 layers, GELU): token and position embeddings, pre-LN
//! transformer layers with causal self-attention, a final LayerNorm. The UNet reads
//! [`ClipTextOutput::last_hidden_state`]; `pooled` is the state at each sequence's end token.
//!
//! ```
//! use kiln_models::burn::tensor::{Device, Int, Tensor, TensorData};
//! use kiln_models::diffusion::clip::{ClipTextConfig, ClipTextModel};
//!
//! let config = ClipTextConfig { vocab_size: 99, hidden_size: 32, intermediate_size: 37,
//!     num_hidden_layers: 2, num_attention_heads: 4, max_position_embeddings: 16,
//!     ..ClipTextConfig::default() };
//! let d = Device::flex();
//! let model = ClipTextModel::init(&config, &d)?;
//! let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 5, 7, 98], [1, 4]), &d);
//! let out = model.forward(ids, None)?;
//! assert_eq!(out.last_hidden_state.dims(), [1, 4, 32]);
//! assert_eq!(out.pooled.dims(), [1, 32]);
//! # Ok::<(), kiln_models::Error>(())
//! ```

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::common::{Activation, merge_heads, multi_head_attention, split_heads};
use crate::error::{Error, Result, config_err};
use crate::weights::{LoadOptions, WeightLoader};

fn d_act() -> Activation {
    Activation::QuickGelu
}
fn d_eps() -> f64 {
    1e-5
}
fn d_eos() -> i64 {
    2
}

/// transformers' `CLIPTextConfig` (`text_encoder/config.json`); defaults are transformers'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Positions (77 for Stable Diffusion).
    pub max_position_embeddings: usize,
    /// `quick_gelu` (OpenAI CLIP) or `gelu` (OpenCLIP, SD 2).
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    /// LayerNorm ε.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// The end-of-text token; 2 (the old default) means "the largest id in the row", as
    /// transformers reads older configs.
    #[serde(default = "d_eos")]
    pub eos_token_id: i64,
}

impl Default for ClipTextConfig {
    /// transformers' `CLIPTextConfig()` (a ViT-B/32 text tower).
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 2,
        }
    }
}

impl ClipTextConfig {
    /// Reads a `config.json` (a `CLIPTextConfig`, or a `CLIPConfig` with a `text_config`).
    ///
    /// # Errors
    /// I/O and JSON errors naming the file; [`validate`](Self::validate)'s.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut v: serde_json::Value = crate::common::read_json(path, "a JSON config")?;
        if let Some(t) = v.get("text_config") {
            v = t.clone();
        }
        let c: Self = serde_json::from_value(v)
            .map_err(|e| config_err(format!("{}: not a CLIP text config: {e}", path.display())))?;
        c.validate()
            .map_err(|e| config_err(format!("{}: {e}", path.display())))?;
        Ok(c)
    }

    /// Checks the sizes fit together.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(config_err(format!(
                "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(config_err(format!("`{field}` must be at least 1")));
            }
        }
        Ok(())
    }
}

/// One pre-LN layer: `x + attn(ln1(x))`, then `x + fc2(act(fc1(ln2(x))))`.
#[derive(Module, Debug)]
pub struct ClipLayer {
    /// LayerNorm before attention.
    pub layer_norm1: LayerNorm,
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub out_proj: Linear,
    /// LayerNorm before the MLP.
    pub layer_norm2: LayerNorm,
    /// MLP in.
    pub fc1: Linear,
    /// MLP out.
    pub fc2: Linear,
}

/// `CLIPTextModel`. See the [module docs](self).
#[derive(Module, Debug)]
pub struct ClipTextModel {
    /// `[vocab, d]`.
    pub token_embedding: Embedding,
    /// `[positions, d]`.
    pub position_embedding: Embedding,
    /// The layers.
    pub layers: Vec<ClipLayer>,
    /// Final LayerNorm.
    pub final_layer_norm: LayerNorm,
    /// The configuration.
    #[module(skip)]
    pub config: ClipTextConfig,
}

/// What [`ClipTextModel::forward`] returns.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// `[B, L, d]` after the final LayerNorm (what Stable Diffusion conditions on).
    pub last_hidden_state: Tensor<3>,
    /// `[B, d]`: the state at each row's end token.
    pub pooled: Tensor<2>,
}

impl ClipTextModel {
    /// A randomly initialised model.
    ///
    /// # Errors
    /// [`ClipTextConfig::validate`]'s.
    pub fn init(config: &ClipTextConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let d = config.hidden_size;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let lin = |i: usize, o: usize| LinearConfig::new(i, o).init(device);
        Ok(Self {
            token_embedding: EmbeddingConfig::new(config.vocab_size, d).init(device),
            position_embedding: EmbeddingConfig::new(config.max_position_embeddings, d)
                .init(device),
            layers: (0..config.num_hidden_layers)
                .map(|_| ClipLayer {
                    layer_norm1: ln(),
                    q_proj: lin(d, d),
                    k_proj: lin(d, d),
                    v_proj: lin(d, d),
                    out_proj: lin(d, d),
                    layer_norm2: ln(),
                    fc1: lin(d, config.intermediate_size),
                    fc2: lin(config.intermediate_size, d),
                })
                .collect(),
            final_layer_norm: ln(),
            config: config.clone(),
        })
    }

    /// Loads `config.json` and `model.safetensors` (or shards) of a transformers
    /// `CLIPTextModel` directory — a pipeline's `text_encoder/`. Names with or without the
    /// `text_model.` prefix (transformers 4 wrote it, transformers 5 does not).
    ///
    /// # Errors
    /// Config, checkpoint, missing/unexpected/shape errors naming the tensor.
    pub fn load(dir: impl AsRef<Path>, device: &Device, options: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ClipTextConfig::from_file(dir.join("config.json"))?;
        let mut model = Self::init(&config, device)?;
        let ckpt = kiln_checkpoint::Checkpoint::open(dir)?;
        // transformers 4 saved the text tower under `text_model.` (Stable Diffusion pipelines on
        // the Hub); transformers 5 saves `CLIPTextModel` without the prefix
        let prefix = if ckpt.contains("text_model.embeddings.token_embedding.weight") {
            "text_model."
        } else {
            ""
        };
        let mut w = WeightLoader::new(&ckpt, device, prefix);
        w.embedding(
            "embeddings.token_embedding.weight",
            &mut model.token_embedding,
        )?;
        w.embedding(
            "embeddings.position_embedding.weight",
            &mut model.position_embedding,
        )?;
        for (i, l) in model.layers.iter_mut().enumerate() {
            let p = format!("encoder.layers.{i}");
            w.layer_norm(&format!("{p}.layer_norm1"), &mut l.layer_norm1)?;
            for (name, lin) in [
                ("q_proj", &mut l.q_proj),
                ("k_proj", &mut l.k_proj),
                ("v_proj", &mut l.v_proj),
                ("out_proj", &mut l.out_proj),
            ] {
                w.linear_out_in(&format!("{p}.self_attn.{name}"), lin)?;
            }
            w.layer_norm(&format!("{p}.layer_norm2"), &mut l.layer_norm2)?;
            w.linear_out_in(&format!("{p}.mlp.fc1"), &mut l.fc1)?;
            w.linear_out_in(&format!("{p}.mlp.fc2"), &mut l.fc2)?;
        }
        w.layer_norm("final_layer_norm", &mut model.final_layer_norm)?;
        // position_ids is a buffer in older checkpoints
        w.finish(options, |n| n.ends_with("position_ids"))?;
        Ok(model)
    }

    /// Encodes token ids `[B, L]` (L ≤ `max_position_embeddings`); `attention_mask` `[B, L]`
    /// (1 = token, 0 = padding) also hides padding keys, as transformers does. Every position
    /// attends causally.
    ///
    /// # Errors
    /// [`Error::Input`] for a sequence longer than the positions or an id outside the
    /// vocabulary.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Result<ClipTextOutput> {
        let [b, l] = input_ids.dims();
        let c = &self.config;
        if l == 0 || l > c.max_position_embeddings {
            return Err(Error::Input {
                message: format!(
                    "{l} tokens; the text encoder takes 1 to {} (max_position_embeddings)",
                    c.max_position_embeddings
                ),
            });
        }
        let ids: Vec<i64> = input_ids
            .clone()
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| Error::Input {
                message: format!("token ids: {e:?}"),
            })?;
        if let Some(&bad) = ids.iter().find(|&&t| t < 0 || t as usize >= c.vocab_size) {
            return Err(Error::Input {
                message: format!(
                    "token id {bad} is outside the vocabulary of {} (vocab_size)",
                    c.vocab_size
                ),
            });
        }
        let device = input_ids.device();
        let positions = Tensor::<1, Int>::arange(0..l as i64, &device)
            .reshape([1, l])
            .expand([b, l]);
        let mut x =
            self.token_embedding.forward(input_ids) + self.position_embedding.forward(positions);
        let key_padding = attention_mask.map(|m| m.equal_elem(0));
        let heads = c.num_attention_heads;
        let scale = 1.0 / ((c.hidden_size / heads) as f64).sqrt();
        let no_dropout = burn::nn::DropoutConfig::new(0.0).init();
        for layer in &self.layers {
            let h = layer.layer_norm1.forward(x.clone());
            let q = split_heads(layer.q_proj.forward(h.clone()), heads);
            let k = split_heads(layer.k_proj.forward(h.clone()), heads);
            let v = split_heads(layer.v_proj.forward(h), heads);
            let a = multi_head_attention(
                (q, k, v),
                key_padding.clone(),
                None,
                scale,
                true,
                &no_dropout,
            );
            x = x + layer.out_proj.forward(merge_heads(a));
            let h = layer.layer_norm2.forward(x.clone());
            x = x + layer
                .fc2
                .forward(c.hidden_act.forward(layer.fc1.forward(h)));
        }
        let x = self.final_layer_norm.forward(x);
        // the end token: the largest id (eos_token_id 2, older configs) or the first eos
        let ends: Vec<i64> = ids
            .chunks(l)
            .map(|row| {
                let pos = if c.eos_token_id == 2 {
                    row.iter()
                        .enumerate()
                        .fold(0, |best, (i, &t)| if t > row[best] { i } else { best })
                } else {
                    row.iter().position(|&t| t == c.eos_token_id).unwrap_or(0)
                };
                pos as i64
            })
            .collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(ends, [b]), &device)
            .reshape([b, 1, 1])
            .expand([b, 1, c.hidden_size]);
        let pooled = x.clone().gather(1, idx).reshape([b, c.hidden_size]);
        Ok(ClipTextOutput {
            last_hidden_state: x,
            pooled,
        })
    }
}
