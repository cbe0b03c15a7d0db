//! Merging adapters into a Hugging Face checkpoint, streamed tensor by tensor through
//! kiln-checkpoint: the output has the base's tensors, names and dtypes, and loads in
//! transformers like the base.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kiln_checkpoint::{
    Checkpoint, CheckpointWriter, DEFAULT_MAX_SHARD_BYTES, INDEX_FILE, ShardPlan, TensorSpec, dtype,
};

use crate::adapter::{Adapter, merge_module};
use crate::error::{Error, Result};
use crate::targets::{Inventory, ModuleInfo};

/// How to merge.
#[derive(Debug, Clone, Copy)]
pub struct MergeOptions {
    /// Refuse a merge that produces NaN or infinite values (PEFT's `safe_merge`).
    pub safe_merge: bool,
    /// Replace an existing output directory.
    pub force: bool,
    /// Shard size limit of the output, in bytes.
    pub max_shard_bytes: u64,
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self {
            safe_merge: true,
            force: false,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
        }
    }
}

/// What a merge changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeSummary {
    /// Tensors that received a ΔW.
    pub merged: usize,
    /// Tensors replaced whole by the adapter (trained biases, `modules_to_save`).
    pub replaced: usize,
    /// Tensors copied unchanged.
    pub copied: usize,
}

/// One adapter with its weight (ΔW is multiplied by it; 1.0 applies the adapter as trained).
pub type Weighted<'a> = (&'a Adapter, f64);

/// Per base tensor, the changes to apply.
#[derive(Debug, Default)]
struct Plan<'a> {
    deltas: BTreeMap<String, Vec<(&'a crate::adapter::LoraModule, f64, ModuleInfo)>>,
    replaced: BTreeMap<String, &'a Vec<f32>>,
    lora_bias: BTreeMap<String, Vec<(&'a [f32], f64)>>,
}

fn plan<'a>(ckpt: &Checkpoint, adapters: &[Weighted<'a>]) -> Result<Plan<'a>> {
    if adapters.len() > 1 {
        for (a, _) in adapters {
            if a.config.use_dora || !a.replaced.is_empty() {
                return Err(Error::Invalid(format!(
                    "{}: an adapter with DoRA or with trained biases / modules_to_save cannot be combined with others (PEFT's add_weighted_adapter refuses it too); merge it alone",
                    a.path.display()
                )));
            }
        }
    }
    let inventory = Inventory::of(ckpt);
    let mut p = Plan::default();
    for (adapter, w) in adapters {
        if !w.is_finite() {
            return Err(Error::Invalid(format!("adapter weight {w} is not finite")));
        }
        if *w != 1.0 && (adapter.config.use_dora || !adapter.replaced.is_empty()) {
            return Err(Error::Invalid(format!(
                "{}: a weight other than 1 is only defined for plain LoRA (DoRA and replaced tensors do not scale)",
                adapter.path.display()
            )));
        }
        let resolved = adapter.resolve(|n| inventory.find(n))?;
        for (name, info) in resolved {
            let module = &adapter.modules[&name];
            let tensor = format!("{}.weight", info.name);
            p.deltas
                .entry(tensor)
                .or_default()
                .push((module, *w, info.clone()));
            if let Some(bias) = &module.lora_bias {
                let bname = format!("{}.bias", info.name);
                if !ckpt.contains(&bname) {
                    return Err(Error::Tensor {
                        adapter: adapter.path.clone(),
                        tensor: format!("{name}.lora_B.bias"),
                        message: format!("a LoRA bias for `{bname}`, which the base does not have"),
                    });
                }
                p.lora_bias
                    .entry(bname)
                    .or_default()
                    .push((bias.as_slice(), module.scaling * w));
            }
        }
        for (name, (shape, values)) in &adapter.replaced {
            let found = [
                name.clone(),
                name.split_once('.')
                    .map_or(String::new(), |(_, r)| r.to_owned()),
            ]
            .into_iter()
            .find(|n| ckpt.contains(n));
            if found.is_none() && adapter.is_tied_copy(name) {
                continue; // a tied parameter the base stores once, under the other name
            }
            let target = found.ok_or_else(|| Error::Tensor {
                    adapter: adapter.path.clone(),
                    tensor: name.clone(),
                    message: "replaces a tensor the base checkpoint does not have; is the adapter for another architecture?".into(),
                })?;
            let have = ckpt
                .info(&target)
                .map(|i| i.shape.clone())
                .unwrap_or_default();
            if &have != shape {
                return Err(Error::Tensor {
                    adapter: adapter.path.clone(),
                    tensor: name.clone(),
                    message: format!("shape {shape:?}, but the base's `{target}` is {have:?}"),
                });
            }
            p.replaced.insert(target, values);
        }
    }
    Ok(p)
}

/// Merges `adapters` (each ΔW times its weight) into the checkpoint at `base` and writes the
/// result to `out` as a Hugging Face directory: same tensor names, shapes and dtypes (merged in
/// f32, then stored in the base's dtype), `config.json` and the other non-weight files copied.
/// `progress(done, total, tensor)` is called after each tensor.
///
/// # Errors
/// [`Error::Tensor`] when an adapter does not fit the base, [`Error::NonFinite`] under
/// `safe_merge`, [`Error::Checkpoint`] for reading and writing (an existing `out` without
/// `force`, an `out` that is, lies inside or contains the base or an adapter).
pub fn merge_into_checkpoint(
    base: &Path,
    adapters: &[Weighted<'_>],
    out: &Path,
    options: MergeOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<(PathBuf, MergeSummary)> {
    let mut inputs = vec![("the base model".to_owned(), base.to_owned())];
    inputs.extend(
        adapters
            .iter()
            .filter(|(a, _)| !a.path.as_os_str().is_empty())
            .map(|(a, _)| ("an adapter".to_owned(), a.path.clone())),
    );
    kiln_checkpoint::paths::check_output(out, &inputs)?;
    let ckpt = Checkpoint::open(base)?;
    let plan = plan(&ckpt, adapters)?;
    let mut specs = Vec::new();
    for name in ckpt.names() {
        let info = ckpt.info(name).expect("listed");
        specs.push(TensorSpec {
            name: name.to_owned(),
            dtype: info.dtype,
            shape: info.shape.clone(),
        });
    }
    let total = specs.len();
    let shard_plan = ShardPlan::new(specs, options.max_shard_bytes)?;
    let mut writer =
        CheckpointWriter::create(out, shard_plan.clone(), ckpt.metadata(), options.force)?;
    let mut summary = MergeSummary::default();
    for (done, spec) in shard_plan.tensors().enumerate() {
        let view = ckpt.tensor(&spec.name)?;
        let changed = plan.deltas.contains_key(&spec.name)
            || plan.replaced.contains_key(&spec.name)
            || plan.lora_bias.contains_key(&spec.name);
        if changed {
            let mut values = match plan.replaced.get(&spec.name) {
                Some(v) => {
                    summary.replaced += 1;
                    (*v).clone()
                }
                None => view.to_f32()?,
            };
            if let Some(list) = plan.deltas.get(&spec.name) {
                for (module, w, info) in list {
                    let _ = merge_module(&mut values, info, module, *w);
                }
                summary.merged += 1;
            }
            if let Some(list) = plan.lora_bias.get(&spec.name) {
                for (bias, s) in list {
                    values
                        .iter_mut()
                        .zip(bias.iter())
                        .for_each(|(x, b)| *x += (f64::from(*b) * s) as f32);
                }
            }
            if options.safe_merge {
                let count = values.iter().filter(|x| !x.is_finite()).count();
                if count > 0 {
                    return Err(Error::NonFinite {
                        tensor: spec.name.clone(),
                        count,
                    });
                }
            }
            let mut bytes = vec![0u8; values.len() * spec.dtype.size()];
            dtype::encode_f32(&values, spec.dtype, &mut bytes)?;
            writer.write_tensor(&spec.name, &bytes)?;
        } else {
            writer.write_tensor(&spec.name, view.data)?;
            summary.copied += 1;
        }
        ckpt.release(&spec.name);
        progress(done + 1, total, &spec.name);
    }
    if base.is_dir() {
        copy_side_files(base, &mut writer)?;
    }
    let path = writer.finish()?;
    Ok((path, summary))
}

/// Copies every regular file of a model directory except its weights (config, generation
/// config, tokenizer files) into the output.
fn copy_side_files(base: &Path, writer: &mut CheckpointWriter) -> Result<()> {
    let entries = std::fs::read_dir(base).map_err(|source| Error::Io {
        path: base.to_owned(),
        source,
    })?;
    let mut names = BTreeSet::new();
    for e in entries {
        let e = e.map_err(|source| Error::Io {
            path: base.to_owned(),
            source,
        })?;
        let name = e.file_name().to_string_lossy().into_owned();
        let skip = name.ends_with(".safetensors")
            || name == INDEX_FILE
            || name.ends_with(".bin")
            || name.starts_with('.');
        if !skip && e.path().is_file() {
            names.insert(name);
        }
    }
    for name in names {
        writer.copy_file(&base.join(&name), &name)?;
    }
    Ok(())
}
