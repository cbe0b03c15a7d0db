//! [`Dense`]: the linear layer of kiln's GPT-2 and BERT — burn's `Linear` (`y = x·W + b`,
//! `W` stored `[in, out]`) with room for LoRA branches computed on the layer's *input*, as PEFT
//! computes them: `y = x·W + b + s·dropout(x)·A·B`, or DoRA's magnitude-rescaled form.
//!
//! A branch adds to a range of output columns, so one fused projection (GPT-2's `c_attn`, BERT's
//! `qkv`) can carry separate adapters for the modules Hugging Face keeps apart (`query`, `key`,
//! `value`). The factors are parameters of the layer (`….lora.0.a`, `….lora.0.b`,
//! `….lora.0.magnitude`), so they train, checkpoint and resume with the model; the base weight
//! never sees the adapter, so it needs no gradient and the step costs two thin matmuls per
//! branch instead of a dense `W + s·A·B` and its gradient.
//!
//! kiln-lora attaches branches by the Hugging Face module names [`DenseLayers`] reports.
//!
//! ```
//! use kiln_models::burn::prelude::*;
//! use kiln_models::burn::nn::LinearConfig;
//! use kiln_models::dense::{Dense, LoraBranch};
//!
//! let device = Device::flex();
//! let mut layer: Dense = LinearConfig::new(4, 6).init(&device).into();
//! let x = Tensor::<2>::ones([2, 4], &device);
//! let before = layer.forward(x.clone());
//! // A rank-2 adapter on output columns 2..5 with B = 0 changes nothing.
//! let a = Tensor::<2>::ones([4, 2], &device);
//! let b = Tensor::<2>::zeros([2, 3], &device);
//! layer.lora.push(LoraBranch::new(a, b, 0.5, 2, 0.0, None));
//! let after = layer.forward(x);
//! after.into_data().assert_approx_eq::<f32>(&before.into_data(), Default::default());
//! ```

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::module::linear;

/// A linear layer `y = x·W + b` (`W` `[in, out]`, as burn's `Linear`) plus LoRA branches.
#[derive(Module, Debug)]
pub struct Dense {
    /// `[in, out]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Adapters on ranges of the output columns (none: a plain linear layer).
    pub lora: Vec<LoraBranch>,
}

/// One LoRA (or DoRA) adapter on output columns `start .. start + len` of a [`Dense`]:
/// `Δy = s·dropout(x)·A·B`, or with a magnitude `m` (DoRA, PEFT's forward):
/// `Δy = (m/‖W + s·A·B‖ − 1)·(x'·W) + (m/‖W + s·A·B‖)·s·x'·A·B` with `x' = dropout(x)`, the column
/// norms detached from the graph (as PEFT, following the DoRA paper's §4.3).
#[derive(Module, Debug)]
pub struct LoraBranch {
    /// `[in, r]` (PEFT's `lora_A` transposed).
    pub a: Param<Tensor<2>>,
    /// `[r, len]` (PEFT's `lora_B` transposed).
    pub b: Param<Tensor<2>>,
    /// DoRA's magnitude `[len]` (PEFT's `lora_magnitude_vector`); `None` for plain LoRA.
    pub magnitude: Option<Param<Tensor<1>>>,
    /// Dropout on the adapter's input (`lora_dropout`).
    pub dropout: Dropout,
    /// `s` (α/r, or α/√r for rsLoRA).
    pub scale: f64,
    /// First output column the branch adds to.
    pub start: usize,
}

impl LoraBranch {
    /// A branch from `a` `[in, r]` and `b` `[r, len]` (trainable), scale `s`, first output
    /// column `start`, input dropout probability `dropout` and an optional DoRA magnitude.
    pub fn new(
        a: Tensor<2>,
        b: Tensor<2>,
        scale: f64,
        start: usize,
        dropout: f64,
        magnitude: Option<Tensor<1>>,
    ) -> Self {
        Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            magnitude: magnitude.map(Param::from_tensor),
            dropout: DropoutConfig::new(dropout).init(),
            scale,
            start,
        }
    }

    /// The branch's rank.
    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    /// The number of output columns it adds to.
    pub fn len(&self) -> usize {
        self.b.dims()[1]
    }

    /// Whether it adds to no column (never, for a branch built from real factors).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `s·A·B`, `[in, len]`.
    pub fn delta(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()) * self.scale
    }

    /// DoRA's `m / ‖W_slice + s·A·B‖` per output column, `[len]`, the norm detached.
    fn dora_factor(&self, w_slice: Tensor<2>, magnitude: Tensor<1>) -> Tensor<1> {
        let norm = (w_slice + self.delta().detach())
            .powi_scalar(2)
            .sum_dim(0)
            .sqrt()
            .detach();
        let len = self.len();
        magnitude / norm.reshape([len])
    }

    fn dropout_active(&self, x_device: &Device) -> bool {
        self.dropout.prob > 0.0 && self.dropout.training.is_enabled() && x_device.is_autodiff()
    }
}

impl From<Linear> for Dense {
    fn from(l: Linear) -> Self {
        Self {
            weight: l.weight,
            bias: l.bias,
            lora: Vec::new(),
        }
    }
}

/// Broadcasts a `[len]` tensor over the leading dimensions of a rank-`D` tensor.
fn row<const D: usize>(t: Tensor<1>) -> Tensor<D> {
    let len = t.dims()[0];
    let mut shape = [1usize; D];
    shape[D - 1] = len;
    t.reshape(shape)
}

impl Dense {
    /// `x·W + b` plus every branch, for `x` `[…, in]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let weight = self.weight.val();
        let bias = self.bias.as_ref().map(|b| b.val());
        if self.lora.is_empty() {
            return linear(x, weight, bias);
        }
        let out_dim = weight.dims()[1];
        let base = linear(x.clone(), weight.clone(), None);
        let mut deltas: Vec<(usize, usize, Tensor<D>)> = Vec::with_capacity(self.lora.len());
        for branch in &self.lora {
            let (start, len) = (branch.start, branch.len());
            let active = branch.dropout_active(&x.device());
            let xd = if active {
                branch.dropout.forward(x.clone())
            } else {
                x.clone()
            };
            let lora = linear(
                linear(xd.clone(), branch.a.val(), None),
                branch.b.val(),
                None,
            ) * branch.scale;
            let delta = match &branch.magnitude {
                None => lora,
                Some(m) => {
                    let w_slice = weight.clone().narrow(1, start, len);
                    let factor = branch.dora_factor(w_slice.clone(), m.val());
                    // PEFT: the base result of the dropped-out input while dropout acts,
                    // the layer's own (bias removed) otherwise.
                    let base_slice = if active {
                        linear(xd, w_slice, None)
                    } else {
                        base.clone().narrow(D - 1, start, len)
                    };
                    let f: Tensor<D> = row(factor);
                    base_slice * (f.clone() - 1.0) + lora * f
                }
            };
            deltas.push((start, len, delta));
        }
        let mut y = base
            + bias
                .map(row::<D>)
                .unwrap_or_else(|| Tensor::zeros([1; D], &x.device()));
        if deltas.len() == 1 && deltas[0].0 == 0 && deltas[0].1 == out_dim {
            return y + deltas
                .pop()
                .map(|d| d.2)
                .unwrap_or_else(|| Tensor::zeros([1; D], &x.device()));
        }
        deltas.sort_by_key(|d| d.0);
        let mut pieces = Vec::with_capacity(2 * deltas.len() + 1);
        let mut at = 0;
        let lead: Vec<usize> = {
            let dims = y.dims();
            dims[..D - 1].to_vec()
        };
        let zeros = |n: usize, device: &Device| {
            let mut shape = [0usize; D];
            shape[..D - 1].copy_from_slice(&lead);
            shape[D - 1] = n;
            Tensor::<D>::zeros(shape, device)
        };
        let device = x.device();
        for (start, len, d) in deltas {
            if start > at {
                pieces.push(zeros(start - at, &device));
            }
            pieces.push(d);
            at = start + len;
        }
        if at < out_dim {
            pieces.push(zeros(out_dim - at, &device));
        }
        y = y + Tensor::cat(pieces, D - 1);
        y
    }

    /// The weight the layer computes with, `[in, out]`: `W` with every branch merged in (PEFT's
    /// merge: `W + s·A·B`, or DoRA's `m/‖W + s·A·B‖ · (W + s·A·B)` per output column).
    pub fn merged_weight(&self) -> Tensor<2> {
        let mut w = self.weight.val();
        for branch in &self.lora {
            let (start, len) = (branch.start, branch.len());
            let slice = w.clone().narrow(1, start, len);
            let mut merged = slice.clone() + branch.delta();
            if let Some(m) = &branch.magnitude {
                let factor: Tensor<2> = row(branch.dora_factor(slice, m.val()));
                merged = merged * factor;
            }
            w = w.slice_assign([0..merged.dims()[0], start..start + len], merged);
        }
        w
    }

    /// `[in, out]` of the base weight.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.dims()
    }
}

/// One Hugging Face module held by a [`Dense`]: its name (as in the model's checkpoint and in
/// PEFT adapters) and the output columns `start .. start + len` it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenseView {
    /// Hugging Face module name, e.g. `bert.encoder.layer.0.attention.self.query`.
    pub name: String,
    /// First output column.
    pub start: usize,
    /// Output columns.
    pub len: usize,
}

/// Models whose linear layers are [`Dense`], walked with their burn parameter paths and the
/// Hugging Face modules they hold — what kiln-lora attaches adapters to.
pub trait DenseLayers {
    /// Calls `f(path, views, layer)` for every [`Dense`] of the model: `path` is its burn
    /// parameter path (`transformer.h.0.attn.c_attn`), `views` the Hugging Face modules it
    /// holds (one for most layers; `query`, `key`, `value` for BERT's fused `qkv`).
    fn visit_dense(&mut self, f: &mut dyn FnMut(&str, &[DenseView], &mut Dense));

    /// `(burn path, Hugging Face module name)` of every embedding table (LoRA can target them).
    fn embedding_names(&self) -> Vec<(String, String)>;
}

/// `prefix.name` (or `name` without a prefix).
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Visits one [`Dense`] that holds exactly the Hugging Face module `hf`.
pub(crate) fn visit_one(
    f: &mut dyn FnMut(&str, &[DenseView], &mut Dense),
    path: &str,
    hf: &str,
    dense: &mut Dense,
) {
    let len = dense.dims()[1];
    f(
        path,
        &[DenseView {
            name: hf.to_owned(),
            start: 0,
            len,
        }],
        dense,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    fn close<const D: usize>(a: Tensor<D>, b: Tensor<D>) {
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-4));
    }

    #[test]
    fn branches_add_their_product_to_their_columns() {
        let _g = crate::TEST_RNG.lock();
        let device = Device::flex();
        let mut layer: Dense = LinearConfig::new(5, 9).init(&device).into();
        let x = random([3, 4, 5], &device);
        let plain = layer.forward(x.clone());
        // two branches on columns 0..3 and 6..9 (columns 3..6 untouched)
        let (a0, b0) = (random([5, 2], &device), random([2, 3], &device));
        let (a1, b1) = (random([5, 1], &device), random([1, 3], &device));
        layer
            .lora
            .push(LoraBranch::new(a1.clone(), b1.clone(), 0.5, 6, 0.0, None));
        layer
            .lora
            .push(LoraBranch::new(a0.clone(), b0.clone(), 2.0, 0, 0.0, None));
        let got = layer.forward(x.clone());
        let x2 = x.clone().reshape([12, 5]);
        let d0 = x2.clone().matmul(a0).matmul(b0) * 2.0;
        let d1 = x2.matmul(a1).matmul(b1) * 0.5;
        let zeros = Tensor::<2>::zeros([12, 3], &device);
        let want = plain.clone() + Tensor::cat(vec![d0, zeros, d1], 1).reshape([3, 4, 9]);
        close(got.clone(), want);
        // the merged weight computes the same
        let merged = x.reshape([12, 5]).matmul(layer.merged_weight())
            + layer.bias.as_ref().unwrap().val().unsqueeze::<2>();
        close(merged.reshape([3, 4, 9]), got);
    }

    #[test]
    fn dora_rescales_columns_by_magnitude_over_norm() {
        let _g = crate::TEST_RNG.lock();
        let device = Device::flex();
        let mut layer: Dense = LinearConfig::new(4, 3).init(&device).into();
        let (a, b) = (random([4, 2], &device), random([2, 3], &device));
        let m = Tensor::<1>::from_data(TensorData::from([0.5f32, 2.0, 1.5]), &device);
        layer.lora.push(LoraBranch::new(
            a.clone(),
            b.clone(),
            1.5,
            0,
            0.0,
            Some(m.clone()),
        ));
        let x = random([6, 4], &device);
        // reference: m · (W + sAB) / ‖W + sAB‖_col, then x·W' + bias
        let w = layer.weight.val() + a.matmul(b) * 1.5;
        let norm = w.clone().powi_scalar(2).sum_dim(0).sqrt();
        let w_dora = w / norm * m.unsqueeze::<2>();
        let bias = layer.bias.as_ref().unwrap().val().unsqueeze::<2>();
        let want = x.clone().matmul(w_dora.clone()) + bias;
        close(layer.forward(x), want);
        close(layer.merged_weight(), w_dora);
    }

    #[test]
    fn lora_dropout_acts_on_the_adapter_input_only() {
        let _g = crate::TEST_RNG.lock();
        let (plain_dev, device) = (Device::flex(), Device::flex().autodiff());
        let mut layer: Dense = LinearConfig::new(8, 4).init(&device).into();
        let one = random([1, 8], &plain_dev).into_data();
        let x = Tensor::<2>::from_data(one.clone(), &device).repeat_dim(0, 4096);
        let plain = layer.forward(x.clone());
        // B = 0: dropout on the adapter input cannot change the output
        layer.lora.push(LoraBranch::new(
            random([8, 2], &device),
            Tensor::zeros([2, 4], &device),
            1.0,
            0,
            0.5,
            None,
        ));
        close(layer.forward(x.clone()), plain);
        // B ≠ 0: evaluation is deterministic; training draws masks on the adapter input, and
        // (inverted dropout) their mean over many rows of one input is the evaluation output.
        layer.lora[0].b = Param::from_tensor(random([2, 4], &device));
        let valid = layer.valid();
        let eval = valid.forward(Tensor::<2>::from_data(one.clone(), &plain_dev));
        let eval2 = valid.forward(Tensor::<2>::from_data(one, &plain_dev));
        eval.clone().into_data().assert_eq(&eval2.into_data(), true);
        let train = Tensor::<2>::from_data(layer.forward(x).into_data(), &plain_dev);
        let spread: f32 = (train.clone() - eval.clone()).abs().max().into_scalar();
        assert!(
            spread > 1e-2,
            "dropout changed nothing in training ({spread})"
        );
        let err: f32 = (train.mean_dim(0) - eval).abs().max().into_scalar();
        assert!(
            err < 0.1f32 * spread,
            "mean of training outputs {err} away from evaluation"
        );
    }
}
