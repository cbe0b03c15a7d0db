//! Pieces shared by the models: activations, attention with masks and bias, dtype-aware layer norm.

use std::path::{Path, PathBuf};

use burn::nn::{Dropout, GroupNorm, LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use serde::{Deserialize, Serialize};

use crate::cpu::{DropoutExt, nll_rows};
use crate::error::{Result, config_err};

/// Activation functions by their Hugging Face names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Activation {
    /// Exact GELU (erf).
    #[serde(rename = "gelu")]
    Gelu,
    /// tanh-approximated GELU (`gelu_new`, `gelu_fast`, `gelu_pytorch_tanh`): GPT-2's.
    #[default]
    #[serde(rename = "gelu_new", alias = "gelu_fast", alias = "gelu_pytorch_tanh")]
    GeluTanh,
    /// ReLU.
    #[serde(rename = "relu")]
    Relu,
    /// SiLU / swish.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// `x·σ(1.702x)`.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// tanh.
    #[serde(rename = "tanh")]
    Tanh,
}

impl Activation {
    /// Parses a Hugging Face `activation_function` / `hidden_act` name.
    ///
    /// # Errors
    /// A config error naming the supported activations.
    pub fn from_hf(name: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|_| {
            config_err(format!(
                "unknown activation `{name}`; supported: gelu, gelu_new (gelu_fast, gelu_pytorch_tanh), relu, silu (swish), quick_gelu, tanh"
            ))
        })
    }

    /// Applies the activation.
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Gelu => crate::cpu::gelu(x),
            Self::GeluTanh => crate::cpu::gelu_tanh(x),
            Self::Relu => activation::relu(x),
            Self::Silu => activation::silu(x),
            Self::QuickGelu => x.clone() * activation::sigmoid(x.mul_scalar(1.702)),
            Self::Tanh => activation::tanh(x),
        }
    }
}

/// The precision a model's LayerNorms compute in: MosaicBERT's low-precision LayerNorm.
///
/// Composer's `LPLayerNorm` exists because PyTorch autocast runs LayerNorm in f32 while the rest
/// of a mixed-precision model runs in bf16; it casts the input, weight and bias to the autocast
/// dtype and normalises there, which saves memory traffic. kiln's model keeps its own dtype (f32
/// master weights), and a low precision here means what `LPLayerNorm` computes under autocast:
/// the input, weight and bias are rounded to bf16 (or f16), normalised in that dtype — statistics
/// accumulate in f32 inside the kernel, as PyTorch's do — and the result, rounded to that dtype,
/// is cast back to the model's dtype. The other operations are untouched. For a model already in
/// bf16 `Bf16` is the same as `Model`. Checked against a PyTorch transcription
/// (`tests/fixtures/make_model_fixtures.py`, `logits_ln_bf16`/`logits_ln_f16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerNormPrecision {
    /// The model's dtype (burn widens f16 to f32 for the statistics).
    #[default]
    Model,
    /// bfloat16, as `LPLayerNorm` under bf16 autocast.
    Bf16,
    /// float16, as `LPLayerNorm` under f16 autocast.
    F16,
}

impl LayerNormPrecision {
    /// The low dtype to round to (`None`: the model's own).
    fn dtype(self) -> Option<burn::tensor::FloatDType> {
        match self {
            Self::Model => None,
            Self::Bf16 => Some(burn::tensor::FloatDType::BF16),
            Self::F16 => Some(burn::tensor::FloatDType::F16),
        }
    }
}

/// `ln(x)` at `precision` (see [`LayerNormPrecision`]); `epsilon` is `ln`'s (burn keeps it
/// private).
pub(crate) fn layer_norm_in<const D: usize>(
    precision: LayerNormPrecision,
    ln: &LayerNorm,
    x: Tensor<D>,
    epsilon: f64,
) -> Tensor<D> {
    let Some(dtype) = precision.dtype() else {
        return ln.forward(x);
    };
    let original: burn::tensor::FloatDType = x.dtype().into();
    burn::tensor::module::layer_norm(
        x.cast(dtype),
        ln.gamma.val().cast(dtype),
        ln.beta.as_ref().map(|b| b.val().cast(dtype)),
        epsilon,
    )
    .cast(original)
}

/// `gn(x)` at `precision`: Composer's `LPGroupNorm` under autocast, as
/// [`LayerNormPrecision`] is its `LPLayerNorm`. The input, weight and bias are rounded to bf16
/// (or f16), normalised — statistics and the affine in f32, as PyTorch's group-norm kernel
/// computes a bf16 input — the result rounded to that dtype and cast back to the model's dtype.
pub(crate) fn group_norm_in<const D: usize>(
    precision: LayerNormPrecision,
    gn: &GroupNorm,
    x: Tensor<D>,
) -> Tensor<D> {
    let Some(low) = precision.dtype() else {
        return gn.forward(x);
    };
    let original: burn::tensor::FloatDType = x.dtype().into();
    let wide = burn::tensor::FloatDType::F32;
    let round = |t: Tensor<D>| t.cast(low).cast(wide);
    let shape = x.shape();
    let dims = x.dims();
    let (b, c) = (dims[0], dims[1]);
    let per_group = shape.num_elements() / (b * gn.num_groups);
    let g = round(x).reshape([b, gn.num_groups, per_group]);
    let mean = g.clone().mean_dim(2);
    let centred = g.sub(mean);
    let var = centred.clone().square().mean_dim(2);
    let mut y = centred
        .div(var.add_scalar(gn.epsilon).sqrt())
        .reshape(shape);
    if let (Some(gamma), Some(beta)) = (&gn.gamma, &gn.beta) {
        let mut affine = [1usize; D];
        affine[1] = c;
        let rounded = |t: Tensor<1>| t.cast(low).cast(wide).reshape(affine);
        y = y.mul(rounded(gamma.val())).add(rounded(beta.val()));
    }
    y.cast(low).cast(original)
}

/// `ln(x)` over the last dimension as PyTorch's layer-norm kernel computes a bf16 (or f16)
/// input — the input, weight and bias rounded to that dtype, statistics and affine in f32, the
/// result rounded once — cast back to the model's dtype. ([`layer_norm_in`] runs burn's op in
/// the low dtype instead, which for f16 rounds the normalised value before the affine too.)
pub(crate) fn layer_norm_rounded<const D: usize>(
    precision: LayerNormPrecision,
    ln: &LayerNorm,
    x: Tensor<D>,
    epsilon: f64,
) -> Tensor<D> {
    let Some(low) = precision.dtype() else {
        return ln.forward(x);
    };
    let original: burn::tensor::FloatDType = x.dtype().into();
    let wide = burn::tensor::FloatDType::F32;
    let round = |t: Tensor<1>| t.cast(low).cast(wide);
    burn::tensor::module::layer_norm(
        x.cast(low).cast(wide),
        round(ln.gamma.val()),
        ln.beta.as_ref().map(|b| round(b.val())),
        epsilon,
    )
    .cast(low)
    .cast(original)
}

/// Zeroes a Linear's bias (HF's init), keeping it trainable: `zeros_like` makes a fresh tensor
/// without `require_grad`, so the flag is carried over.
pub(crate) fn zero_bias(mut l: Linear) -> crate::dense::Dense {
    if let Some(b) = l.bias.take() {
        l.bias = Some(b.map(|t| {
            let trainable = t.is_require_grad();
            t.zeros_like().set_require_grad(trainable)
        }));
    }
    l.into()
}

/// `config.json` beside a model: in the directory, or beside a `.safetensors` file.
/// Reads and parses a JSON config file; errors name the file (`what`: "a UNet config", …).
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| crate::error::Error::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| config_err(format!("{}: not {what}: {e}", path.display())))
}

pub(crate) fn config_path(model: &Path) -> PathBuf {
    if model.is_file() {
        model.parent().unwrap_or(Path::new(".")).join("config.json")
    } else {
        model.join("config.json")
    }
}

/// Multi-head scaled dot-product attention on `[B, H, L, Dh]` tensors.
///
/// `key_padding` is `[B, Lk]` with `true` at keys to ignore; `bias` is added to the scaled
/// scores (ALiBi). Through [`burn::tensor::module::attention`] (fused where the backend can),
/// except (1) while training with attention-probability dropout, which that op does not
/// support, and (2) with a bias on a backend other than flex: burn 0.22.1's CubeCL backends
/// (CUDA, ROCm, wgpu) run that op as flash-attention kernels that ignore `attn_bias`
/// (`burn-cubecl`'s `flash_attention` takes it as `_attn_bias`), which silently dropped ALiBi on
/// CUDA. In both cases the scores are materialised explicitly.
pub(crate) fn multi_head_attention(
    (q, k, v): (Tensor<4>, Tensor<4>, Tensor<4>),
    key_padding: Option<Tensor<2, Bool>>,
    bias: Option<Tensor<4>>,
    scale: f64,
    causal: bool,
    dropout: &Dropout,
) -> Tensor<4> {
    let [b, h, lq, _] = q.dims();
    let lk = k.dims()[2];
    let mut mask = key_padding.map(|m| m.reshape([b, 1, 1, lk]).expand([b, h, lq, lk]));
    let training_dropout =
        dropout.prob > 0.0 && dropout.training.is_enabled() && q.device().is_autodiff();
    // The op's `is_causal` assumes queries and keys start together; with cached keys (lk > lq)
    // query i sits at position lk − lq + i, so the mask is built explicitly.
    let explicit_causal = causal && (lk != lq || training_dropout);
    if explicit_causal {
        let c = Tensor::<2, Bool>::tril_mask([lq, lk], lk as i64 - lq as i64, &q.device())
            .reshape([1, 1, lq, lk])
            .expand([b, h, lq, lk]);
        mask = Some(match mask {
            Some(m) => m.bool_or(c),
            None => c,
        });
    }
    let fused_bias_ok = bias.is_none() || q.device().inner() == Device::flex();
    if !training_dropout && fused_bias_ok {
        let options = AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: causal && !explicit_causal,
        };
        return attention(q, k, v, mask, bias, options);
    }
    explicit_attention((q, k, v), mask, bias, scale, dropout)
}

/// Attention with materialised scores: `dropout(softmax(q·kᵀ·scale, masked, + bias))·v`.
/// `mask` is `[B, H, Lq, Lk]`, `true` where a key is ignored.
pub(crate) fn explicit_attention(
    (q, k, v): (Tensor<4>, Tensor<4>, Tensor<4>),
    mask: Option<Tensor<4, Bool>>,
    bias: Option<Tensor<4>>,
    scale: f64,
    dropout: &Dropout,
) -> Tensor<4> {
    let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    if let Some(m) = mask {
        scores = scores.mask_fill(m, f32::NEG_INFINITY);
    }
    if let Some(bias) = bias {
        scores = scores + bias;
    }
    dropout.apply(activation::softmax(scores, 3)).matmul(v)
}

/// Mean cross-entropy of `logits` `[N, C]` against `labels` `[N]` (nats). On flex the loss and
/// its gradient are computed in one fused pass ([`crate::cpu::nll_rows`]).
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    nll_rows(logits, labels).mean()
}

/// Cross-entropy of `logits` `[N, C]` against `targets` `[N]`, averaged with `weights` `[N]`
/// (a row of weight 0 does not count): `Σ wᵢ·nllᵢ / Σ wᵢ`. On flex the rows of weight 0 are
/// dropped before the loss (an MLM batch labels about one position in seven), so neither the
/// loss nor its gradient touches them.
pub(crate) fn weighted_cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    weights: Tensor<1>,
) -> Tensor<1> {
    let n = targets.dims()[0];
    let kept: Option<Vec<i64>> = crate::cpu::is_flex(&weights.device())
        .then(|| {
            let w = weights.clone().into_data().convert::<f32>();
            w.try_into_vec::<f32>().ok()
        })
        .flatten()
        .map(|w| (0..n as i64).filter(|&i| w[i as usize] != 0.0).collect());
    if let Some(kept) = kept.filter(|k| !k.is_empty() && k.len() < n) {
        let k = kept.len();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(kept, [k]), &weights.device());
        let nll = nll_rows(
            logits.select(0, idx.clone()),
            targets.select(0, idx.clone()),
        );
        return (nll * weights.clone().select(0, idx)).sum() / weights.sum();
    }
    let nll = nll_rows(logits, targets);
    (nll * weights.clone()).sum() / weights.sum()
}

/// `[B, L, H·Dh]` → `[B, H, L, Dh]`.
pub(crate) fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, l, d] = x.dims();
    x.reshape([b, l, heads, d / heads]).swap_dims(1, 2)
}

/// `[B, H, L, Dh]` → `[B, L, H·Dh]`.
pub(crate) fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, l, dh] = x.dims();
    x.swap_dims(1, 2).reshape([b, l, h * dh])
}

#[cfg(test)]
mod tests {
    use burn::nn::DropoutConfig;
    use burn::tensor::Distribution;

    use super::*;

    /// The explicit path (used with a bias off flex, and for dropout) equals burn's fused op.
    #[test]
    fn explicit_scores_equal_the_fused_op_with_bias_and_padding() {
        let device = Device::flex();
        let _rng = crate::TEST_RNG.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(3);
        let [b, h, l, dh] = [2, 3, 5, 4];
        let qkv = || Tensor::<4>::random([b, h, l, dh], Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (qkv(), qkv(), qkv());
        let bias = Tensor::<4>::random([b, h, l, l], Distribution::Normal(0.0, 1.0), &device);
        let padding = Tensor::<2, Bool>::from_data(
            TensorData::new(
                vec![
                    false, false, false, true, true, false, false, false, false, false,
                ],
                [b, l],
            ),
            &device,
        );
        let scale = 0.5;
        let fused = multi_head_attention(
            (q.clone(), k.clone(), v.clone()),
            Some(padding.clone()),
            Some(bias.clone()),
            scale,
            false,
            &DropoutConfig::new(0.0).init(),
        );
        let mask = padding.reshape([b, 1, 1, l]).expand([b, h, l, l]);
        let explicit = explicit_attention(
            (q, k, v),
            Some(mask),
            Some(bias),
            scale,
            &DropoutConfig::new(0.0).init(),
        );
        let diff = (fused - explicit).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "{diff}");
    }

    /// Dropping the rows of weight 0 (flex) gives the same loss and gradient as weighting every
    /// row with `log_softmax`.
    #[test]
    fn weighted_cross_entropy_skips_zero_rows_exactly() {
        let device = Device::flex().autodiff();
        let (n, c) = (14, 9);
        let x: Vec<f32> = (0..n * c)
            .map(|i| ((i * 7919) % 97) as f32 / 9.0 - 5.0)
            .collect();
        let t: Vec<i64> = (0..n as i64).map(|i| (i * 5) % c as i64).collect();
        let w: Vec<f32> = (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    0.0
                } else {
                    0.5 + i as f32 / 10.0
                }
            })
            .collect();
        let run = |fused: bool| {
            let logits =
                Tensor::<2>::from_data(TensorData::new(x.clone(), [n, c]), &device).require_grad();
            let targets = Tensor::<1, Int>::from_data(TensorData::new(t.clone(), [n]), &device);
            let weights = Tensor::<1>::from_data(TensorData::new(w.clone(), [n]), &device);
            let loss = if fused {
                weighted_cross_entropy(logits.clone(), targets, weights)
            } else {
                let nll = activation::log_softmax(logits.clone(), 1)
                    .gather(1, targets.reshape([n, 1]))
                    .reshape([n])
                    .neg();
                (nll * weights.clone()).sum() / weights.sum()
            };
            let g = logits.grad(&loss.backward()).unwrap();
            let v = |t: Tensor<1>| t.into_data().try_into_vec::<f32>().unwrap();
            (v(loss.inner()), v(g.reshape([-1])))
        };
        let ((l, g), (l_ref, g_ref)) = (run(true), run(false));
        assert!((l[0] - l_ref[0]).abs() < 1e-6, "{l:?} vs {l_ref:?}");
        let worst = g
            .iter()
            .zip(&g_ref)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-6, "gradient differs by {worst}");
        assert!(
            g[..c].iter().all(|&v| v == 0.0),
            "a row of weight 0 gets no gradient"
        );
    }
}
