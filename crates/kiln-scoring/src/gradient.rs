//! Gradient scores: GraNd (Paul et al. 2021), the norm of one example's loss gradient — exact
//! over every trainable parameter ([`grand`], one backward pass per example), or over the last
//! linear layer only in closed form ([`grand_last_layer`]: cheap, from the features and logits a
//! forward pass already has).

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Gradients;

use crate::error::{Error, Result};
use crate::pointwise::Pointwise;

struct SquaredNorm<'a> {
    grads: &'a Gradients,
    sum: f64,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        if let Some(g) = p.grad(self.grads) {
            let s: f64 = g
                .powi_scalar(2)
                .sum()
                .into_data()
                .convert::<f64>()
                .try_to_vec::<f64>()
                .map_or(f64::NAN, |v| v[0]);
            self.sum += s;
        }
    }
}

/// GraNd of examples `0..n`: `‖∇_θ loss(model, i)‖₂` over every parameter with a gradient, one
/// backward pass per example (exact; `loss` returns the example's loss `[1]` on the model's
/// autodiff device). The model is used as given: a network with batch norm on an autodiff
/// device normalises the single example by its own statistics.
///
/// # Errors
/// [`Error::Shape`] carrying `loss`'s message, naming the example.
pub fn grand<M: Module>(
    model: &M,
    n: usize,
    mut loss: impl FnMut(&M, usize) -> std::result::Result<Tensor<1>, String>,
) -> Result<Vec<f64>> {
    (0..n)
        .map(|i| {
            let l = loss(model, i).map_err(|message| Error::Shape {
                what: format!("the loss of example {i}"),
                message,
            })?;
            let grads = l.backward();
            let mut v = SquaredNorm {
                grads: &grads,
                sum: 0.0,
            };
            model.visit(&mut v);
            Ok(v.sum.sqrt())
        })
        .collect()
}

/// The gradient of each example's true-class **logit** with respect to its input (VoG's
/// saliency, Agarwal et al.), `[B, C, H, W]` flattened: `logits` computes the model's logits
/// `[B, classes]` from images on the model's autodiff device. Examples must not interact in the
/// forward pass (no batch norm in training mode), as each gradient is read from one backward
/// pass over the batch's summed true-class logits.
///
/// # Errors
/// [`Error::Shape`] carrying `logits`' message, for a label count that differs from the batch,
/// or when the images receive no gradient (they are not on an autodiff device).
pub fn input_gradients<M>(
    model: &M,
    images: Tensor<4>,
    labels: &[usize],
    logits: impl FnOnce(&M, Tensor<4>) -> std::result::Result<Tensor<2>, String>,
) -> Result<Vec<f64>> {
    let [b, ..] = images.dims();
    if labels.len() != b {
        return Err(Error::Shape {
            what: "input_gradients".into(),
            message: format!("{} labels for {b} images", labels.len()),
        });
    }
    let device = images.device();
    let x = images.require_grad();
    let z = logits(model, x.clone()).map_err(|message| Error::Shape {
        what: "the logits".into(),
        message,
    })?;
    let idx: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let y = Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(idx, [b, 1]), &device);
    let grads = z.gather(1, y).sum().backward();
    let g = x.grad(&grads).ok_or_else(|| Error::Shape {
        what: "input_gradients".into(),
        message: "the images got no gradient; put them on an autodiff device (Device::autodiff)"
            .into(),
    })?;
    g.into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_err(|e| Error::Shape {
            what: "input gradients".into(),
            message: format!("{e:?}"),
        })
}

/// GraNd restricted to a final linear layer `logits = W·h + b`, in closed form: the gradient of
/// the cross-entropy is `(p − onehot(y)) ⊗ h` for `W` and `p − onehot(y)` for `b`, so its norm
/// is `EL2N · √(‖h‖² + 1)` (without a bias: `EL2N · ‖h‖`). `features` is `h`, the head's input.
///
/// # Errors
/// [`Pointwise::of`]'s errors for the logits and label.
pub fn grand_last_layer(features: &[f64], logits: &[f64], label: usize, bias: bool) -> Result<f64> {
    let el2n = Pointwise::of(logits, label, 0)?.el2n;
    let h2: f64 = features.iter().map(|x| x * x).sum();
    Ok(el2n * (h2 + f64::from(u8::from(bias))).sqrt())
}
