//! A module's float parameters by name, as flat tensors on the module's device: what
//! training-time averaging and penalties (SFA, EMA, L2 and EWC anchors) work on, and what
//! algorithms checkpoint ([`TensorState`](crate::TensorState)).
//!
//! Names are the module's field path (`layers.0.qkv.weight`), as burn's derive reports it
//! (`Option` fields keep their own name, `Vec` items their index).
//!
//! ```
//! use kiln_train::burn::{nn::LinearConfig, tensor::Device};
//! use kiln_train::params::{float_params, map_float_params};
//!
//! let d = Device::flex();
//! let layer = LinearConfig::new(2, 3).init(&d);
//! let names: Vec<String> = float_params(&layer).into_iter().map(|(n, _)| n).collect();
//! assert_eq!(names, ["weight", "bias"]);
//! // Halve every parameter (shapes are kept; trainable parameters stay trainable leaves).
//! let halved = map_float_params(layer.clone(), |_, t| t.mul_scalar(0.5));
//! let (w0, w1) = (layer.weight.val(), halved.weight.val());
//! assert!((w0.mul_scalar(0.5) - w1).abs().max().into_scalar::<f32>() < 1e-7);
//! ```

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

struct Collect {
    path: Vec<String>,
    /// Only parameters that require a gradient.
    trainable_only: bool,
    out: Vec<(String, Tensor<1>)>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        // (asked before the reshape: a reshaped leaf is no longer one)
        if self.trainable_only && !t.is_require_grad() {
            return;
        }
        let n = t.dims().iter().product::<usize>();
        self.out.push((self.path.join("."), t.reshape([n])));
    }
}

/// Every float parameter of `module`, flattened, with its path, in the module's order.
pub fn float_params<M: Module>(module: &M) -> Vec<(String, Tensor<1>)> {
    let mut c = Collect {
        path: Vec::new(),
        trainable_only: false,
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

/// The float parameters of `module` that require a gradient (what an optimiser updates),
/// flattened, with their paths, in the module's order. The tensors are in the autodiff graph
/// (a penalty on them has a gradient); detach them to keep a copy.
pub fn trainable_params<M: Module>(module: &M) -> Vec<(String, Tensor<1>)> {
    let mut c = Collect {
        path: Vec::new(),
        trainable_only: true,
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

struct Map<F> {
    path: Vec<String>,
    f: F,
}

impl<F: FnMut(&str, Tensor<1>) -> Tensor<1>> ModuleMapper for Map<F> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        let f = &mut self.f;
        param.map(|t| {
            let trainable = t.is_require_grad();
            let shape = t.dims();
            let n = shape.iter().product::<usize>();
            f(&name, t.reshape([n]))
                .reshape(shape)
                .detach()
                .set_require_grad(trainable)
        })
    }
}

/// `module` with every float parameter replaced by `f(path, flat)`, reshaped back. The results
/// are detached leaves that keep each parameter's `require_grad`, so the optimiser goes on as
/// before (its state is keyed by parameter id, which is kept).
pub fn map_float_params<M: Module>(module: M, f: impl FnMut(&str, Tensor<1>) -> Tensor<1>) -> M {
    module.map(&mut Map {
        path: Vec::new(),
        f,
    })
}
