//! Moving weights between Hugging Face checkpoints (through `kiln-checkpoint`) and burn modules.
//!
//! Loading is by explicit name: every model states which checkpoint tensor feeds which parameter
//! and whether it needs a transpose (PyTorch `nn.Linear` stores `[out, in]`; burn's `Linear` and
//! GPT-2's `Conv1D` store `[in, out]`). Names the model asked for but did not find, and names in
//! the checkpoint nobody asked for, are errors unless allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_checkpoint::{Checkpoint, CheckpointWriter, Dtype, ShardPlan, TensorSpec, dtype};

use crate::dense::Dense;
use crate::error::{Error, Result};

/// burn's `Linear` and kiln's [`Dense`]: a weight `[in, out]` and an optional bias.
pub(crate) trait LinearParts {
    fn weight_mut(&mut self) -> &mut Param<Tensor<2>>;
    fn bias_mut(&mut self) -> Option<&mut Param<Tensor<1>>>;
    /// The weight the layer computes with (a [`Dense`]'s adapters merged in).
    fn weight_value(&self) -> Tensor<2>;
    fn bias_value(&self) -> Option<Tensor<1>>;
}

impl LinearParts for Linear {
    fn weight_mut(&mut self) -> &mut Param<Tensor<2>> {
        &mut self.weight
    }
    fn bias_mut(&mut self) -> Option<&mut Param<Tensor<1>>> {
        self.bias.as_mut()
    }
    fn weight_value(&self) -> Tensor<2> {
        self.weight.val()
    }
    fn bias_value(&self) -> Option<Tensor<1>> {
        self.bias.as_ref().map(|b| b.val())
    }
}

impl LinearParts for Dense {
    fn weight_mut(&mut self) -> &mut Param<Tensor<2>> {
        &mut self.weight
    }
    fn bias_mut(&mut self) -> Option<&mut Param<Tensor<1>>> {
        self.bias.as_mut()
    }
    fn weight_value(&self) -> Tensor<2> {
        self.merged_weight()
    }
    fn bias_value(&self) -> Option<Tensor<1>> {
        self.bias.as_ref().map(|b| b.val())
    }
}

/// What to tolerate when loading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Keep the initial values of parameters the checkpoint lacks (e.g. a new classifier head).
    pub allow_missing: bool,
    /// Ignore checkpoint tensors the model does not use.
    pub allow_unexpected: bool,
}

/// Reads named tensors from a checkpoint into burn tensors, recording what was used.
pub(crate) struct WeightLoader<'a> {
    ckpt: &'a Checkpoint,
    device: Device,
    prefix: String,
    used: BTreeSet<String>,
    missing: Vec<String>,
}

impl<'a> WeightLoader<'a> {
    pub(crate) fn new(ckpt: &'a Checkpoint, device: &Device, prefix: &str) -> Self {
        Self {
            ckpt,
            device: device.clone(),
            prefix: prefix.to_owned(),
            used: BTreeSet::new(),
            missing: Vec::new(),
        }
    }

    /// Full checkpoint name of `name` under the prefix.
    pub(crate) fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Whether the checkpoint has `name` (under the prefix).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.ckpt.contains(&self.full(name))
    }

    /// The raw values of `name` with their shape, marking it used; `None` (and recorded as
    /// missing) if absent.
    fn raw(&mut self, name: &str, expected: &[usize]) -> Result<Option<Vec<f32>>> {
        let full = self.full(name);
        let Some(info) = self.ckpt.info(&full) else {
            self.missing.push(full);
            return Ok(None);
        };
        if info.shape != expected {
            return Err(Error::WeightShape {
                checkpoint: self.ckpt.path().to_owned(),
                name: full,
                got: info.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        let values = self.ckpt.tensor(&full)?.to_f32()?;
        self.used.insert(full);
        Ok(Some(values))
    }

    /// A tensor of shape `shape` (stored the same way).
    pub(crate) fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Option<Tensor<D>>> {
        Ok(self
            .raw(name, &shape)?
            .map(|v| Tensor::<D>::from_data(TensorData::new(v, shape), &self.device)))
    }

    /// A 2-D tensor stored transposed (`[cols, rows]` in the file, `[rows, cols]` in burn).
    pub(crate) fn transposed(
        &mut self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Option<Tensor<2>>> {
        Ok(self.raw(name, &[shape[1], shape[0]])?.map(|v| {
            Tensor::<2>::from_data(TensorData::new(v, [shape[1], shape[0]]), &self.device)
                .transpose()
        }))
    }

    /// Marks a checkpoint tensor as consumed without loading it (tied copies, buffers).
    pub(crate) fn skip(&mut self, name: &str) {
        let full = self.full(name);
        if self.ckpt.contains(&full) {
            self.used.insert(full);
        }
    }

    /// A `Linear` stored as `[in, out]` (GPT-2's Conv1D): `prefix.weight`, `prefix.bias`.
    pub(crate) fn linear_in_out(
        &mut self,
        prefix: &str,
        linear: &mut impl LinearParts,
    ) -> Result<()> {
        let [i, o] = linear.weight_mut().dims();
        if let Some(w) = self.tensor(&format!("{prefix}.weight"), [i, o])? {
            set(linear.weight_mut(), w);
        }
        self.bias(prefix, linear)
    }

    /// A `Linear` stored as PyTorch `nn.Linear`, `[out, in]`: transposed on load.
    pub(crate) fn linear_out_in(
        &mut self,
        prefix: &str,
        linear: &mut impl LinearParts,
    ) -> Result<()> {
        let [i, o] = linear.weight_mut().dims();
        if let Some(w) = self.transposed(&format!("{prefix}.weight"), [i, o])? {
            set(linear.weight_mut(), w);
        }
        self.bias(prefix, linear)
    }

    fn bias(&mut self, prefix: &str, linear: &mut impl LinearParts) -> Result<()> {
        if let Some(b) = linear.bias_mut() {
            let [o] = b.dims();
            if let Some(t) = self.tensor(&format!("{prefix}.bias"), [o])? {
                set(b, t);
            }
        }
        Ok(())
    }

    /// A LayerNorm: `prefix.weight`/`prefix.bias`, or the older `gamma`/`beta` names.
    pub(crate) fn layer_norm(&mut self, prefix: &str, ln: &mut LayerNorm) -> Result<()> {
        let [d] = ln.gamma.dims();
        let (w, b) = if self.has(&format!("{prefix}.gamma")) {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        if let Some(t) = self.tensor(&format!("{prefix}.{w}"), [d])? {
            set(&mut ln.gamma, t);
        }
        if let Some(beta) = ln.beta.as_mut()
            && let Some(t) = self.tensor(&format!("{prefix}.{b}"), [d])?
        {
            set(beta, t);
        }
        Ok(())
    }

    /// A `Conv2d` stored as PyTorch's (`[out, in/groups, kh, kw]`, the same layout in burn):
    /// `prefix.weight`, and `prefix.bias` when the conv has one.
    pub(crate) fn conv2d(&mut self, prefix: &str, c: &mut burn::nn::conv::Conv2d) -> Result<()> {
        let dims = c.weight.dims();
        if let Some(t) = self.tensor(&format!("{prefix}.weight"), dims)? {
            set(&mut c.weight, t);
        }
        if let Some(b) = c.bias.as_mut() {
            let dims = b.dims();
            if let Some(t) = self.tensor(&format!("{prefix}.bias"), dims)? {
                set(b, t);
            }
        }
        Ok(())
    }

    /// An embedding table `[n, d]`.
    pub(crate) fn embedding(&mut self, name: &str, emb: &mut Embedding) -> Result<()> {
        let dims = emb.weight.dims();
        if let Some(t) = self.tensor(name, dims)? {
            set(&mut emb.weight, t);
        }
        Ok(())
    }

    /// Takes over another loader's record of used and missing names (same checkpoint).
    pub(crate) fn absorb(&mut self, other: WeightLoader<'_>) {
        self.used.extend(other.used);
        self.missing.extend(other.missing);
    }

    /// Checks for missing and unexpected tensors. `buffer` names (non-parameters such as GPT-2's
    /// cached causal masks) are never unexpected.
    pub(crate) fn finish(self, options: LoadOptions, buffer: impl Fn(&str) -> bool) -> Result<()> {
        if !self.missing.is_empty() && !options.allow_missing {
            return Err(Error::MissingWeights {
                checkpoint: self.ckpt.path().to_owned(),
                names: few(&self.missing),
            });
        }
        let unexpected: Vec<String> = self
            .ckpt
            .names()
            .filter(|n| !self.used.contains(*n) && !buffer(n))
            .map(str::to_owned)
            .collect();
        if !unexpected.is_empty() && !options.allow_unexpected {
            return Err(Error::UnexpectedWeights {
                checkpoint: self.ckpt.path().to_owned(),
                names: few(&unexpected),
            });
        }
        Ok(())
    }
}

fn few(names: &[String]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().take(8).cloned().collect();
    if names.len() > 8 {
        v.push(format!("... ({} in all)", names.len()));
    }
    v
}

/// Replaces a parameter with a loaded value: a trainable leaf (on an autodiff device). The lazy
/// random initialisation it replaces is never computed.
pub(crate) fn set<const D: usize>(param: &mut Param<Tensor<D>>, value: Tensor<D>) {
    *param = Param::from_tensor(value);
}

/// Collects named tensors to write a Hugging Face checkpoint.
pub(crate) struct WeightWriter {
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl WeightWriter {
    pub(crate) fn new() -> Self {
        Self {
            tensors: Vec::new(),
        }
    }

    pub(crate) fn tensor<const D: usize>(&mut self, name: impl Into<String>, t: Tensor<D>) {
        let shape = t.dims().to_vec();
        let values = t
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 data");
        self.tensors.push((name.into(), shape, values));
    }

    /// A `Linear` as `[in, out]` (Conv1D layout).
    pub(crate) fn linear_in_out(&mut self, prefix: &str, l: &impl LinearParts) {
        self.tensor(format!("{prefix}.weight"), l.weight_value());
        if let Some(b) = l.bias_value() {
            self.tensor(format!("{prefix}.bias"), b);
        }
    }

    /// A `Linear` as PyTorch `[out, in]`.
    pub(crate) fn linear_out_in(&mut self, prefix: &str, l: &impl LinearParts) {
        self.tensor(format!("{prefix}.weight"), l.weight_value().transpose());
        if let Some(b) = l.bias_value() {
            self.tensor(format!("{prefix}.bias"), b);
        }
    }

    pub(crate) fn layer_norm(&mut self, prefix: &str, ln: &LayerNorm) {
        self.tensor(format!("{prefix}.weight"), ln.gamma.val());
        if let Some(b) = &ln.beta {
            self.tensor(format!("{prefix}.bias"), b.val());
        }
    }

    /// Writes `model.safetensors` and `config.json` into `dir` atomically, in `dtype`.
    pub(crate) fn write(
        self,
        dir: &Path,
        config_json: &str,
        dtype: Dtype,
        force: bool,
    ) -> Result<()> {
        let specs = self
            .tensors
            .iter()
            .map(|(n, s, _)| TensorSpec {
                name: n.clone(),
                dtype,
                shape: s.clone(),
            })
            .collect();
        let plan = ShardPlan::new(specs, kiln_checkpoint::DEFAULT_MAX_SHARD_BYTES)?;
        let meta = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
        let mut w = CheckpointWriter::create(dir, plan, meta, force)?;
        for (name, _, values) in &self.tensors {
            let mut bytes = vec![0u8; values.len() * dtype.size()];
            dtype::encode_f32(values, dtype, &mut bytes)?;
            w.write_tensor(name, &bytes)?;
        }
        w.write_file(kiln_checkpoint::CONFIG_FILE, config_json.as_bytes())?;
        w.finish()?;
        Ok(())
    }
}
