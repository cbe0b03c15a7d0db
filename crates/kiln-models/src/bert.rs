//! BERT (Devlin et al. 2019) and MosaicBERT (Portes et al., NeurIPS 2023, arXiv 2312.17482) in one
//! implementation, selected by the config.
//!
//! - **HF BERT** (`bert-base-uncased`): learned positions, GELU MLP, post-LN, LN eps 1e-12.
//! - **MosaicBERT** (`mosaicml/mosaic-bert-base`, recognised by `alibi_starting_size` in its
//!   `config.json`): no position embeddings and **ALiBi** (`bias[h, i, j] = −m_h·|i − j|`, added
//!   after the 1/√d scaling, slopes exact for any head count), **GeGLU** MLP (the first half of
//!   `gated_layers` is the gate, through exact GELU; dropout before the down-projection), optional
//!   **unpadding** (per-token work on real tokens only) and low-precision LayerNorm.
//!
//! Weights load from either Hugging Face layout: HF's separate `query`/`key`/`value` are fused into
//! one `[d, 3d]` projection on load and split again on save, so a round trip is exact.

use std::path::Path;

use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    LinearConfig,
};
use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use burn::tensor::activation::tanh;
use kiln_checkpoint::{Checkpoint, Dtype};
use serde::{Deserialize, Serialize};

use crate::common::{
    Activation, LayerNormPrecision, config_path, cross_entropy, layer_norm_in, merge_heads,
    multi_head_attention, split_heads, weighted_cross_entropy, zero_bias,
};
use crate::cpu::{DropoutExt, tied_projection};
use crate::dense::{Dense, DenseLayers, DenseView, join, visit_one};
use crate::error::{Error, Result, config_err};
use crate::weights::{LoadOptions, WeightLoader, WeightWriter, set};

fn d_vocab() -> usize {
    30522
}
fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_inter() -> usize {
    3072
}
fn d_drop() -> f64 {
    0.1
}
fn d_pos() -> usize {
    512
}
fn d_types() -> usize {
    2
}
fn d_init() -> f64 {
    0.02
}
fn d_eps() -> f64 {
    1e-12
}
fn d_act() -> Activation {
    Activation::Gelu
}

/// BERT hyper-parameters with Hugging Face's field names (plus MosaicBERT's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size (MosaicBERT pads it to a multiple of 8: 30,528).
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Width.
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// Layers.
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    /// Heads.
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// MLP width (for GeGLU, the width of each half).
    #[serde(default = "d_inter")]
    pub intermediate_size: usize,
    /// MLP and MLM-head activation (GeGLU always uses exact GELU).
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    /// Dropout on hidden states.
    #[serde(default = "d_drop")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (MosaicBERT: 0).
    #[serde(default = "d_drop")]
    pub attention_probs_dropout_prob: f64,
    /// Learned positions (absolute embeddings only).
    #[serde(default = "d_pos")]
    pub max_position_embeddings: usize,
    /// Token types.
    #[serde(default = "d_types")]
    pub type_vocab_size: usize,
    /// Initial weight standard deviation.
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Padding token id (`None`: 0).
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// MosaicBERT's ALiBi buffer size; its presence marks a MosaicBERT config.
    #[serde(default)]
    pub alibi_starting_size: Option<usize>,
    /// ALiBi instead of learned positions (default: MosaicBERT configs).
    #[serde(default)]
    pub alibi: Option<bool>,
    /// GeGLU MLP instead of GELU MLP (default: MosaicBERT configs).
    #[serde(default)]
    pub gated_mlp: Option<bool>,
    /// Classification labels.
    #[serde(default)]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
}

impl Default for BertConfig {
    fn default() -> Self {
        Self::bert_base()
    }
}

impl BertConfig {
    /// `bert-base-uncased`.
    pub fn bert_base() -> Self {
        serde_json::from_str("{}").expect("defaults deserialise")
    }

    /// MosaicBERT-Base: vocabulary 30,528, ALiBi, GeGLU, no attention dropout.
    pub fn mosaic_bert_base() -> Self {
        Self {
            vocab_size: 30528,
            attention_probs_dropout_prob: 0.0,
            alibi_starting_size: Some(512),
            ..Self::bert_base()
        }
    }

    /// Reads a Hugging Face `config.json`.
    ///
    /// # Errors
    /// I/O, JSON and validation errors.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let c: Self = serde_json::from_str(&text)
            .map_err(|e| config_err(format!("{}: {e}", path.display())))?;
        c.validate()?;
        Ok(c)
    }

    /// Whether attention uses ALiBi.
    pub fn uses_alibi(&self) -> bool {
        self.alibi.unwrap_or(self.alibi_starting_size.is_some())
    }

    /// Whether the MLP is GeGLU.
    pub fn uses_glu(&self) -> bool {
        self.gated_mlp.unwrap_or(self.alibi_starting_size.is_some())
    }

    /// Number of labels (`id2label`), default 2.
    pub fn num_labels(&self) -> usize {
        self.id2label.as_ref().map_or(2, |m| m.len())
    }

    /// Checks the dimensions fit together.
    ///
    /// # Errors
    /// A config error naming the inconsistent fields.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
        ] {
            if v == 0 {
                return Err(config_err(format!("{name} must be at least 1, got 0")));
            }
        }
        if !self.uses_alibi() && self.max_position_embeddings == 0 {
            return Err(config_err(
                "max_position_embeddings must be at least 1 for learned positions (got 0)",
            ));
        }
        if !self.layer_norm_eps.is_finite() || self.layer_norm_eps < 0.0 {
            return Err(config_err(format!(
                "layer_norm_eps must be a non-negative number, got {}",
                self.layer_norm_eps
            )));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(config_err(format!(
                "hidden_size ({}) must be a multiple of num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            )));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(config_err(format!("{name} must be in [0, 1), got {p}")));
            }
        }
        Ok(())
    }

    /// Parameters of the embeddings and encoder (no pooler, no heads).
    pub fn num_params(&self) -> usize {
        let (d, i, l) = (
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
        );
        let mut emb = self.vocab_size * d + 2 * d + self.type_vocab_size * d;
        if !self.uses_alibi() {
            emb += self.max_position_embeddings * d;
        }
        let attn = d * 3 * d + 3 * d + d * d + d + 2 * d;
        let mlp = if self.uses_glu() {
            d * 2 * i + i * d + d
        } else {
            d * i + i + i * d + d
        };
        emb + l * (attn + mlp + 2 * d)
    }

    /// Forward FLOPs per token at sequence length `seq_len`: 2 × the encoder's matmul
    /// parameters plus the attention scores, 2·layers·seq_len·hidden (Kaplan et al. 2020).
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        let (d, i, l) = (
            self.hidden_size as f64,
            self.intermediate_size as f64,
            self.num_hidden_layers as f64,
        );
        let mlp = if self.uses_glu() {
            3.0 * d * i
        } else {
            2.0 * d * i
        };
        2.0 * l * (4.0 * d * d + mlp) + 2.0 * l * seq_len as f64 * d
    }

    /// Builds a randomly initialised encoder (HF's scheme: N(0, initializer_range), zero biases).
    ///
    /// # Errors
    /// If the config is invalid.
    pub fn init(&self, device: &Device) -> Result<BertModel> {
        self.validate()?;
        let d = self.hidden_size;
        let i = self.intermediate_size;
        let normal = Initializer::Normal {
            mean: 0.0,
            std: self.initializer_range,
        };
        let lin = |a: usize, b: usize, bias: bool| {
            zero_bias(
                LinearConfig::new(a, b)
                    .with_bias(bias)
                    .with_initializer(normal.clone())
                    .init(device),
            )
        };
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let layers = (0..self.num_hidden_layers)
            .map(|_| BertLayer {
                qkv: lin(d, 3 * d, true),
                attn_out: lin(d, d, true),
                attn_ln: ln(),
                mlp: if self.uses_glu() {
                    BertMlp::Glu(GluMlp {
                        gated: lin(d, 2 * i, false),
                        wo: lin(i, d, true),
                    })
                } else {
                    BertMlp::Dense(DenseMlp {
                        intermediate: lin(d, i, true),
                        output: lin(i, d, true),
                    })
                },
                mlp_ln: ln(),
                attn_dropout: DropoutConfig::new(self.attention_probs_dropout_prob).init(),
                hidden_dropout: DropoutConfig::new(self.hidden_dropout_prob).init(),
            })
            .collect();
        Ok(BertModel {
            word_embeddings: EmbeddingConfig::new(self.vocab_size, d)
                .with_initializer(normal.clone())
                .init(device),
            position_embeddings: (!self.uses_alibi()).then(|| {
                EmbeddingConfig::new(self.max_position_embeddings, d)
                    .with_initializer(normal.clone())
                    .init(device)
            }),
            token_type_embeddings: (self.type_vocab_size > 0).then(|| {
                EmbeddingConfig::new(self.type_vocab_size, d)
                    .with_initializer(normal.clone())
                    .init(device)
            }),
            embeddings_ln: ln(),
            embeddings_dropout: DropoutConfig::new(self.hidden_dropout_prob).init(),
            layers,
            config: self.clone(),
            layer_norm_precision: LayerNormPrecision::Model,
        })
    }
}

/// ALiBi slopes for `heads` heads, exactly as MosaicBERT (and the ALiBi paper): for a power of two
/// `n`, `2^(−8(k+1)/n)`; otherwise the slopes of the largest power of two `c < n`, then every other
/// slope of `2c`.
pub fn alibi_slopes(heads: usize) -> Vec<f64> {
    fn pow2(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-(2f64.powf(-((n as f64).log2() - 3.0))));
        (0..n).map(|k| start.powi(k as i32 + 1)).collect()
    }
    if heads == 0 {
        return Vec::new();
    }
    if heads.is_power_of_two() {
        return pow2(heads);
    }
    let c = 1usize << (usize::BITS - 1 - heads.leading_zeros());
    let mut s = pow2(c);
    s.extend(pow2(2 * c).into_iter().step_by(2).take(heads - c));
    s
}

/// The ALiBi bias `[1, heads, len, len]`: `−m_h·|i − j|`.
pub fn alibi_bias(heads: usize, len: usize, device: &Device) -> Tensor<4> {
    let slopes: Vec<f32> = alibi_slopes(heads).into_iter().map(|s| s as f32).collect();
    let pos = Tensor::<1, Int>::arange(0..len as i64, device).float();
    let dist = (pos.clone().reshape([len, 1]) - pos.reshape([1, len])).abs();
    let m = Tensor::<1>::from_data(burn::tensor::TensorData::new(slopes, [heads]), device);
    (m.reshape([heads, 1, 1]) * dist.unsqueeze::<3>())
        .neg()
        .unsqueeze()
}

/// The encoder (HF `BertModel` without the pooler).
#[derive(Module, Debug)]
pub struct BertModel {
    /// `[vocab, d]`.
    pub word_embeddings: Embedding,
    /// Learned positions (absent with ALiBi).
    pub position_embeddings: Option<Embedding>,
    /// Token types.
    pub token_type_embeddings: Option<Embedding>,
    /// Embedding LayerNorm.
    pub embeddings_ln: LayerNorm,
    /// Embedding dropout.
    pub embeddings_dropout: Dropout,
    /// The layers.
    pub layers: Vec<BertLayer>,
    /// The configuration.
    #[module(skip)]
    pub config: BertConfig,
    /// The precision LayerNorms compute in ([`LayerNormPrecision`]; default: the model's).
    #[module(skip)]
    pub layer_norm_precision: LayerNormPrecision,
}

/// A post-LN encoder layer.
#[derive(Module, Debug)]
pub struct BertLayer {
    /// Fused `[q | k | v]`, `[d, 3d]`.
    pub qkv: Dense,
    /// Attention output projection.
    pub attn_out: Dense,
    /// LayerNorm after attention (on `dropout(attn_out) + x`).
    pub attn_ln: LayerNorm,
    /// The MLP.
    pub mlp: BertMlp,
    /// LayerNorm after the MLP.
    pub mlp_ln: LayerNorm,
    /// Attention-probability dropout.
    pub attn_dropout: Dropout,
    /// Hidden-state dropout.
    pub hidden_dropout: Dropout,
}

/// The two MLP variants.
#[derive(Module, Debug)]
pub enum BertMlp {
    /// `output(act(intermediate(x)))`, dropout after `output` (HF BERT).
    Dense(DenseMlp),
    /// GeGLU: `wo(dropout(gelu(g[..i]) · g[i..]))` with `g = gated(x)` (MosaicBERT).
    Glu(GluMlp),
}

/// HF BERT's MLP.
#[derive(Module, Debug)]
pub struct DenseMlp {
    /// `[d, i]`.
    pub intermediate: Dense,
    /// `[i, d]`.
    pub output: Dense,
}

/// MosaicBERT's GeGLU MLP.
#[derive(Module, Debug)]
pub struct GluMlp {
    /// `[d, 2i]`, no bias.
    pub gated: Dense,
    /// `[i, d]`.
    pub wo: Dense,
}

/// Where the real tokens are, for the unpadded path.
#[derive(Debug, Clone)]
struct Unpad {
    /// Flat indices `b·S + s` of real tokens.
    indices: Tensor<1, Int>,
    batch: usize,
    seq: usize,
}

impl Unpad {
    fn gather(&self, x: Tensor<3>) -> Tensor<2> {
        let d = x.dims()[2];
        x.reshape([self.batch * self.seq, d])
            .select(0, self.indices.clone())
    }

    fn scatter(&self, x: Tensor<2>) -> Tensor<3> {
        let d = x.dims()[1];
        let zeros = Tensor::<2>::zeros([self.batch * self.seq, d], &x.device());
        zeros
            .select_assign(0, self.indices.clone(), x, IndexingUpdateOp::Add)
            .reshape([self.batch, self.seq, d])
    }
}

impl BertModel {
    fn ln<const D: usize>(&self, ln: &LayerNorm, x: Tensor<D>) -> Tensor<D> {
        layer_norm_in(self.layer_norm_precision, ln, x, self.config.layer_norm_eps)
    }

    fn embed(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
    ) -> Tensor<3> {
        let [b, l] = input_ids.dims();
        let device = input_ids.device();
        let mut x = self.word_embeddings.forward(input_ids);
        if let Some(p) = &self.position_embeddings {
            let pos = Tensor::<1, Int>::arange(0..l as i64, &device)
                .reshape([1, l])
                .expand([b, l]);
            x = x + p.forward(pos);
        }
        if let Some(t) = &self.token_type_embeddings {
            let tt = token_type_ids.unwrap_or_else(|| Tensor::<2, Int>::zeros([b, l], &device));
            x = x + t.forward(tt);
        }
        self.embeddings_dropout
            .apply(self.ln(&self.embeddings_ln, x))
    }

    fn attention_bias(&self, b: usize, l: usize, device: &Device) -> Option<Tensor<4>> {
        let h = self.config.num_attention_heads;
        self.config
            .uses_alibi()
            .then(|| alibi_bias(h, l, device).expand([b, h, l, l]))
    }

    fn mlp(&self, layer: &BertLayer, a: Tensor<3>) -> Tensor<3> {
        let y = match &layer.mlp {
            BertMlp::Dense(DenseMlp {
                intermediate,
                output,
            }) => layer.hidden_dropout.apply(
                output.forward(
                    self.config
                        .hidden_act
                        .forward(intermediate.forward(a.clone())),
                ),
            ),
            BertMlp::Glu(GluMlp { gated, wo }) => {
                let i = self.config.intermediate_size;
                let g = gated.forward(a.clone());
                let h = crate::cpu::gelu(g.clone().narrow(2, 0, i)) * g.narrow(2, i, i);
                wo.forward(layer.hidden_dropout.apply(h))
            }
        };
        self.ln(&layer.mlp_ln, y + a)
    }

    /// The attention half of a layer on padded `[B, L, d]` states.
    fn attention(
        &self,
        layer: &BertLayer,
        x: Tensor<3>,
        key_padding: Option<Tensor<2, Bool>>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        let d = x.dims()[2];
        let h = self.config.num_attention_heads;
        let qkv = layer.qkv.forward(x);
        let q = split_heads(qkv.clone().narrow(2, 0, d), h);
        let k = split_heads(qkv.clone().narrow(2, d, d), h);
        let v = split_heads(qkv.narrow(2, 2 * d, d), h);
        let scale = 1.0 / ((d / h) as f64).sqrt();
        merge_heads(multi_head_attention(
            (q, k, v),
            key_padding,
            bias,
            scale,
            false,
            &layer.attn_dropout,
        ))
    }

    /// Hidden states `[B, L, d]`.
    ///
    /// `attention_mask` is `[B, L]`, 1 for real tokens and 0 for padding. With [`Padding::Unpadded`], per-token
    /// work (projections, MLP, LayerNorms) runs only on real tokens (MosaicBERT's unpadding) and
    /// padded positions come back as zeros; real positions agree with the padded path to float
    /// tolerance.
    ///
    /// # Shapes
    /// - `input_ids`, `token_type_ids`, `attention_mask`: `[B, L]`
    /// - output: `[B, L, hidden_size]`
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
        padding: Padding,
    ) -> Tensor<3> {
        self.forward_layers(
            input_ids,
            token_type_ids,
            attention_mask,
            padding,
            self.layers.len(),
        )
    }

    /// Hidden states at the flat positions `subset` (`b·L + s`), `[n, hidden_size]`, computing
    /// the final layer's attention output, LayerNorms and MLP only for those positions
    /// (MosaicBERT's last-layer shortcut for MLM: the subset is the masked tokens). Equal to
    /// selecting the rows of [`forward`](Self::forward).
    pub fn forward_subset(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
        padding: Padding,
        subset: Tensor<1, Int>,
    ) -> Tensor<2> {
        let [b, l] = input_ids.dims();
        let n = self.layers.len();
        let h = self.forward_layers(
            input_ids,
            token_type_ids,
            attention_mask.clone(),
            padding,
            n - 1,
        );
        let last = &self.layers[n - 1];
        let d = h.dims()[2];
        let key_padding = attention_mask.map(|m| m.equal_elem(0));
        let bias = self.attention_bias(b, l, &h.device());
        let attn = self
            .attention(last, h.clone(), key_padding, bias)
            .reshape([b * l, d])
            .select(0, subset.clone());
        let x = h.reshape([b * l, d]).select(0, subset);
        let a = self.ln(
            &last.attn_ln,
            last.hidden_dropout.apply(last.attn_out.forward(attn)) + x,
        );
        self.mlp(last, a.unsqueeze::<3>()).squeeze_dim(0)
    }

    /// The embeddings and the first `upto` layers.
    fn forward_layers(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
        padding: Padding,
        upto: usize,
    ) -> Tensor<3> {
        let [b, l] = input_ids.dims();
        let device = input_ids.device();
        let x = self.embed(input_ids, token_type_ids);
        let key_padding = attention_mask.clone().map(|m| m.equal_elem(0));
        let bias = self.attention_bias(b, l, &device);
        match (padding, attention_mask) {
            (Padding::Unpadded, Some(mask)) => {
                let indices = mask
                    .reshape([b * l])
                    .not_equal_elem(0)
                    .argwhere()
                    .reshape([-1]);
                let u = Unpad {
                    indices,
                    batch: b,
                    seq: l,
                };
                let mut x = u.gather(x);
                for layer in &self.layers[..upto] {
                    // Attention needs the padded layout; everything else runs per real token.
                    let qkv = layer.qkv.forward(x.clone());
                    let attn = self.attention_padded(
                        layer,
                        u.scatter(qkv),
                        key_padding.clone(),
                        bias.clone(),
                    );
                    let a = self.ln(
                        &layer.attn_ln,
                        layer
                            .hidden_dropout
                            .apply(layer.attn_out.forward(u.gather(attn)))
                            + x,
                    );
                    x = self.mlp(layer, a.unsqueeze::<3>()).squeeze_dim(0);
                }
                u.scatter(x)
            }
            _ => {
                let mut x = x;
                for layer in &self.layers[..upto] {
                    let attn = self.attention(layer, x.clone(), key_padding.clone(), bias.clone());
                    let a = self.ln(
                        &layer.attn_ln,
                        layer.hidden_dropout.apply(layer.attn_out.forward(attn)) + x,
                    );
                    x = self.mlp(layer, a);
                }
                x
            }
        }
    }

    /// Attention from already-projected, padded `qkv` `[B, L, 3d]`.
    fn attention_padded(
        &self,
        layer: &BertLayer,
        qkv: Tensor<3>,
        key_padding: Option<Tensor<2, Bool>>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        let d = qkv.dims()[2] / 3;
        let h = self.config.num_attention_heads;
        let q = split_heads(qkv.clone().narrow(2, 0, d), h);
        let k = split_heads(qkv.clone().narrow(2, d, d), h);
        let v = split_heads(qkv.narrow(2, 2 * d, d), h);
        let scale = 1.0 / ((d / h) as f64).sqrt();
        merge_heads(multi_head_attention(
            (q, k, v),
            key_padding,
            bias,
            scale,
            false,
            &layer.attn_dropout,
        ))
    }

    fn load_weights(&mut self, w: &mut WeightLoader<'_>) -> Result<()> {
        let d = self.config.hidden_size;
        w.embedding(
            "embeddings.word_embeddings.weight",
            &mut self.word_embeddings,
        )?;
        if let Some(p) = self.position_embeddings.as_mut() {
            w.embedding("embeddings.position_embeddings.weight", p)?;
        }
        if let Some(t) = self.token_type_embeddings.as_mut() {
            w.embedding("embeddings.token_type_embeddings.weight", t)?;
        }
        w.layer_norm("embeddings.LayerNorm", &mut self.embeddings_ln)?;
        w.skip("embeddings.position_ids");
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("encoder.layer.{i}");
            if w.has(&format!("{p}.attention.self.Wqkv.weight")) {
                w.linear_out_in(&format!("{p}.attention.self.Wqkv"), &mut layer.qkv)?;
            } else {
                // HF: separate projections, fused here as [q | k | v].
                let mut parts = Vec::new();
                let mut biases = Vec::new();
                for name in ["query", "key", "value"] {
                    if let Some(t) =
                        w.transposed(&format!("{p}.attention.self.{name}.weight"), [d, d])?
                    {
                        parts.push(t);
                    }
                    if let Some(t) = w.tensor(&format!("{p}.attention.self.{name}.bias"), [d])? {
                        biases.push(t);
                    }
                }
                if parts.len() == 3 {
                    set(&mut layer.qkv.weight, Tensor::cat(parts, 1));
                }
                if let (3, Some(b)) = (biases.len(), layer.qkv.bias.as_mut()) {
                    set(b, Tensor::cat(biases, 0));
                }
            }
            w.linear_out_in(&format!("{p}.attention.output.dense"), &mut layer.attn_out)?;
            w.layer_norm(
                &format!("{p}.attention.output.LayerNorm"),
                &mut layer.attn_ln,
            )?;
            match &mut layer.mlp {
                BertMlp::Dense(DenseMlp {
                    intermediate,
                    output,
                }) => {
                    w.linear_out_in(&format!("{p}.intermediate.dense"), intermediate)?;
                    w.linear_out_in(&format!("{p}.output.dense"), output)?;
                    w.layer_norm(&format!("{p}.output.LayerNorm"), &mut layer.mlp_ln)?;
                }
                BertMlp::Glu(GluMlp { gated, wo }) => {
                    w.linear_out_in(&format!("{p}.mlp.gated_layers"), gated)?;
                    w.linear_out_in(&format!("{p}.mlp.wo"), wo)?;
                    w.layer_norm(&format!("{p}.mlp.layernorm"), &mut layer.mlp_ln)?;
                }
            }
        }
        Ok(())
    }

    fn save_weights(&self, w: &mut WeightWriter, prefix: &str) {
        let d = self.config.hidden_size;
        w.tensor(
            format!("{prefix}embeddings.word_embeddings.weight"),
            self.word_embeddings.weight.val(),
        );
        if let Some(p) = &self.position_embeddings {
            w.tensor(
                format!("{prefix}embeddings.position_embeddings.weight"),
                p.weight.val(),
            );
        }
        if let Some(t) = &self.token_type_embeddings {
            w.tensor(
                format!("{prefix}embeddings.token_type_embeddings.weight"),
                t.weight.val(),
            );
        }
        w.layer_norm(
            &format!("{prefix}embeddings.LayerNorm"),
            &self.embeddings_ln,
        );
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("{prefix}encoder.layer.{i}");
            match &layer.mlp {
                BertMlp::Glu(_) => w.linear_out_in(&format!("{p}.attention.self.Wqkv"), &layer.qkv),
                BertMlp::Dense(_) => {
                    let weight = layer.qkv.weight.val();
                    let bias = layer.qkv.bias.as_ref().map(|b| b.val());
                    for (j, name) in ["query", "key", "value"].iter().enumerate() {
                        w.tensor(
                            format!("{p}.attention.self.{name}.weight"),
                            weight.clone().narrow(1, j * d, d).transpose(),
                        );
                        if let Some(b) = &bias {
                            w.tensor(
                                format!("{p}.attention.self.{name}.bias"),
                                b.clone().narrow(0, j * d, d),
                            );
                        }
                    }
                }
            }
            w.linear_out_in(&format!("{p}.attention.output.dense"), &layer.attn_out);
            w.layer_norm(&format!("{p}.attention.output.LayerNorm"), &layer.attn_ln);
            match &layer.mlp {
                BertMlp::Dense(DenseMlp {
                    intermediate,
                    output,
                }) => {
                    w.linear_out_in(&format!("{p}.intermediate.dense"), intermediate);
                    w.linear_out_in(&format!("{p}.output.dense"), output);
                    w.layer_norm(&format!("{p}.output.LayerNorm"), &layer.mlp_ln);
                }
                BertMlp::Glu(GluMlp { gated, wo }) => {
                    w.linear_out_in(&format!("{p}.mlp.gated_layers"), gated);
                    w.linear_out_in(&format!("{p}.mlp.wo"), wo);
                    w.layer_norm(&format!("{p}.mlp.layernorm"), &layer.mlp_ln);
                }
            }
        }
    }
}

/// Opens a BERT directory (or `.safetensors` file): its checkpoint and its `config.json`.
///
/// # Errors
/// Checkpoint and config errors.
pub fn open(dir: impl AsRef<Path>) -> Result<(Checkpoint, BertConfig)> {
    let dir = dir.as_ref();
    let ckpt = Checkpoint::open(dir)?;
    let config = BertConfig::from_file(config_path(dir))?;
    Ok((ckpt, config))
}

/// A fresh encoder for `config` and the prefix its weights carry in `ckpt`.
fn encoder(
    ckpt: &Checkpoint,
    config: &BertConfig,
    device: &Device,
) -> Result<(BertModel, &'static str)> {
    let model = config.init(device)?;
    let prefix = if ckpt.contains("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    };
    Ok((model, prefix))
}

/// The pooler: `tanh(dense(h[:, 0]))`.
#[derive(Module, Debug)]
pub struct BertPooler {
    /// `[d, d]`.
    pub dense: Dense,
}

impl BertPooler {
    fn forward(&self, h: Tensor<3>) -> Tensor<2> {
        let [b, _, d] = h.dims();
        tanh(self.dense.forward(h.narrow(1, 0, 1).reshape([b, d])))
    }
}

/// The encoder with its pooler (HF `BertModel`).
#[derive(Module, Debug)]
pub struct BertWithPooler {
    /// The encoder.
    pub bert: BertModel,
    /// The pooler.
    pub pooler: BertPooler,
}

impl BertWithPooler {
    /// Loads an HF `BertModel` directory (weights without the `bert.` prefix, pooler included).
    ///
    /// # Errors
    /// Config, checkpoint, missing/unexpected/shape errors.
    pub fn load(dir: impl AsRef<Path>, device: &Device, options: LoadOptions) -> Result<Self> {
        let (ckpt, config) = open(dir)?;
        Self::from_checkpoint(&ckpt, &config, device, options)
    }

    /// Loads from an opened checkpoint with its config (see [`open`]).
    ///
    /// # Errors
    /// Missing/unexpected/shape errors.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        config: &BertConfig,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self> {
        let (mut bert, prefix) = encoder(ckpt, config, device)?;
        let mut w = WeightLoader::new(ckpt, device, prefix);
        bert.load_weights(&mut w)?;
        let mut dense: Dense = LinearConfig::new(config.hidden_size, config.hidden_size)
            .init(device)
            .into();
        w.linear_out_in("pooler.dense", &mut dense)?;
        w.finish(options, |_| false)?;
        Ok(Self {
            bert,
            pooler: BertPooler { dense },
        })
    }

    /// `(sequence output [B, L, d], pooled output [B, d])`.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> (Tensor<3>, Tensor<2>) {
        let h = self
            .bert
            .forward(input_ids, token_type_ids, attention_mask, Padding::Padded);
        let pooled = self.pooler.forward(h.clone());
        (h, pooled)
    }
}

/// Masked-language-model head: `decoder(LN(act(dense(h))))` with the decoder tied to the word
/// embeddings plus its own bias.
#[derive(Module, Debug)]
pub struct BertForMaskedLm {
    /// The encoder.
    pub bert: BertModel,
    /// Transform `[d, d]`.
    pub transform: Dense,
    /// Transform LayerNorm.
    pub transform_ln: LayerNorm,
    /// Decoder bias `[vocab]`.
    pub decoder_bias: burn::module::Param<Tensor<1>>,
}

/// Label value of positions that are not predicted (as in transformers).
pub const IGNORE_INDEX: i64 = -100;

/// How the encoder treats padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// Every position goes through every layer (transformers' BERT).
    #[default]
    Padded,
    /// MosaicBERT's unpadding: the per-token work (projections, MLP, LayerNorms) runs on real
    /// tokens only; padded positions come back as zeros. Needs an attention mask.
    Unpadded,
}

/// Which positions the MLM head runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MlmPositions {
    /// Every position (the logits of all tokens).
    #[default]
    All,
    /// Masked positions only: the last layer's attention output and MLP and the head skip the
    /// others (MosaicBERT's shortcut; the loss is the same).
    MaskedOnly,
}

/// Mean cross-entropy over the rows whose label is not [`IGNORE_INDEX`].
fn cross_entropy_ignoring(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let kept = labels.clone().not_equal_elem(IGNORE_INDEX);
    let targets = labels.mask_fill(kept.clone().bool_not(), 0);
    weighted_cross_entropy(logits, targets, kept.float())
}

impl BertForMaskedLm {
    /// A randomly initialised model.
    ///
    /// # Errors
    /// If the config is invalid.
    pub fn init(config: &BertConfig, device: &Device) -> Result<Self> {
        let d = config.hidden_size;
        Ok(Self {
            bert: config.init(device)?,
            transform: zero_bias(
                LinearConfig::new(d, d)
                    .with_initializer(Initializer::Normal {
                        mean: 0.0,
                        std: config.initializer_range,
                    })
                    .init(device),
            ),
            transform_ln: LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_eps)
                .init(device),
            decoder_bias: burn::module::Param::from_tensor(Tensor::zeros(
                [config.vocab_size],
                device,
            )),
        })
    }

    fn head(&self, h: Tensor<3>) -> Tensor<3> {
        let t = self.bert.ln(
            &self.transform_ln,
            self.bert
                .config
                .hidden_act
                .forward(self.transform.forward(h)),
        );
        let w = self.bert.word_embeddings.weight.val();
        tied_projection(t, w) + self.decoder_bias.val().unsqueeze()
    }

    /// Token logits `[B, L, vocab]`.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
        padding: Padding,
    ) -> Tensor<3> {
        self.head(
            self.bert
                .forward(input_ids, token_type_ids, attention_mask, padding),
        )
    }

    /// Mean cross-entropy over positions whose label is not [`IGNORE_INDEX`] (nats).
    ///
    /// With [`MlmPositions::MaskedOnly`], the final layer's attention output and MLP and the
    /// prediction head run only on those positions (MosaicBERT's final-layer shortcut; the loss
    /// is the same).
    pub fn loss(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
        labels: Tensor<2, Int>,
        padding: Padding,
        positions: MlmPositions,
    ) -> Tensor<1> {
        self.loss_with_logits(
            input_ids,
            token_type_ids,
            attention_mask,
            labels,
            padding,
            positions,
        )
        .0
    }

    /// [`loss`](Self::loss) with the logits it came from: `(loss, logits [N, vocab], targets
    /// [N])`, where the rows are every position in row-major order (targets [`IGNORE_INDEX`]
    /// where not masked) or, with [`MlmPositions::MaskedOnly`], the masked positions only.
    pub fn loss_with_logits(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
        labels: Tensor<2, Int>,
        padding: Padding,
        positions: MlmPositions,
    ) -> (Tensor<1>, Tensor<2>, Tensor<1, Int>) {
        let [b, l] = labels.dims();
        let labels = labels.reshape([b * l]);
        let vocab = self.bert.config.vocab_size;
        if positions == MlmPositions::MaskedOnly {
            // The last layer's attention output and MLP, and the head, run on masked tokens only.
            let selected = labels.clone().not_equal_elem(IGNORE_INDEX);
            let idx = selected.argwhere().reshape([-1]);
            let n = idx.dims()[0];
            let h = self.bert.forward_subset(
                input_ids,
                token_type_ids,
                attention_mask,
                padding,
                idx.clone(),
            );
            let logits = self.head(h.unsqueeze()).reshape([n, vocab]);
            let targets = labels.select(0, idx);
            return (
                cross_entropy(logits.clone(), targets.clone()),
                logits,
                targets,
            );
        }
        let h = self
            .bert
            .forward(input_ids, token_type_ids, attention_mask, padding);
        let d = h.dims()[2];
        let flat = h.reshape([b * l, d]);
        let logits = self.head(flat.unsqueeze()).reshape([b * l, vocab]);
        (
            cross_entropy_ignoring(logits.clone(), labels.clone()),
            logits,
            labels,
        )
    }

    /// Loads an HF `BertForMaskedLM` (or MosaicBERT) directory.
    ///
    /// # Errors
    /// Config, checkpoint, missing/unexpected/shape errors.
    pub fn load(dir: impl AsRef<Path>, device: &Device, options: LoadOptions) -> Result<Self> {
        let (ckpt, config) = open(dir)?;
        Self::from_checkpoint(&ckpt, &config, device, options)
    }

    /// Loads from an opened checkpoint with its config (see [`open`]).
    ///
    /// # Errors
    /// Missing/unexpected/shape errors.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        config: &BertConfig,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self> {
        let (mut bert, prefix) = encoder(ckpt, config, device)?;
        let mut w = WeightLoader::new(ckpt, device, prefix);
        bert.load_weights(&mut w)?;
        let mut root = WeightLoader::new(ckpt, device, "");
        let mut model = Self::init(config, device)?;
        root.linear_out_in("cls.predictions.transform.dense", &mut model.transform)?;
        root.layer_norm(
            "cls.predictions.transform.LayerNorm",
            &mut model.transform_ln,
        )?;
        let bias_name = if root.has("cls.predictions.bias") {
            "cls.predictions.bias"
        } else {
            "cls.predictions.decoder.bias"
        };
        if let Some(t) = root.tensor(bias_name, [config.vocab_size])? {
            set(&mut model.decoder_bias, t);
        }
        root.skip("cls.predictions.decoder.bias");
        root.skip("cls.predictions.decoder.weight"); // tied to the word embeddings
        w.absorb(root);
        w.finish(options, |_| false)?;
        model.bert = bert;
        Ok(model)
    }

    /// Writes an HF `BertForMaskedLM` directory in `dtype` (MosaicBERT layers keep their names).
    ///
    /// # Errors
    /// Checkpoint writer errors.
    pub fn save(&self, dir: impl AsRef<Path>, dtype: Dtype, force: bool) -> Result<()> {
        let mut w = WeightWriter::new();
        self.bert.save_weights(&mut w, "bert.");
        w.linear_out_in("cls.predictions.transform.dense", &self.transform);
        w.layer_norm("cls.predictions.transform.LayerNorm", &self.transform_ln);
        // MosaicBERT names the bias after its decoder Linear; HF BERT keeps it on the head.
        let bias_name = if self.bert.config.uses_glu() {
            "cls.predictions.decoder.bias"
        } else {
            "cls.predictions.bias"
        };
        w.tensor(bias_name, self.decoder_bias.val());
        let mut config = serde_json::to_value(&self.bert.config).expect("serialises");
        config["architectures"] = serde_json::json!(["BertForMaskedLM"]);
        config["model_type"] = "bert".into();
        w.write(
            dir.as_ref(),
            &serde_json::to_string_pretty(&config).expect("serialises"),
            dtype,
            force,
        )
    }
}

/// Targets of [`BertForSequenceClassification::loss`].
#[derive(Debug, Clone)]
pub enum SequenceLabels {
    /// Class indices `[B]` (cross-entropy).
    Classes(Tensor<1, Int>),
    /// Regression targets `[B]` (mean squared error; the model has one output).
    Scores(Tensor<1>),
}

/// Sequence classification / regression: pooler → dropout → `classifier` (`[d, num_labels]`).
#[derive(Module, Debug)]
pub struct BertForSequenceClassification {
    /// Encoder and pooler.
    pub bert: BertWithPooler,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// `[d, num_labels]`.
    pub classifier: Dense,
}

impl BertForSequenceClassification {
    /// Label logits `[B, num_labels]` (one column: a regression score).
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Tensor<2> {
        let (_, pooled) = self.bert.forward(input_ids, token_type_ids, attention_mask);
        self.classifier.forward(self.dropout.apply(pooled))
    }

    /// Cross-entropy against integer labels `[B]`, or, with one output column (regression), the
    /// mean squared error against float targets `[B]` — as transformers chooses.
    pub fn loss(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
        labels: SequenceLabels,
    ) -> Tensor<1> {
        let logits = self.forward(input_ids, token_type_ids, attention_mask);
        let [b, c] = logits.dims();
        match labels {
            SequenceLabels::Classes(y) => cross_entropy(logits, y),
            SequenceLabels::Scores(y) => {
                debug_assert_eq!(c, 1, "regression uses one output");
                (logits.reshape([b]) - y).powi_scalar(2).mean()
            }
        }
    }

    /// A classifier on a (pre)trained encoder, e.g. `BertForMaskedLm::bert` after MLM
    /// pretraining: the pooler and the classifier are new, initialised as transformers does
    /// (normal with `initializer_range`, zero biases).
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error) if `num_labels` is 0.
    pub fn from_encoder(bert: BertModel, num_labels: usize, device: &Device) -> Result<Self> {
        if num_labels == 0 {
            return Err(config_err("num_labels must be at least 1"));
        }
        let c = bert.config.clone();
        let linear = |i: usize, o: usize| {
            zero_bias(
                LinearConfig::new(i, o)
                    .with_initializer(Initializer::Normal {
                        mean: 0.0,
                        std: c.initializer_range,
                    })
                    .init(device),
            )
        };
        Ok(Self {
            bert: BertWithPooler {
                pooler: BertPooler {
                    dense: linear(c.hidden_size, c.hidden_size),
                },
                bert,
            },
            dropout: DropoutConfig::new(c.hidden_dropout_prob).init(),
            classifier: linear(c.hidden_size, num_labels),
        })
    }

    /// Loads an HF `BertForSequenceClassification` directory.
    ///
    /// # Errors
    /// Config, checkpoint, missing/unexpected/shape errors.
    pub fn load(dir: impl AsRef<Path>, device: &Device, options: LoadOptions) -> Result<Self> {
        let (ckpt, config) = open(dir)?;
        Self::from_checkpoint(&ckpt, &config, device, options)
    }

    /// Loads from an opened checkpoint with its config (see [`open`]).
    ///
    /// # Errors
    /// Missing/unexpected/shape errors.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        config: &BertConfig,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self> {
        let (mut bert, prefix) = encoder(ckpt, config, device)?;
        let mut w = WeightLoader::new(ckpt, device, prefix);
        bert.load_weights(&mut w)?;
        let d = config.hidden_size;
        let mut dense: Dense = LinearConfig::new(d, d).init(device).into();
        w.linear_out_in("pooler.dense", &mut dense)?;
        let mut root = WeightLoader::new(ckpt, device, "");
        let mut classifier: Dense = LinearConfig::new(d, config.num_labels())
            .init(device)
            .into();
        root.linear_out_in("classifier", &mut classifier)?;
        w.absorb(root);
        w.finish(options, |_| false)?;
        Ok(Self {
            bert: BertWithPooler {
                bert,
                pooler: BertPooler { dense },
            },
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            classifier,
        })
    }
}

/// Token classification: dropout → `classifier` on every token.
#[derive(Module, Debug)]
pub struct BertForTokenClassification {
    /// The encoder.
    pub bert: BertModel,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// `[d, num_labels]`.
    pub classifier: Dense,
}

impl BertForTokenClassification {
    /// Token label logits `[B, L, num_labels]`.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Tensor<3> {
        self.classifier
            .forward(self.dropout.apply(self.bert.forward(
                input_ids,
                token_type_ids,
                attention_mask,
                Padding::Padded,
            )))
    }

    /// Mean cross-entropy over tokens whose label is not [`IGNORE_INDEX`].
    pub fn loss(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
        labels: Tensor<2, Int>,
    ) -> Tensor<1> {
        let logits = self.forward(input_ids, token_type_ids, attention_mask);
        let [b, l, c] = logits.dims();
        cross_entropy_ignoring(logits.reshape([b * l, c]), labels.reshape([b * l]))
    }

    /// Loads an HF `BertForTokenClassification` directory.
    ///
    /// # Errors
    /// Config, checkpoint, missing/unexpected/shape errors.
    pub fn load(dir: impl AsRef<Path>, device: &Device, options: LoadOptions) -> Result<Self> {
        let (ckpt, config) = open(dir)?;
        Self::from_checkpoint(&ckpt, &config, device, options)
    }

    /// Loads from an opened checkpoint with its config (see [`open`]).
    ///
    /// # Errors
    /// Missing/unexpected/shape errors.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        config: &BertConfig,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self> {
        let (mut bert, prefix) = encoder(ckpt, config, device)?;
        let mut w = WeightLoader::new(ckpt, device, prefix);
        bert.load_weights(&mut w)?;
        let mut root = WeightLoader::new(ckpt, device, "");
        let mut classifier: Dense = LinearConfig::new(config.hidden_size, config.num_labels())
            .init(device)
            .into();
        root.linear_out_in("classifier", &mut classifier)?;
        w.absorb(root);
        w.finish(options, |_| false)?;
        Ok(Self {
            bert,
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            classifier,
        })
    }
}

impl BertModel {
    /// [`DenseLayers::visit_dense`] with burn paths under `kiln` and Hugging Face names under
    /// `hf`: HF BERT's separate `query`/`key`/`value` are views of kiln's fused `qkv`;
    /// MosaicBERT (the GeGLU layout) keeps its fused `Wqkv`.
    fn visit_dense_at(
        &mut self,
        kiln: &str,
        hf: &str,
        f: &mut dyn FnMut(&str, &[DenseView], &mut Dense),
    ) {
        let d = self.config.hidden_size;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let (k, h) = (
                join(kiln, &format!("layers.{i}")),
                join(hf, &format!("encoder.layer.{i}")),
            );
            let views: Vec<DenseView> = match layer.mlp {
                BertMlp::Glu(_) => vec![DenseView {
                    name: format!("{h}.attention.self.Wqkv"),
                    start: 0,
                    len: 3 * d,
                }],
                BertMlp::Dense(_) => ["query", "key", "value"]
                    .iter()
                    .enumerate()
                    .map(|(j, n)| DenseView {
                        name: format!("{h}.attention.self.{n}"),
                        start: j * d,
                        len: d,
                    })
                    .collect(),
            };
            f(&format!("{k}.qkv"), &views, &mut layer.qkv);
            visit_one(
                f,
                &format!("{k}.attn_out"),
                &format!("{h}.attention.output.dense"),
                &mut layer.attn_out,
            );
            match &mut layer.mlp {
                BertMlp::Dense(DenseMlp {
                    intermediate,
                    output,
                }) => {
                    let km = format!("{k}.mlp.Dense");
                    visit_one(
                        f,
                        &format!("{km}.intermediate"),
                        &format!("{h}.intermediate.dense"),
                        intermediate,
                    );
                    visit_one(
                        f,
                        &format!("{km}.output"),
                        &format!("{h}.output.dense"),
                        output,
                    );
                }
                BertMlp::Glu(GluMlp { gated, wo }) => {
                    let km = format!("{k}.mlp.Glu");
                    visit_one(
                        f,
                        &format!("{km}.gated"),
                        &format!("{h}.mlp.gated_layers"),
                        gated,
                    );
                    visit_one(f, &format!("{km}.wo"), &format!("{h}.mlp.wo"), wo);
                }
            }
        }
    }

    fn embeddings_at(&self, kiln: &str, hf: &str) -> Vec<(String, String)> {
        let mut names = vec!["word_embeddings"];
        if self.position_embeddings.is_some() {
            names.push("position_embeddings");
        }
        if self.token_type_embeddings.is_some() {
            names.push("token_type_embeddings");
        }
        names
            .into_iter()
            .map(|n| (join(kiln, n), join(hf, &format!("embeddings.{n}"))))
            .collect()
    }
}

impl DenseLayers for BertModel {
    fn visit_dense(&mut self, f: &mut dyn FnMut(&str, &[DenseView], &mut Dense)) {
        self.visit_dense_at("", "", f);
    }
    fn embedding_names(&self) -> Vec<(String, String)> {
        self.embeddings_at("", "")
    }
}

impl DenseLayers for BertWithPooler {
    fn visit_dense(&mut self, f: &mut dyn FnMut(&str, &[DenseView], &mut Dense)) {
        self.bert.visit_dense_at("bert", "", f);
        visit_one(f, "pooler.dense", "pooler.dense", &mut self.pooler.dense);
    }
    fn embedding_names(&self) -> Vec<(String, String)> {
        self.bert.embeddings_at("bert", "")
    }
}

impl DenseLayers for BertForMaskedLm {
    fn visit_dense(&mut self, f: &mut dyn FnMut(&str, &[DenseView], &mut Dense)) {
        self.bert.visit_dense_at("bert", "bert", f);
        visit_one(
            f,
            "transform",
            "cls.predictions.transform.dense",
            &mut self.transform,
        );
    }
    fn embedding_names(&self) -> Vec<(String, String)> {
        self.bert.embeddings_at("bert", "bert")
    }
}

impl DenseLayers for BertForSequenceClassification {
    fn visit_dense(&mut self, f: &mut dyn FnMut(&str, &[DenseView], &mut Dense)) {
        self.bert.bert.visit_dense_at("bert.bert", "bert", f);
        visit_one(
            f,
            "bert.pooler.dense",
            "bert.pooler.dense",
            &mut self.bert.pooler.dense,
        );
        visit_one(f, "classifier", "classifier", &mut self.classifier);
    }
    fn embedding_names(&self) -> Vec<(String, String)> {
        self.bert.bert.embeddings_at("bert.bert", "bert")
    }
}

impl DenseLayers for BertForTokenClassification {
    fn visit_dense(&mut self, f: &mut dyn FnMut(&str, &[DenseView], &mut Dense)) {
        self.bert.visit_dense_at("bert", "bert", f);
        visit_one(f, "classifier", "classifier", &mut self.classifier);
    }
    fn embedding_names(&self) -> Vec<(String, String)> {
        self.bert.embeddings_at("bert", "bert")
    }
}
