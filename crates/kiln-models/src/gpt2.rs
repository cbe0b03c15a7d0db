//! The GPT-2 family (GPT-2, BioMedLM): a pre-LN causal decoder with learned positions.
//!
//! Radford et al. 2019; BioMedLM (Bolton et al. 2024, arXiv 2403.18421) is a 2.7B GPT-2 with
//! `scale_attn_by_inverse_layer_idx`, which divides layer `i`'s attention logits by `i + 1`.
//! [`Gpt2Config`] deserialises straight from a Hugging Face `config.json`; weights load by name
//! from `transformers`' layout (GPT-2's `Conv1D` stores `[in, out]`, burn's `Linear` too, so the
//! projections load without a transpose; the fused `c_attn` splits into `[q | k | v]`).

use std::path::Path;

use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    LinearConfig,
};
use burn::prelude::*;
use kiln_checkpoint::{Checkpoint, Dtype};
use serde::{Deserialize, Serialize};

pub use crate::common::cross_entropy;
use crate::common::{
    Activation, config_path, merge_heads, multi_head_attention, split_heads,
    weighted_cross_entropy, zero_bias,
};
use crate::cpu::{DropoutExt, tied_projection};
use crate::dense::{Dense, DenseLayers, DenseView, join, visit_one};
use crate::error::{Error, Result, config_err};
use crate::weights::{LoadOptions, WeightLoader, WeightWriter};

fn d_vocab() -> usize {
    50257
}
fn d_positions() -> usize {
    1024
}
fn d_embd() -> usize {
    768
}
fn d_layer() -> usize {
    12
}
fn d_head() -> usize {
    12
}
fn d_pdrop() -> f64 {
    0.1
}
fn d_eps() -> f64 {
    1e-5
}
fn d_init() -> f64 {
    0.02
}
fn d_true() -> bool {
    true
}
fn d_eot() -> Option<usize> {
    Some(50256)
}

/// GPT-2 hyper-parameters, with Hugging Face's field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Vocabulary size.
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Maximum sequence length (learned position embeddings).
    #[serde(default = "d_positions")]
    pub n_positions: usize,
    /// Width.
    #[serde(default = "d_embd")]
    pub n_embd: usize,
    /// Layers.
    #[serde(default = "d_layer")]
    pub n_layer: usize,
    /// Attention heads.
    #[serde(default = "d_head")]
    pub n_head: usize,
    /// MLP width (`None`: 4·n_embd).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// MLP activation.
    #[serde(default)]
    pub activation_function: Activation,
    /// Dropout after attention and MLP projections.
    #[serde(default = "d_pdrop")]
    pub resid_pdrop: f64,
    /// Dropout after the embeddings.
    #[serde(default = "d_pdrop")]
    pub embd_pdrop: f64,
    /// Dropout on attention probabilities (applied only while training).
    #[serde(default = "d_pdrop")]
    pub attn_pdrop: f64,
    /// LayerNorm epsilon.
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f64,
    /// Standard deviation of the initial weights.
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    /// Scale attention logits by 1/√head_dim.
    #[serde(default = "d_true")]
    pub scale_attn_weights: bool,
    /// Also divide layer i's logits by i + 1 (BioMedLM, Mistral-CRFM).
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Tie the LM head to the token embedding.
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    /// Beginning-of-text token.
    #[serde(default = "d_eot")]
    pub bos_token_id: Option<usize>,
    /// End-of-text token.
    #[serde(default = "d_eot")]
    pub eos_token_id: Option<usize>,
    /// Padding token (used to find the last real token for classification heads).
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// Classification labels (their count sizes the sequence-classification head).
    #[serde(default)]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
}

impl Default for Gpt2Config {
    fn default() -> Self {
        Self::gpt2()
    }
}

impl Gpt2Config {
    /// GPT-2 small (124M): 12 layers × 768, 12 heads.
    pub fn gpt2() -> Self {
        serde_json::from_str("{}").expect("defaults deserialise")
    }

    /// GPT-2 medium (355M): 24 layers × 1024, 16 heads.
    pub fn gpt2_medium() -> Self {
        Self {
            n_layer: 24,
            n_embd: 1024,
            n_head: 16,
            ..Self::gpt2()
        }
    }

    /// BioMedLM (2.7B): 32 layers × 2560, 20 heads, 1024 context, vocabulary 28,896, eot 28,895,
    /// `scale_attn_by_inverse_layer_idx`.
    pub fn biomedlm() -> Self {
        Self {
            n_layer: 32,
            n_embd: 2560,
            n_head: 20,
            vocab_size: 28896,
            bos_token_id: Some(28895),
            eos_token_id: Some(28895),
            scale_attn_by_inverse_layer_idx: true,
            ..Self::gpt2()
        }
    }

    /// A tiny configuration for tests: 2 layers × 32, 4 heads, vocabulary 97, 64 positions.
    pub fn tiny() -> Self {
        Self {
            n_layer: 2,
            n_embd: 32,
            n_head: 4,
            vocab_size: 97,
            n_positions: 64,
            bos_token_id: Some(0),
            eos_token_id: Some(0),
            ..Self::gpt2()
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

    /// Checks the dimensions fit together.
    ///
    /// # Errors
    /// A config error naming the inconsistent fields.
    pub fn validate(&self) -> Result<()> {
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(config_err(format!(
                "n_embd ({}) must be a multiple of n_head ({})",
                self.n_embd, self.n_head
            )));
        }
        for (name, v) in [
            ("n_layer", self.n_layer),
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_inner", self.inner()),
        ] {
            if v == 0 {
                return Err(config_err(format!("{name} must be at least 1, got 0")));
            }
        }
        if !self.layer_norm_epsilon.is_finite() || self.layer_norm_epsilon < 0.0 {
            return Err(config_err(format!(
                "layer_norm_epsilon must be a non-negative number, got {}",
                self.layer_norm_epsilon
            )));
        }
        for (name, p) in [
            ("resid_pdrop", self.resid_pdrop),
            ("embd_pdrop", self.embd_pdrop),
            ("attn_pdrop", self.attn_pdrop),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(config_err(format!("{name} must be in [0, 1), got {p}")));
            }
        }
        Ok(())
    }

    /// MLP width.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Number of classification labels (`id2label`), default 2.
    pub fn num_labels(&self) -> usize {
        self.id2label.as_ref().map_or(2, |m| m.len())
    }

    /// Parameters of the backbone plus a tied LM head (untied adds vocab × width).
    pub fn num_params(&self) -> usize {
        let (d, i, l) = (self.n_embd, self.inner(), self.n_layer);
        let block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * i + i) + (i * d + d);
        let mut n = self.vocab_size * d + self.n_positions * d + l * block + 2 * d;
        if !self.tie_word_embeddings {
            n += self.vocab_size * d;
        }
        n
    }

    /// Forward FLOPs per token at context length `seq_len`: 2·(non-embedding parameters) for the
    /// matmuls plus the attention scores, 2·n_layer·seq_len·n_embd (Kaplan et al. 2020), plus
    /// the LM head's 2·vocab·width. Training costs about three times this.
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        let d = self.n_embd as f64;
        let l = self.n_layer as f64;
        let i = self.inner() as f64;
        let matmul_params = l * (4.0 * d * d + 2.0 * d * i);
        2.0 * matmul_params + 2.0 * l * seq_len as f64 * d + 2.0 * self.vocab_size as f64 * d
    }

    /// Builds a randomly initialised backbone (HF's scheme: N(0, initializer_range), residual
    /// projections scaled by 1/√(2·n_layer), zero biases, unit LayerNorms).
    ///
    /// # Errors
    /// If the config is invalid.
    pub fn init(&self, device: &Device) -> Result<Gpt2Model> {
        self.validate()?;
        let d = self.n_embd;
        let std = self.initializer_range;
        let normal = |s: f64| Initializer::Normal { mean: 0.0, std: s };
        let linear = |i: usize, o: usize, s: f64| {
            LinearConfig::new(i, o)
                .with_initializer(normal(s))
                .init(device)
        };
        let resid_std = std / (2.0 * self.n_layer as f64).sqrt();
        let h = (0..self.n_layer)
            .map(|idx| Gpt2Block {
                ln_1: LayerNormConfig::new(d)
                    .with_epsilon(self.layer_norm_epsilon)
                    .init(device),
                attn: Gpt2Attention {
                    c_attn: zero_bias(linear(d, 3 * d, std)),
                    c_proj: zero_bias(linear(d, d, resid_std)),
                    attn_dropout: DropoutConfig::new(self.attn_pdrop).init(),
                    resid_dropout: DropoutConfig::new(self.resid_pdrop).init(),
                    n_head: self.n_head,
                    scale: attention_scale(self, idx),
                },
                ln_2: LayerNormConfig::new(d)
                    .with_epsilon(self.layer_norm_epsilon)
                    .init(device),
                mlp: Gpt2Mlp {
                    c_fc: zero_bias(linear(d, self.inner(), std)),
                    c_proj: zero_bias(linear(self.inner(), d, resid_std)),
                    dropout: DropoutConfig::new(self.resid_pdrop).init(),
                    act: self.activation_function,
                },
            })
            .collect();
        Ok(Gpt2Model {
            wte: EmbeddingConfig::new(self.vocab_size, d)
                .with_initializer(normal(std))
                .init(device),
            wpe: EmbeddingConfig::new(self.n_positions, d)
                .with_initializer(normal(std))
                .init(device),
            drop: DropoutConfig::new(self.embd_pdrop).init(),
            h,
            ln_f: LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_epsilon)
                .init(device),
            config: self.clone(),
        })
    }
}

fn attention_scale(c: &Gpt2Config, layer: usize) -> f64 {
    let mut s = if c.scale_attn_weights {
        1.0 / ((c.n_embd / c.n_head) as f64).sqrt()
    } else {
        1.0
    };
    if c.scale_attn_by_inverse_layer_idx {
        s /= (layer + 1) as f64;
    }
    s
}

/// The GPT-2 backbone (HF `GPT2Model`).
#[derive(Module, Debug)]
pub struct Gpt2Model {
    /// Token embedding `[vocab, n_embd]`.
    pub wte: Embedding,
    /// Position embedding `[n_positions, n_embd]`.
    pub wpe: Embedding,
    /// Embedding dropout.
    pub drop: Dropout,
    /// The blocks.
    pub h: Vec<Gpt2Block>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm,
    /// The configuration.
    #[module(skip)]
    pub config: Gpt2Config,
}

/// One pre-LN block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct Gpt2Block {
    /// LayerNorm before attention.
    pub ln_1: LayerNorm,
    /// Causal self-attention.
    pub attn: Gpt2Attention,
    /// LayerNorm before the MLP.
    pub ln_2: LayerNorm,
    /// The MLP.
    pub mlp: Gpt2Mlp,
}

/// Causal self-attention with a fused `[q | k | v]` projection.
#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// `[n_embd, 3·n_embd]`.
    pub c_attn: Dense,
    /// `[n_embd, n_embd]`.
    pub c_proj: Dense,
    /// Dropout on attention probabilities (training only).
    pub attn_dropout: Dropout,
    /// Dropout after the projection.
    pub resid_dropout: Dropout,
    /// Heads.
    pub n_head: usize,
    /// Logit scale (1/√head_dim, further divided by layer+1 for BioMedLM).
    pub scale: f64,
}

/// The MLP: `c_proj(act(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    /// `[n_embd, n_inner]`.
    pub c_fc: Dense,
    /// `[n_inner, n_embd]`.
    pub c_proj: Dense,
    /// Dropout after the projection.
    pub dropout: Dropout,
    /// Activation.
    #[module(skip)]
    pub act: Activation,
}

/// Keys and values of past positions, per layer, for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
}

impl KvCache {
    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Gpt2Attention {
    fn forward(
        &self,
        x: Tensor<3>,
        key_padding: Option<Tensor<2, Bool>>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let d = x.dims()[2];
        let qkv = self.c_attn.forward(x);
        let q = split_heads(qkv.clone().narrow(2, 0, d), self.n_head);
        let mut k = split_heads(qkv.clone().narrow(2, d, d), self.n_head);
        let mut v = split_heads(qkv.narrow(2, 2 * d, d), self.n_head);
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let y = multi_head_attention(
            (q, k, v),
            key_padding,
            None,
            self.scale,
            true,
            &self.attn_dropout,
        );
        self.resid_dropout
            .apply(self.c_proj.forward(merge_heads(y)))
    }
}

impl Gpt2Model {
    /// Grows (or keeps) the token embedding to `vocab_size` rows, as transformers'
    /// `resize_token_embeddings` after tokens were added to the tokenizer (BioMedLM's
    /// multiple-choice recipe adds `[PAD]`, `[CLS]`, `[SEP]`). New rows are the mean of the
    /// existing ones — transformers' `mean_resizing` default since 4.46 (it samples around the
    /// mean with a 1e-9-scaled covariance; the mean is its expectation) —; existing rows are
    /// unchanged. A tied LM head follows the embedding.
    ///
    /// # Errors
    /// [`Error::Config`] when `vocab_size` is smaller than the current vocabulary.
    pub fn resize_token_embeddings(mut self, vocab_size: usize) -> Result<Self> {
        let [old, d] = self.wte.weight.dims();
        if vocab_size < old {
            return Err(config_err(format!(
                "resize_token_embeddings: {vocab_size} rows is fewer than the {old} the model has; shrinking would drop trained tokens"
            )));
        }
        if vocab_size == old {
            return Ok(self);
        }
        // a new leaf: the grown table is a parameter, not a result of the old one
        let w = self.wte.weight.val().detach();
        let mean = w.clone().mean_dim(0);
        let grown = Tensor::cat(vec![w, mean.expand([vocab_size - old, d])], 0).detach();
        self.wte.weight = burn::module::Param::from_tensor(grown);
        self.config.vocab_size = vocab_size;
        Ok(self)
    }

    /// Hidden states `[B, L, n_embd]` after `ln_f`.
    ///
    /// `attention_mask` is `[B, L']` with 1 for real tokens and 0 for padding, over the cached
    /// plus new positions (`L' = cache.len() + L`); `None` means no padding.
    ///
    /// # Shapes
    /// - `input_ids`: `[B, L]`
    /// - output: `[B, L, n_embd]`
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        self.forward_with_token_types(input_ids, None, attention_mask, cache)
    }

    /// [`forward`](Self::forward) with token types, as transformers' `GPT2Model`: GPT-2 has no
    /// token-type table, so `token_type_ids` (`[B, L]`, each below `vocab_size`) are looked up
    /// in the token embedding `wte` and added to the input embeddings.
    pub fn forward_with_token_types(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        self.run(input_ids, token_type_ids, attention_mask, cache, false)
            .0
    }

    /// Every hidden state, as transformers' `output_hidden_states`: `n_layer + 1` tensors
    /// `[B, L, n_embd]` — the input embeddings, then each block's output, the last one after
    /// `ln_f` (so it equals [`forward`](Self::forward)). For layer-wise probes (prediction
    /// depth) and representation analyses.
    pub fn hidden_states(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Vec<Tensor<3>> {
        let (last, mut states) = self.run(input_ids, None, attention_mask, None, true);
        states.pop();
        states.push(last);
        states
    }

    /// The output after `ln_f` and, when `keep`, the embeddings and every block's output.
    fn run(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
        mut cache: Option<&mut KvCache>,
        keep: bool,
    ) -> (Tensor<3>, Vec<Tensor<3>>) {
        let mut states = Vec::new();
        let [b, l] = input_ids.dims();
        let device = input_ids.device();
        let past = cache.as_ref().map_or(0, |c| c.len());
        let positions = Tensor::<1, Int>::arange(past as i64..(past + l) as i64, &device)
            .reshape([1, l])
            .expand([b, l]);
        let mut x = self.wte.forward(input_ids) + self.wpe.forward(positions);
        if let Some(tt) = token_type_ids {
            x = x + self.wte.forward(tt);
        }
        x = self.drop.apply(x);
        if keep {
            states.push(x.clone());
        }
        let key_padding = attention_mask.map(|m| m.equal_elem(0));
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize(self.h.len(), None);
        }
        for (i, block) in self.h.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let a = block
                .attn
                .forward(block.ln_1.forward(x.clone()), key_padding.clone(), slot);
            x = x + a;
            let m = block.mlp.dropout.apply(
                block.mlp.c_proj.forward(
                    block
                        .mlp
                        .act
                        .forward(block.mlp.c_fc.forward(block.ln_2.forward(x.clone()))),
                ),
            );
            x = x + m;
            if keep {
                states.push(x.clone());
            }
        }
        (self.ln_f.forward(x), states)
    }

    /// Loads the backbone from a Hugging Face GPT-2 directory (`config.json` + safetensors).
    /// The prefix `transformer.` of LM and classification checkpoints is handled.
    ///
    /// # Errors
    /// Config, checkpoint, missing/unexpected/shape errors.
    pub fn load(dir: impl AsRef<Path>, device: &Device, options: LoadOptions) -> Result<Self> {
        let (ckpt, config) = open(dir)?;
        Self::from_checkpoint(&ckpt, &config, device, options)
    }

    /// Loads the backbone from an opened checkpoint with its config (see [`open`]).
    ///
    /// # Errors
    /// Missing/unexpected/shape errors.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        config: &Gpt2Config,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self> {
        load_with(ckpt, config, device, options, |_, _| Ok(()))
    }

    fn load_weights(&mut self, w: &mut WeightLoader<'_>) -> Result<()> {
        w.embedding("wte.weight", &mut self.wte)?;
        w.embedding("wpe.weight", &mut self.wpe)?;
        for (i, block) in self.h.iter_mut().enumerate() {
            let p = format!("h.{i}");
            w.layer_norm(&format!("{p}.ln_1"), &mut block.ln_1)?;
            w.linear_in_out(&format!("{p}.attn.c_attn"), &mut block.attn.c_attn)?;
            w.linear_in_out(&format!("{p}.attn.c_proj"), &mut block.attn.c_proj)?;
            w.layer_norm(&format!("{p}.ln_2"), &mut block.ln_2)?;
            w.linear_in_out(&format!("{p}.mlp.c_fc"), &mut block.mlp.c_fc)?;
            w.linear_in_out(&format!("{p}.mlp.c_proj"), &mut block.mlp.c_proj)?;
        }
        w.layer_norm("ln_f", &mut self.ln_f)
    }

    fn save_weights(&self, w: &mut WeightWriter, prefix: &str) {
        w.tensor(format!("{prefix}wte.weight"), self.wte.weight.val());
        w.tensor(format!("{prefix}wpe.weight"), self.wpe.weight.val());
        for (i, block) in self.h.iter().enumerate() {
            let p = format!("{prefix}h.{i}");
            w.layer_norm(&format!("{p}.ln_1"), &block.ln_1);
            w.linear_in_out(&format!("{p}.attn.c_attn"), &block.attn.c_attn);
            w.linear_in_out(&format!("{p}.attn.c_proj"), &block.attn.c_proj);
            w.layer_norm(&format!("{p}.ln_2"), &block.ln_2);
            w.linear_in_out(&format!("{p}.mlp.c_fc"), &block.mlp.c_fc);
            w.linear_in_out(&format!("{p}.mlp.c_proj"), &block.mlp.c_proj);
        }
        w.layer_norm(&format!("{prefix}ln_f"), &self.ln_f);
    }
}

/// Buffers older GPT-2 checkpoints carry that are not parameters.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// Opens a GPT-2 directory (or `.safetensors` file): its checkpoint and its `config.json`.
///
/// # Errors
/// Checkpoint and config errors.
pub fn open(dir: impl AsRef<Path>) -> Result<(Checkpoint, Gpt2Config)> {
    let dir = dir.as_ref();
    let ckpt = Checkpoint::open(dir)?;
    let config = Gpt2Config::from_file(config_path(dir))?;
    Ok((ckpt, config))
}

/// Builds the backbone from `config`, loads it from `ckpt`, then lets `heads` load the rest.
fn load_with(
    ckpt: &Checkpoint,
    config: &Gpt2Config,
    device: &Device,
    options: LoadOptions,
    heads: impl FnOnce(&mut WeightLoader<'_>, &Gpt2Config) -> Result<()>,
) -> Result<Gpt2Model> {
    let mut model = config.init(device)?;
    let prefix = if ckpt.contains("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let mut w = WeightLoader::new(ckpt, device, prefix);
    model.load_weights(&mut w)?;
    let mut root = WeightLoader::new(ckpt, device, "");
    // The backbone's names are prefixed; heads are at the root.
    heads(&mut root, config)?;
    merge_used(&mut w, root);
    w.finish(options, is_buffer)?;
    Ok(model)
}

fn merge_used(into: &mut WeightLoader<'_>, from: WeightLoader<'_>) {
    into.absorb(from);
}

/// GPT-2 with a language-modelling head (HF `GPT2LMHeadModel`): tied to `wte` unless
/// `tie_word_embeddings` is false.
#[derive(Module, Debug)]
pub struct Gpt2LmHead {
    /// The backbone.
    pub transformer: Gpt2Model,
    /// An untied head `[n_embd, vocab]`, if any.
    pub lm_head: Option<Dense>,
}

impl Gpt2LmHead {
    /// A randomly initialised model.
    ///
    /// # Errors
    /// If the config is invalid.
    pub fn init(config: &Gpt2Config, device: &Device) -> Result<Self> {
        let transformer = config.init(device)?;
        let lm_head = (!config.tie_word_embeddings).then(|| {
            LinearConfig::new(config.n_embd, config.vocab_size)
                .with_bias(false)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: config.initializer_range,
                })
                .init(device)
                .into()
        });
        Ok(Self {
            transformer,
            lm_head,
        })
    }

    /// Logits `[B, L, vocab]`.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        self.forward_with_token_types(input_ids, None, attention_mask, cache)
    }

    /// [`forward`](Self::forward) with token types (see
    /// [`Gpt2Model::forward_with_token_types`]).
    pub fn forward_with_token_types(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let h = self.transformer.forward_with_token_types(
            input_ids,
            token_type_ids,
            attention_mask,
            cache,
        );
        match &self.lm_head {
            Some(head) => head.forward(h),
            None => tied_projection(h, self.transformer.wte.weight.val()),
        }
    }

    /// Mean next-token cross-entropy over positions whose target is real (mask 1), in nats.
    pub fn loss(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Tensor<1> {
        self.loss_with_logits(input_ids, attention_mask).0
    }

    /// [`loss`](Self::loss) with the logits it came from: `(loss, logits [B·(L−1), vocab],
    /// targets [B·(L−1)])`, row `b·(L−1) + i` predicting token `i + 1` of sequence `b`, the
    /// target [`IGNORE_INDEX`](crate::bert::IGNORE_INDEX) where that token is padding — what a
    /// distillation teacher is compared on.
    pub fn loss_with_logits(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> (Tensor<1>, Tensor<2>, Tensor<1, Int>) {
        let [b, l] = input_ids.dims();
        let logits = self.forward(input_ids.clone(), attention_mask.clone(), None);
        let v = logits.dims()[2];
        let n = b * (l - 1);
        let weights = match attention_mask {
            Some(m) => m.narrow(1, 1, l - 1).reshape([n]).float(),
            None => Tensor::ones([n], &logits.device()),
        };
        let rows = logits.narrow(1, 0, l - 1).reshape([n, v]);
        let next = input_ids.narrow(1, 1, l - 1).reshape([n]);
        let loss = weighted_cross_entropy(rows.clone(), next.clone(), weights.clone());
        let targets = next.mask_fill(weights.equal_elem(0.0), crate::bert::IGNORE_INDEX);
        (loss, rows, targets)
    }

    /// Loads a Hugging Face `GPT2LMHeadModel` directory.
    ///
    /// # Errors
    /// As [`Gpt2Model::load`].
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
        config: &Gpt2Config,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self> {
        let mut lm_head = None;
        let transformer = load_with(ckpt, config, device, options, |w, c| {
            if c.tie_word_embeddings {
                w.skip("lm_head.weight"); // a tied copy, when saved
            } else {
                let mut head: Dense = LinearConfig::new(c.n_embd, c.vocab_size)
                    .with_bias(false)
                    .init(device)
                    .into();
                w.linear_out_in("lm_head", &mut head)?;
                lm_head = Some(head);
            }
            Ok(())
        })?;
        Ok(Self {
            transformer,
            lm_head,
        })
    }

    /// Writes a Hugging Face directory (`model.safetensors`, `config.json`) in `dtype`.
    ///
    /// # Errors
    /// Checkpoint writer errors (an existing `dir` without `force`, I/O).
    pub fn save(&self, dir: impl AsRef<Path>, dtype: Dtype, force: bool) -> Result<()> {
        let mut w = WeightWriter::new();
        self.transformer.save_weights(&mut w, "transformer.");
        if let Some(head) = &self.lm_head {
            w.tensor("lm_head.weight", head.weight.val().transpose());
        }
        let mut config = serde_json::to_value(&self.transformer.config).expect("serialises");
        config["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        config["model_type"] = "gpt2".into();
        w.write(
            dir.as_ref(),
            &serde_json::to_string_pretty(&config).expect("serialises"),
            dtype,
            force,
        )
    }

    /// Greedy or sampled generation (see [`crate::generate`]).
    pub fn config(&self) -> &Gpt2Config {
        &self.transformer.config
    }
}

/// Index of the last real (non-pad) token of each row: `Σ mask − 1`, as BioMedLM's heads.
fn last_token(
    attention_mask: Option<Tensor<2, Int>>,
    b: usize,
    l: usize,
    device: &Device,
) -> Tensor<1, Int> {
    match attention_mask {
        Some(m) => m.sum_dim(1).reshape([b]).sub_scalar(1),
        None => Tensor::<1, Int>::full([b], (l - 1) as i64, device),
    }
}

fn gather_rows(h: Tensor<3>, idx: Tensor<1, Int>) -> Tensor<2> {
    let [b, _, d] = h.dims();
    let index = idx.reshape([b, 1, 1]).expand([b, 1, d]);
    h.gather(1, index).reshape([b, d])
}

/// BioMedLM's multiple-choice model: GPT-2 + `classifier = Linear(n_embd, 1)` scored at each
/// choice's last non-pad token; choices are reshaped to `[batch, n_choices]` and trained with
/// cross-entropy over choices.
#[derive(Module, Debug)]
pub struct Gpt2MultipleChoice {
    /// The backbone.
    pub transformer: Gpt2Model,
    /// `[n_embd, 1]` with bias.
    pub classifier: Dense,
}

impl Gpt2MultipleChoice {
    /// A randomly initialised model.
    ///
    /// # Errors
    /// If the config is invalid.
    pub fn init(config: &Gpt2Config, device: &Device) -> Result<Self> {
        Ok(Self {
            transformer: config.init(device)?,
            classifier: LinearConfig::new(config.n_embd, 1)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: config.initializer_range,
                })
                .init(device)
                .into(),
        })
    }

    /// Choice scores `[B, C]` for `input_ids` `[B, C, L]` (right-padded; mask 1 for real tokens).
    pub fn forward(
        &self,
        input_ids: Tensor<3, Int>,
        attention_mask: Option<Tensor<3, Int>>,
    ) -> Tensor<2> {
        let [b, c, l] = input_ids.dims();
        let ids = input_ids.reshape([b * c, l]);
        let mask = attention_mask.map(|m| m.reshape([b * c, l]));
        let h = self.transformer.forward(ids.clone(), mask.clone(), None);
        let last = last_token(mask, b * c, l, &h.device());
        self.classifier
            .forward(gather_rows(h, last))
            .reshape([b, c])
    }

    /// Mean cross-entropy of the choice scores against `labels` `[B]`.
    pub fn loss(
        &self,
        input_ids: Tensor<3, Int>,
        attention_mask: Option<Tensor<3, Int>>,
        labels: Tensor<1, Int>,
    ) -> Tensor<1> {
        self.loss_with_scores(input_ids, attention_mask, labels).0
    }

    /// [`loss`](Self::loss) and the choice scores `[B, C]` it was computed from.
    pub fn loss_with_scores(
        &self,
        input_ids: Tensor<3, Int>,
        attention_mask: Option<Tensor<3, Int>>,
        labels: Tensor<1, Int>,
    ) -> (Tensor<1>, Tensor<2>) {
        let scores = self.forward(input_ids, attention_mask);
        (cross_entropy(scores.clone(), labels), scores)
    }

    /// Loads a directory with `transformer.*` and `classifier.{weight,bias}` (nn.Linear layout).
    ///
    /// # Errors
    /// As [`Gpt2Model::load`].
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
        config: &Gpt2Config,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self> {
        let mut classifier = None;
        let transformer = load_with(ckpt, config, device, options, |w, c| {
            let mut head: Dense = LinearConfig::new(c.n_embd, 1).init(device).into();
            w.linear_out_in("classifier", &mut head)?;
            classifier = Some(head);
            Ok(())
        })?;
        Ok(Self {
            transformer,
            classifier: classifier.expect("set by the loader"),
        })
    }
}

/// GPT-2 sequence classification (HF `GPT2ForSequenceClassification`): `score =
/// Linear(n_embd, num_labels, bias = false)` at the last non-pad token.
#[derive(Module, Debug)]
pub struct Gpt2SequenceClassification {
    /// The backbone.
    pub transformer: Gpt2Model,
    /// `[n_embd, num_labels]`.
    pub score: Dense,
}

impl Gpt2SequenceClassification {
    /// A randomly initialised model with `config.num_labels()` labels.
    ///
    /// # Errors
    /// If the config is invalid.
    pub fn init(config: &Gpt2Config, device: &Device) -> Result<Self> {
        Ok(Self {
            transformer: config.init(device)?,
            score: LinearConfig::new(config.n_embd, config.num_labels())
                .with_bias(false)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: config.initializer_range,
                })
                .init(device)
                .into(),
        })
    }

    /// Label logits `[B, num_labels]`.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Tensor<2> {
        self.forward_with_token_types(input_ids, None, attention_mask)
    }

    /// [`forward`](Self::forward) with token types (see
    /// [`Gpt2Model::forward_with_token_types`]).
    pub fn forward_with_token_types(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Tensor<2> {
        let [b, l] = input_ids.dims();
        let h = self.transformer.forward_with_token_types(
            input_ids,
            token_type_ids,
            attention_mask.clone(),
            None,
        );
        let last = last_token(attention_mask, b, l, &h.device());
        self.score.forward(gather_rows(h, last))
    }

    /// Loads a directory with `transformer.*` and `score.weight`.
    ///
    /// # Errors
    /// As [`Gpt2Model::load`].
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
        config: &Gpt2Config,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self> {
        let mut score = None;
        let transformer = load_with(ckpt, config, device, options, |w, c| {
            let mut head: Dense = LinearConfig::new(c.n_embd, c.num_labels())
                .with_bias(false)
                .init(device)
                .into();
            w.linear_out_in("score", &mut head)?;
            score = Some(head);
            Ok(())
        })?;
        Ok(Self {
            transformer,
            score: score.expect("set by the loader"),
        })
    }
}

impl Gpt2Model {
    /// [`DenseLayers::visit_dense`] under `prefix` (burn paths equal Hugging Face names).
    fn visit_dense_at(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &[DenseView], &mut Dense)) {
        for (i, block) in self.h.iter_mut().enumerate() {
            let p = join(prefix, &format!("h.{i}"));
            for (name, dense) in [
                ("attn.c_attn", &mut block.attn.c_attn),
                ("attn.c_proj", &mut block.attn.c_proj),
                ("mlp.c_fc", &mut block.mlp.c_fc),
                ("mlp.c_proj", &mut block.mlp.c_proj),
            ] {
                let path = format!("{p}.{name}");
                visit_one(f, &path, &path, dense);
            }
        }
    }

    fn embeddings_at(prefix: &str) -> Vec<(String, String)> {
        ["wte", "wpe"]
            .iter()
            .map(|n| (join(prefix, n), join(prefix, n)))
            .collect()
    }
}

impl DenseLayers for Gpt2Model {
    fn visit_dense(&mut self, f: &mut dyn FnMut(&str, &[DenseView], &mut Dense)) {
        self.visit_dense_at("", f);
    }
    fn embedding_names(&self) -> Vec<(String, String)> {
        Gpt2Model::embeddings_at("")
    }
}

impl DenseLayers for Gpt2LmHead {
    fn visit_dense(&mut self, f: &mut dyn FnMut(&str, &[DenseView], &mut Dense)) {
        self.transformer.visit_dense_at("transformer", f);
        if let Some(head) = self.lm_head.as_mut() {
            visit_one(f, "lm_head", "lm_head", head);
        }
    }
    fn embedding_names(&self) -> Vec<(String, String)> {
        Gpt2Model::embeddings_at("transformer")
    }
}

impl DenseLayers for Gpt2MultipleChoice {
    fn visit_dense(&mut self, f: &mut dyn FnMut(&str, &[DenseView], &mut Dense)) {
        self.transformer.visit_dense_at("transformer", f);
        visit_one(f, "classifier", "classifier", &mut self.classifier);
    }
    fn embedding_names(&self) -> Vec<(String, String)> {
        Gpt2Model::embeddings_at("transformer")
    }
}

impl DenseLayers for Gpt2SequenceClassification {
    fn visit_dense(&mut self, f: &mut dyn FnMut(&str, &[DenseView], &mut Dense)) {
        self.transformer.visit_dense_at("transformer", f);
        visit_one(f, "score", "score", &mut self.score);
    }
    fn embedding_names(&self) -> Vec<(String, String)> {
        Gpt2Model::embeddings_at("transformer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn hidden_states_start_at_the_embeddings_and_end_at_the_output() {
        let d = Device::flex();
        d.seed(7);
        let config = Gpt2Config::tiny();
        let model = config.init(&d).unwrap();
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, 9, 4, 1, 5, 2], [2, 3]), &d);
        let mask =
            Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 1, 1, 1, 1, 0], [2, 3]), &d);
        let states = model.hidden_states(ids.clone(), Some(mask.clone()));
        assert_eq!(states.len(), config.n_layer + 1);
        let embeddings = model.wte.forward(ids.clone())
            + model.wpe.forward(
                Tensor::<1, Int>::arange(0..3, &d)
                    .reshape([1, 3])
                    .expand([2, 3]),
            );
        assert_eq!(values(states[0].clone()), values(embeddings));
        assert_eq!(
            values(states[config.n_layer].clone()),
            values(model.forward(ids, Some(mask), None))
        );
        // the blocks change the states
        assert_ne!(values(states[1].clone()), values(states[0].clone()));
    }
}
