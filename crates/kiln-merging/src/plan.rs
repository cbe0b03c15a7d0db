//! From a configuration and its input checkpoints to a checked, printable plan.

use std::fmt::Write as _;
use std::path::PathBuf;

use kiln_checkpoint::{Checkpoint, Dtype, ShardPlan, TensorSpec};

use crate::config::{MergeConfig, ParamValue, Scalar, ShapePolicy};
use crate::error::{Error, Result};
use crate::methods::{Method, ParamDefault, Sparsify};

/// Options of a merge run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOptions {
    /// Output directory.
    pub out_dir: PathBuf,
    /// Maximum bytes of tensor data per output shard (default 5 GB).
    pub max_shard_bytes: u64,
    /// Worker threads (`None`: all cores).
    pub threads: Option<usize>,
    /// Replace an existing output directory.
    pub force: bool,
    /// Seed of DARE's random drop.
    pub seed: u64,
    /// Write the merge even if it produces NaN or ±∞ from finite inputs (by default that is an
    /// error naming the tensors, and nothing is written).
    pub allow_non_finite: bool,
}

impl MergeOptions {
    /// Defaults for `out_dir`: 5 GB shards, all cores, no overwrite, seed 0, non-finite outputs
    /// refused.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            max_shard_bytes: kiln_checkpoint::DEFAULT_MAX_SHARD_BYTES,
            threads: None,
            force: false,
            seed: 0,
            allow_non_finite: false,
        }
    }
}

/// What happens to one output tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Merged from the inputs.
    Merge(TensorParams),
    /// Copied from the reference model unchanged (integer, bool and 8-bit float tensors).
    Copy,
}

/// Parameters resolved for one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorParams {
    /// Per-model weights (linear, task-arithmetic family).
    pub weights: Vec<f64>,
    /// Per-model densities (TIES, DARE).
    pub densities: Vec<f64>,
    /// λ.
    pub lambda: f64,
    /// Normalise by the participating weights.
    pub normalize: bool,
    /// Rescale kept entries by 1/density.
    pub rescale: bool,
    /// SLERP's `t` or WiSE-FT's `alpha`.
    pub t: f64,
    /// TIES trim over the whole model rather than per tensor.
    pub model_scope: bool,
}

/// One output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    /// Name.
    pub name: String,
    /// Shape (the reference model's).
    pub shape: Vec<usize>,
    /// Stored dtype.
    pub out_dtype: Dtype,
    /// What to do.
    pub action: Action,
    /// Depth `t ∈ [0, 1]` used for interpolated parameters.
    pub depth: f64,
    /// For each model (in [`MergePlan::models`] order), its number of rows if it differs from
    /// the reference (the `base_rows` policy).
    pub rows: Vec<Option<usize>>,
}

/// A merge ready to run: inputs opened and validated, parameters resolved, output sharded.
#[derive(Debug)]
pub struct MergePlan {
    /// The configuration.
    pub config: MergeConfig,
    /// The options.
    pub options: MergeOptions,
    /// Opened base model, if any.
    pub base: Option<Checkpoint>,
    /// Opened models (besides the base for base-requiring methods).
    pub models: Vec<Checkpoint>,
    /// One entry per output tensor, in write order.
    pub tensors: Vec<TensorPlan>,
    /// How the output is sharded.
    pub shards: ShardPlan,
    /// Things the user should know (dropped rows, extra tensors ignored, ...).
    pub warnings: Vec<String>,
    /// Layers used for depth interpolation.
    pub num_layers: usize,
}

impl MergePlan {
    /// Opens the inputs (read-only) and plans the merge. Planning writes nothing and reads only
    /// the inputs' headers; an interrupted `--force` replacement of the output is repaired when
    /// the run creates it (`kiln_checkpoint::AtomicDir::create`), or beforehand with
    /// `kiln_checkpoint::recover` (as `kiln merge` does).
    ///
    /// # Errors
    /// An output that is, lies inside or contains an input (after resolving symlinks:
    /// `kiln_checkpoint::Error::OutputOverlapsInput`); an existing output directory without
    /// `force`; the checkpoint
    /// errors of opening the inputs;
    /// [`Error::MissingTensor`], [`Error::ShapeMismatch`], [`Error::DtypeMismatch`],
    /// [`Error::Parameter`] for values out of range or not applying to some tensor.
    pub fn new(config: MergeConfig, options: MergeOptions) -> Result<Self> {
        let mut warnings = Vec::new();
        let mut inputs: Vec<(String, PathBuf)> = Vec::new();
        if let Some(b) = &config.base_model {
            inputs.push((format!("the base model `{}`", b.name), b.path.clone()));
        }
        for m in &config.models {
            inputs.push((format!("model `{}`", m.model.name), m.model.path.clone()));
        }
        // Refused with or without `force`: replacing an output that contains an input would
        // delete the input, and an output inside an input would write into it.
        kiln_checkpoint::paths::check_output(&options.out_dir, &inputs)?;
        if options.out_dir.exists() && !options.force {
            return Err(kiln_checkpoint::Error::OutputExists {
                path: options.out_dir.clone(),
            }
            .into());
        }
        let base = config
            .base_model
            .as_ref()
            .map(|b| Checkpoint::open(&b.path))
            .transpose()?;
        let models = config
            .models
            .iter()
            .map(|m| Checkpoint::open(&m.model.path))
            .collect::<kiln_checkpoint::Result<Vec<_>>>()?;
        let reference = base.as_ref().unwrap_or(&models[0]);
        let names: Vec<String> = reference.names().map(str::to_owned).collect();
        let num_layers = reference
            .config()
            .and_then(|c| c.num_hidden_layers().ok().flatten())
            .or_else(|| {
                names
                    .iter()
                    .filter_map(|n| layer_index(n))
                    .max()
                    .map(|m| m + 1)
            })
            .unwrap_or(1);
        let method = config.method;
        let mut tensors = Vec::with_capacity(names.len());
        let model_name = |i: usize| config.models[i].model.name.clone();

        for name in &names {
            let info = reference.info(name).expect("name from the reference");
            let depth = layer_index(name).map_or(0.0, |i| {
                if num_layers > 1 {
                    i as f64 / (num_layers - 1) as f64
                } else {
                    1.0
                }
            });
            if !info.dtype.is_float() {
                tensors.push(TensorPlan {
                    name: name.clone(),
                    shape: info.shape.clone(),
                    out_dtype: info.dtype,
                    action: Action::Copy,
                    depth,
                    rows: vec![None; models.len()],
                });
                continue;
            }
            let mut rows = Vec::with_capacity(models.len());
            for (i, m) in models.iter().enumerate() {
                let mi = m.info(name).ok_or_else(|| Error::MissingTensor {
                    model: model_name(i),
                    tensor: name.clone(),
                })?;
                if !mi.dtype.is_float() {
                    return Err(Error::DtypeMismatch {
                        tensor: name.clone(),
                        model: model_name(i),
                        dtype: mi.dtype.to_string(),
                        base_dtype: info.dtype.to_string(),
                    });
                }
                if mi.shape == info.shape {
                    rows.push(None);
                    continue;
                }
                let rows_only = mi.shape.len() == info.shape.len()
                    && !mi.shape.is_empty()
                    && mi.shape[1..] == info.shape[1..];
                if rows_only && config.shape_mismatch == ShapePolicy::BaseRows {
                    warnings.push(format!(
                        "`{name}`: model `{}` has {} rows, the base {}: {}",
                        model_name(i),
                        mi.shape[0],
                        info.shape[0],
                        if mi.shape[0] > info.shape[0] {
                            "its extra rows are dropped"
                        } else {
                            "its missing rows are taken from the base"
                        }
                    ));
                    rows.push(Some(mi.shape[0]));
                    continue;
                }
                let hint = if rows_only {
                    "The models have different vocabulary sizes: set `shape_mismatch: base_rows` to keep the base's rows (extra rows are dropped, missing rows come from the base), or resize the embeddings first."
                } else {
                    "The models have different architectures and cannot be merged tensor by tensor."
                };
                return Err(Error::ShapeMismatch {
                    tensor: name.clone(),
                    model: model_name(i),
                    shape: mi.shape.clone(),
                    base_shape: info.shape.clone(),
                    hint: hint.into(),
                });
            }
            let params = resolve(&config, name, depth, models.len())?;
            tensors.push(TensorPlan {
                name: name.clone(),
                shape: info.shape.clone(),
                out_dtype: config.out_dtype.unwrap_or(info.dtype),
                action: Action::Merge(params),
                depth,
                rows,
            });
        }
        for (i, m) in models.iter().enumerate() {
            let extra: Vec<&str> = m.names().filter(|n| !reference.contains(n)).collect();
            if !extra.is_empty() {
                warnings.push(format!(
                    "model `{}` has {} tensor(s) the base lacks, not merged: {}{}",
                    model_name(i),
                    extra.len(),
                    extra
                        .iter()
                        .take(5)
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if extra.len() > 5 { ", ..." } else { "" }
                ));
            }
        }
        if method
            .family()
            .is_some_and(|f| f.sparsify == Sparsify::Magnitude)
            && model_scope(&config)?
        {
            for (i, m) in config.models.iter().enumerate() {
                if let Some(ParamValue::Gradient(_) | ParamValue::Conditional(_)) = m
                    .parameters
                    .get("density")
                    .or(config.parameters.get("density"))
                {
                    return Err(Error::Parameter {
                        method: method.info().name,
                        param: "density".into(),
                        message: format!(
                            "`trim_scope: model` trims each task vector as a whole, so model {i}'s density must be one number"
                        ),
                    });
                }
            }
        }
        // A normalised sum whose weights add up to zero is left unnormalised (dividing would
        // give ±∞ or NaN); say which tensors, since that is rarely what was meant.
        let unnormalised: Vec<&str> = tensors
            .iter()
            .filter(|t| match &t.action {
                Action::Merge(p) => {
                    p.normalize
                        && !method.family().is_some_and(|f| f.consensus)
                        && p.weights.iter().sum::<f64>() == 0.0
                }
                Action::Copy => false,
            })
            .map(|t| t.name.as_str())
            .collect();
        if !unnormalised.is_empty() {
            warnings.push(format!(
                "the weights of {} tensor(s) sum to zero, so `normalize: true` cannot divide by their sum and they are the plain weighted sum instead: {}",
                unnormalised.len(),
                few_names(&unnormalised)
            ));
        }
        let reference_name = config
            .base_model
            .as_ref()
            .map_or(&config.models[0].model, |b| b)
            .path
            .display()
            .to_string();
        if reference.config().is_none() {
            warnings.push(format!(
                "{reference_name} has no config.json, so the merged model will have none either; transformers and `kiln run` need one — copy it in by hand"
            ));
        }
        if config.tokenizer_source.is_some() {
            let dir = crate::executor::tokenizer_dir(&config);
            if crate::executor::tokenizer_files(&dir).is_empty() {
                warnings.push(format!(
                    "`tokenizer_source` points at {}, which has none of the tokenizer files ({}); the merged model will have no tokenizer",
                    dir.display(),
                    crate::executor::TOKENIZER_FILES.join(", ")
                ));
            }
        }
        let specs = tensors
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                dtype: t.out_dtype,
                shape: t.shape.clone(),
            })
            .collect();
        let shards = ShardPlan::new(specs, options.max_shard_bytes)?;
        Ok(Self {
            config,
            options,
            base,
            models,
            tensors,
            shards,
            warnings,
            num_layers,
        })
    }

    /// The reference model: the base if there is one, else the first model.
    pub fn reference(&self) -> &Checkpoint {
        self.base.as_ref().unwrap_or(&self.models[0])
    }

    /// Bytes read from the inputs by a run (each input tensor once, plus model-wide passes).
    pub fn input_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| {
                self.base
                    .iter()
                    .chain(&self.models)
                    .filter_map(|c| c.info(&t.name))
                    .map(|i| i.byte_len() as u64)
                    .sum::<u64>()
            })
            .sum()
    }

    /// A rough upper bound of the memory a run needs beyond the memory maps' pages: the largest
    /// output tensor twice (one being computed, one being written) and per-thread chunk buffers.
    pub fn estimated_peak_bytes(&self) -> u64 {
        let width = match self.config.compute {
            crate::config::Compute::F32 => 4,
            crate::config::Compute::F64 => 8,
        };
        let out = self
            .tensors
            .iter()
            .map(|t| t.shape.iter().product::<usize>() as u64 * t.out_dtype.size() as u64)
            .max()
            .unwrap_or(0);
        let threads = self
            .options
            .threads
            .unwrap_or_else(rayon::current_num_threads) as u64;
        let chunk = crate::executor::CHUNK as u64 * width * (self.models.len() as u64 + 3);
        2 * out + threads * chunk
    }

    /// The plan as text (what `--dry-run` prints).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let info = self.config.method.info();
        let _ = writeln!(
            s,
            "merge_method: {} ({}, {})",
            info.name, info.pretty_name, info.reference_url
        );
        if let Some(b) = &self.config.base_model {
            let _ = writeln!(s, "base_model:   {}", b.path.display());
        }
        for m in &self.config.models {
            let _ = writeln!(s, "model:        {}", m.model.path.display());
        }
        let _ = writeln!(
            s,
            "compute:      {:?}; output dtype: {}",
            self.config.compute,
            self.config
                .out_dtype
                .map_or("as the base".to_owned(), |d| d.to_string())
        );
        let merged = self
            .tensors
            .iter()
            .filter(|t| matches!(t.action, Action::Merge(_)))
            .count();
        let _ = writeln!(
            s,
            "tensors:      {} ({merged} merged, {} copied unchanged)",
            self.tensors.len(),
            self.tensors.len() - merged
        );
        let _ = writeln!(s, "reads:        {}", bytes(self.input_bytes()));
        let _ = writeln!(
            s,
            "writes:       {} in {} shard(s) of at most {} → {}",
            bytes(self.shards.total_bytes()),
            self.shards.shards().len(),
            bytes(self.shards.max_shard_bytes()),
            self.options.out_dir.display()
        );
        let _ = writeln!(
            s,
            "memory:       about {} besides the inputs' page cache",
            bytes(self.estimated_peak_bytes())
        );
        for (i, shard) in self.shards.shards().iter().enumerate() {
            let size: u64 = shard.iter().map(TensorSpec::byte_len).sum();
            let _ = writeln!(
                s,
                "  {}: {} tensors, {}",
                self.shards.file_name(i),
                shard.len(),
                bytes(size)
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}

/// `1.23 GB` style (kiln-checkpoint's formatter).
fn bytes(b: u64) -> String {
    kiln_checkpoint::size::format(b as f64)
}

/// The layer of a tensor: its first purely numeric dotted component (`model.layers.12.mlp...`,
/// `transformer.h.3.attn...`, `bert.encoder.layer.5...`).
pub fn layer_index(name: &str) -> Option<usize> {
    name.split('.').find_map(|part| {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    })
}

fn model_scope(config: &MergeConfig) -> Result<bool> {
    Ok(
        match config
            .parameters
            .get("trim_scope")
            .and_then(|v| v.resolve("", 0.0))
        {
            Some(Scalar::Word(w)) => w == "model",
            _ => false,
        },
    )
}

fn lookup(
    config: &MergeConfig,
    name: &'static str,
    model: Option<usize>,
    tensor: &str,
    depth: f64,
) -> Result<Scalar> {
    let method = config.method;
    let info = method.info();
    let value = model
        .and_then(|i| config.models[i].parameters.get(name))
        .or_else(|| config.parameters.get(name))
        .and_then(|v| v.resolve(tensor, depth));
    if let Some(v) = value {
        return Ok(v);
    }
    let def = info
        .global_params
        .iter()
        .chain(info.model_params)
        .find(|d| d.name == name);
    match def.and_then(|d| d.default) {
        Some(ParamDefault::Float(f)) => Ok(Scalar::Number(f)),
        Some(ParamDefault::Bool(b)) => Ok(Scalar::Bool(b)),
        Some(ParamDefault::Word(w)) => Ok(Scalar::Word(w.into())),
        None => Err(Error::Parameter {
            method: info.name,
            param: name.into(),
            message: format!(
                "no value applies to tensor `{tensor}`{}; add an entry without `filter` as the default",
                model
                    .map(|i| format!(" of model `{}`", config.models[i].model.name))
                    .unwrap_or_default()
            ),
        }),
    }
}

fn number(
    config: &MergeConfig,
    name: &'static str,
    model: Option<usize>,
    tensor: &str,
    depth: f64,
) -> Result<f64> {
    match lookup(config, name, model, tensor, depth)? {
        Scalar::Number(n) => Ok(n),
        other => Err(Error::Parameter {
            method: config.method.info().name,
            param: name.into(),
            message: format!("expected a number, got {other:?}"),
        }),
    }
}

fn flag(config: &MergeConfig, name: &'static str, tensor: &str, depth: f64) -> Result<bool> {
    match lookup(config, name, None, tensor, depth)? {
        Scalar::Bool(b) => Ok(b),
        other => Err(Error::Parameter {
            method: config.method.info().name,
            param: name.into(),
            message: format!("expected true or false, got {other:?}"),
        }),
    }
}

fn resolve(
    config: &MergeConfig,
    tensor: &str,
    depth: f64,
    n_models: usize,
) -> Result<TensorParams> {
    let method = config.method;
    let info = method.info();
    let has = |p: &str| {
        info.global_params
            .iter()
            .chain(info.model_params)
            .any(|d| d.name == p)
    };
    let mut params = TensorParams {
        weights: vec![1.0; n_models],
        densities: vec![1.0; n_models],
        lambda: 1.0,
        normalize: false,
        rescale: false,
        t: 0.0,
        model_scope: false,
    };
    for i in 0..n_models {
        if has("weight") {
            params.weights[i] = number(config, "weight", Some(i), tensor, depth)?;
        }
        if has("density") {
            let d = number(config, "density", Some(i), tensor, depth)?;
            if !(0.0..=1.0).contains(&d) {
                return Err(Error::Parameter {
                    method: info.name,
                    param: "density".into(),
                    message: format!("{d} for tensor `{tensor}` is outside [0, 1]"),
                });
            }
            if method
                .family()
                .is_some_and(|f| f.sparsify == Sparsify::Random)
                && d == 0.0
            {
                return Err(Error::Parameter {
                    method: info.name,
                    param: "density".into(),
                    message: "must be above 0 for DARE (survivors are rescaled by 1/density)"
                        .into(),
                });
            }
            params.densities[i] = d;
        }
    }
    if has("lambda") {
        params.lambda = number(config, "lambda", None, tensor, depth)?;
    }
    if has("normalize") {
        params.normalize = flag(config, "normalize", tensor, depth)?;
    }
    if has("rescale") {
        params.rescale = flag(config, "rescale", tensor, depth)?;
    }
    match method {
        Method::Slerp => params.t = number(config, "t", None, tensor, depth)?,
        Method::WiseFt => params.t = number(config, "alpha", None, tensor, depth)?,
        _ => {}
    }
    params.model_scope = has("trim_scope") && model_scope(config)?;
    Ok(params)
}

/// Up to five names in backticks, then "...".
pub(crate) fn few_names(names: &[&str]) -> String {
    let mut s = names
        .iter()
        .take(5)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 5 {
        s.push_str(&format!(", ... ({} in all)", names.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_indices_come_from_the_first_numeric_component() {
        assert_eq!(layer_index("model.layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(layer_index("transformer.h.3.attn.c_attn.weight"), Some(3));
        assert_eq!(layer_index("transformer.wte.weight"), None);
        assert_eq!(
            layer_index("bert.encoder.layer.0.output.dense.weight"),
            Some(0)
        );
    }

    #[test]
    fn byte_sizes_read_well() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(5_000_000_000), "5.00 GB");
    }
}
