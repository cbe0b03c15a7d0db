//! PEFT adapter directories in memory: the LoRA factors of each module, the tensors the adapter
//! replaces whole (trained biases, `modules_to_save`), and the ΔW each module adds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_checkpoint::{AtomicDir, Checkpoint, Dtype, Header, dtype};

use crate::config::{CONFIG_FILE, LoraConfig, WEIGHTS_FILE};
use crate::error::{Error, Result};
use crate::linalg::{matmul, transpose};
use crate::targets::{ModuleInfo, ModuleKind};

/// The key prefix PEFT writes (`PeftModel.base_model.model`).
pub const PREFIX: &str = "base_model.model.";

/// One adapted module: `ΔW = scaling · B · A` in PyTorch's `[out, in]` orientation (for an
/// embedding, `ΔW = scaling · (B · A)ᵀ`, `[num_embeddings, dim]`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraModule {
    /// `lora_A`: `[r, in]` (embeddings: `lora_embedding_A`, `[r, num_embeddings]`).
    pub a: Vec<f32>,
    /// `lora_B`: `[out, r]` (embeddings: `lora_embedding_B`, `[dim, r]`).
    pub b: Vec<f32>,
    /// The rank.
    pub r: usize,
    /// Columns of A.
    pub a_cols: usize,
    /// Rows of B.
    pub b_rows: usize,
    /// α/r or α/√r for this module.
    pub scaling: f64,
    /// DoRA's magnitude vector (`lora_magnitude_vector`, one value per output row).
    pub magnitude: Option<Vec<f32>>,
    /// `lora_B.bias` (`lora_bias: true`): added to the base bias times `scaling`.
    pub lora_bias: Option<Vec<f32>>,
    /// Whether this is an embedding adapter.
    pub embedding: bool,
}

impl LoraModule {
    /// A plain LoRA module (no DoRA magnitude, no LoRA bias) from `A [r, a_cols]` and
    /// `B [b_rows, r]`.
    pub fn new(
        a: Vec<f32>,
        b: Vec<f32>,
        [b_rows, r, a_cols]: [usize; 3],
        scaling: f64,
        embedding: bool,
    ) -> Self {
        Self {
            a,
            b,
            r,
            a_cols,
            b_rows,
            scaling,
            magnitude: None,
            lora_bias: None,
            embedding,
        }
    }

    /// `scaling · B · A` (embeddings: transposed to `[num_embeddings, dim]`), times `weight`.
    pub fn delta(&self, weight: f64) -> Vec<f32> {
        let s = (self.scaling * weight) as f32;
        let mut d = matmul(&self.b, &self.a, self.b_rows, self.r, self.a_cols);
        if self.embedding {
            d = transpose(&d, self.b_rows, self.a_cols);
        }
        d.iter_mut().for_each(|x| *x *= s);
        d
    }

    /// The shape of ΔW (`[out, in]`, embeddings `[num_embeddings, dim]`).
    pub fn delta_shape(&self) -> [usize; 2] {
        if self.embedding {
            [self.a_cols, self.b_rows]
        } else {
            [self.b_rows, self.a_cols]
        }
    }
}

/// A LoRA adapter: its config, its modules (by module name, without PEFT's prefix) and the
/// tensors it replaces whole (by checkpoint tensor name).
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Where it was read from (empty for adapters built in memory).
    pub path: PathBuf,
    /// `adapter_config.json`.
    pub config: LoraConfig,
    /// Adapted modules.
    pub modules: BTreeMap<String, LoraModule>,
    /// Tensors replaced whole: trained biases (`bias: all/lora_only`) and `modules_to_save`,
    /// by the base checkpoint's tensor name, with their shapes.
    pub replaced: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

#[derive(Default)]
struct Parts {
    a: Option<(Vec<usize>, Vec<f32>)>,
    b: Option<(Vec<usize>, Vec<f32>)>,
    magnitude: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    embedding: bool,
}

impl Adapter {
    /// Reads a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
    ///
    /// # Errors
    /// [`Error::Config`]/[`Error::Unsupported`] for the config, [`Error::Tensor`] for a factor
    /// that is missing, unpaired or of inconsistent shape, [`Error::Checkpoint`] for the file.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.join(CONFIG_FILE).is_file() {
            let hint = if dir.join("adapter_model.bin").is_file() {
                " (it has the legacy adapter_model.bin: convert it with PEFT, `PeftModel.from_pretrained(...).save_pretrained(dir)`, which writes safetensors)"
            } else {
                ""
            };
            return Err(Error::Config {
                path: dir.join(CONFIG_FILE),
                message: format!(
                    "not found: {} is not a PEFT adapter directory{hint}",
                    dir.display()
                ),
            });
        }
        let config = LoraConfig::read(dir)?;
        config.check_supported(&dir.join(CONFIG_FILE))?;
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(Error::Config {
                path: weights,
                message: "not found; PEFT adapters keep their weights in adapter_model.safetensors"
                    .into(),
            });
        }
        let ckpt = Checkpoint::open(&weights)?;
        let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
        let mut replaced = BTreeMap::new();
        for key in ckpt.names() {
            let view = ckpt.tensor(key)?;
            let shape = view.shape().to_vec();
            let values = view.to_f32()?;
            let name = key.strip_prefix(PREFIX).unwrap_or(key);
            let split = |suffix: &str| name.strip_suffix(suffix).map(str::to_owned);
            if let Some(m) = split(".lora_A.weight") {
                parts.entry(m).or_default().a = Some((shape, values));
            } else if let Some(m) = split(".lora_B.weight") {
                parts.entry(m).or_default().b = Some((shape, values));
            } else if let Some(m) = split(".lora_embedding_A") {
                let p = parts.entry(m).or_default();
                p.a = Some((shape, values));
                p.embedding = true;
            } else if let Some(m) = split(".lora_embedding_B") {
                let p = parts.entry(m).or_default();
                p.b = Some((shape, values));
                p.embedding = true;
            } else if let Some(m) =
                split(".lora_magnitude_vector").or_else(|| split(".lora_magnitude_vector.weight"))
            {
                parts.entry(m).or_default().magnitude = Some(values);
            } else if let Some(m) = split(".lora_B.bias") {
                parts.entry(m).or_default().bias = Some(values);
            } else if name.contains(".lora_") {
                return Err(Error::Tensor {
                    adapter: dir.to_owned(),
                    tensor: key.into(),
                    message:
                        "a LoRA tensor kiln does not know (a PEFT variant other than LoRA/DoRA?)"
                            .into(),
                });
            } else {
                replaced.insert(name.replace(".base_layer.", "."), (shape, values));
            }
        }
        let mut modules = BTreeMap::new();
        for (name, p) in parts {
            let bad = |message: String| Error::Tensor {
                adapter: dir.to_owned(),
                tensor: format!("{PREFIX}{name}"),
                message,
            };
            let (Some((ash, a)), Some((bsh, b))) = (p.a, p.b) else {
                return Err(bad(
                    "has only one of lora_A / lora_B; the adapter file is incomplete".into(),
                ));
            };
            if ash.len() != 2 || bsh.len() != 2 || ash[0] != bsh[1] {
                return Err(bad(format!(
                    "lora_A {ash:?} and lora_B {bsh:?} do not chain (need A [r, in] and B [out, r])"
                )));
            }
            let r = ash[0];
            let expected = config.rank_for(&name);
            if expected != r {
                return Err(bad(format!(
                    "rank {r} in the file, but the config says {expected} (r / rank_pattern)"
                )));
            }
            if let Some(m) = &p.magnitude
                && m.len() != bsh[0]
            {
                return Err(bad(format!(
                    "DoRA magnitude has {} values for {} output rows",
                    m.len(),
                    bsh[0]
                )));
            }
            if p.magnitude.is_some() && p.embedding {
                return Err(Error::Unsupported {
                    path: dir.join(CONFIG_FILE),
                    field: "use_dora".into(),
                    reason: format!("DoRA on the embedding `{name}` is not implemented"),
                });
            }
            let scaling = config.scaling_for(&name, r);
            modules.insert(
                name,
                LoraModule {
                    a,
                    b,
                    r,
                    a_cols: ash[1],
                    b_rows: bsh[0],
                    scaling,
                    magnitude: p.magnitude,
                    lora_bias: p.bias,
                    embedding: p.embedding,
                },
            );
        }
        if modules.is_empty() && replaced.is_empty() {
            return Err(Error::Config {
                path: weights,
                message: "holds no tensor".into(),
            });
        }
        Ok(Self {
            path: dir.to_owned(),
            config,
            modules,
            replaced,
        })
    }

    /// Writes the adapter as a PEFT directory at `out` (atomically: a temporary sibling renamed
    /// into place). Keys get PEFT's `base_model.model.` prefix and names.
    ///
    /// # Errors
    /// As [`AtomicDir::create`] (an existing `out` without `force`), I/O.
    pub fn save(&self, out: impl AsRef<Path>, force: bool) -> Result<PathBuf> {
        self.save_with_readme(out, force, "")
    }

    /// As [`save`](Self::save), with a `README.md` (when `readme` is not empty).
    ///
    /// # Errors
    /// As [`save`](Self::save).
    pub fn save_with_readme(
        &self,
        out: impl AsRef<Path>,
        force: bool,
        readme: &str,
    ) -> Result<PathBuf> {
        let out = out.as_ref();
        if !self.path.as_os_str().is_empty() {
            // never onto, into or around the directory this adapter was read from
            kiln_checkpoint::paths::check_output(
                out,
                &[("the adapter".to_owned(), self.path.clone())],
            )?;
        }
        let dir = AtomicDir::create(out, force)?;
        self.write_files(dir.path(), readme)?;
        Ok(dir.commit()?)
    }

    /// Writes `adapter_model.safetensors`, `adapter_config.json` and (when `readme` is not
    /// empty) `README.md` into `dir` — the staging directory of an [`AtomicDir`] the caller
    /// commits.
    ///
    /// # Errors
    /// I/O.
    pub fn write_files(&self, dir: &Path, readme: &str) -> Result<()> {
        if !readme.is_empty() {
            kiln_checkpoint::write_atomic(&dir.join("README.md"), readme.as_bytes())?;
        }
        let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        for (name, m) in &self.modules {
            let (ka, kb) = if m.embedding {
                ("lora_embedding_A", "lora_embedding_B")
            } else {
                ("lora_A.weight", "lora_B.weight")
            };
            tensors.push((format!("{PREFIX}{name}.{ka}"), vec![m.r, m.a_cols], &m.a));
            tensors.push((format!("{PREFIX}{name}.{kb}"), vec![m.b_rows, m.r], &m.b));
            if let Some(bias) = &m.lora_bias {
                tensors.push((
                    format!("{PREFIX}{name}.lora_B.bias"),
                    vec![bias.len()],
                    bias,
                ));
            }
            if let Some(mag) = &m.magnitude {
                tensors.push((
                    format!("{PREFIX}{name}.lora_magnitude_vector"),
                    vec![mag.len()],
                    mag,
                ));
            }
        }
        for (name, (shape, values)) in &self.replaced {
            // a trained bias of an adapted layer sits under its `base_layer` in PEFT's keys
            let key = match name.strip_suffix(".bias") {
                Some(module) if self.modules.contains_key(module) => {
                    format!("{PREFIX}{module}.base_layer.bias")
                }
                _ => format!("{PREFIX}{name}"),
            };
            tensors.push((key, shape.clone(), values));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let specs: Vec<(&str, Dtype, &[usize])> = tensors
            .iter()
            .map(|(k, s, _)| (k.as_str(), Dtype::F32, s.as_slice()))
            .collect();
        let mut metadata = BTreeMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        let mut bytes = Header::encode(&metadata, &specs);
        for (_, _, values) in &tensors {
            let start = bytes.len();
            bytes.resize(start + values.len() * 4, 0);
            dtype::encode_f32(values, Dtype::F32, &mut bytes[start..])?;
        }
        kiln_checkpoint::write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
        self.config.write(dir)?;
        Ok(())
    }

    /// Number of LoRA parameters (factors, DoRA magnitudes, LoRA biases) plus replaced tensors:
    /// what training this adapter updates.
    pub fn trainable_parameters(&self) -> usize {
        let lora: usize = self
            .modules
            .values()
            .map(|m| {
                m.a.len()
                    + m.b.len()
                    + m.magnitude.as_ref().map_or(0, Vec::len)
                    + m.lora_bias.as_ref().map_or(0, Vec::len)
            })
            .sum();
        // tied tensors (BERT's `cls.predictions.bias` and `decoder.bias`) are saved twice by
        // PEFT but are one parameter
        let mut seen: Vec<&(Vec<usize>, Vec<f32>)> = Vec::new();
        let mut whole = 0;
        for t in self.replaced.values() {
            if !seen.contains(&t) {
                whole += t.1.len();
                seen.push(t);
            }
        }
        lora + whole
    }

    /// Whether the replaced tensor `name` is a bit-identical copy of another replaced tensor (a
    /// tied parameter PEFT saved under both names).
    pub fn is_tied_copy(&self, name: &str) -> bool {
        self.replaced.get(name).is_some_and(|t| {
            self.replaced
                .iter()
                .any(|(other, u)| other != name && u == t)
        })
    }

    /// Checks that the adapter's modules fit a base module and returns, per adapted module,
    /// the base module it applies to.
    ///
    /// # Errors
    /// [`Error::Tensor`] naming the module when the base has no such module or its shape differs
    /// (an adapter for another architecture or size).
    pub fn resolve<'a>(
        &self,
        find: impl Fn(&str) -> Option<&'a ModuleInfo>,
    ) -> Result<BTreeMap<String, &'a ModuleInfo>> {
        let mut out = BTreeMap::new();
        for (name, m) in &self.modules {
            let bad = |message: String| Error::Tensor {
                adapter: self.path.clone(),
                tensor: format!("{PREFIX}{name}"),
                message,
            };
            let info = find(name).ok_or_else(|| {
                bad(format!(
                    "the base model has no module `{name}` (no tensor `{name}.weight`); is the adapter for another architecture?"
                ))
            })?;
            let (out_f, in_f) = info.out_in();
            let [d0, d1] = m.delta_shape();
            if m.embedding != (info.kind == ModuleKind::Embedding) || (d0, d1) != (out_f, in_f) {
                return Err(bad(format!(
                    "ΔW would be {:?} but the base module is {:?} ({out_f} × {in_f} as [out, in]); the adapter is for another model size",
                    [d0, d1],
                    info.kind
                )));
            }
            out.insert(name.clone(), info);
        }
        Ok(out)
    }
}

/// Adds `weight · ΔW` of `module` to the stored base weight `w` (shape `info.shape`), applying
/// DoRA's row normalisation when the module has a magnitude; in f32 throughout. Returns DoRA's
/// row norms `‖W + ΔW‖` (what [`unmerge_module`] needs), `None` for plain LoRA.
pub fn merge_module(
    w: &mut [f32],
    info: &ModuleInfo,
    module: &LoraModule,
    weight: f64,
) -> Option<Vec<f32>> {
    let delta = module.delta(weight);
    let [rows, cols] = info.shape;
    match (info.kind, &module.magnitude) {
        (ModuleKind::Conv1D, None) => {
            // stored [in, out]; delta is [out, in]
            let (out_f, in_f) = (cols, rows);
            for o in 0..out_f {
                for i in 0..in_f {
                    w[i * cols + o] += delta[o * in_f + i];
                }
            }
        }
        (_, None) => w.iter_mut().zip(&delta).for_each(|(x, d)| *x += d),
        (kind, Some(mag)) => {
            // DoRA: W' = m / ‖W + ΔW‖_row · (W + ΔW), rows = output features
            let mut oi = if kind == ModuleKind::Conv1D {
                transpose(w, rows, cols)
            } else {
                w.to_vec()
            };
            let (out_f, in_f) = info.out_in();
            oi.iter_mut().zip(&delta).for_each(|(x, d)| *x += d);
            let mut norms = Vec::with_capacity(out_f);
            for o in 0..out_f {
                let row = &mut oi[o * in_f..(o + 1) * in_f];
                let norm = row
                    .iter()
                    .map(|x| f64::from(*x) * f64::from(*x))
                    .sum::<f64>()
                    .sqrt();
                let f = (f64::from(mag[o]) / norm) as f32;
                row.iter_mut().for_each(|x| *x *= f);
                norms.push(norm as f32);
            }
            let back = if kind == ModuleKind::Conv1D {
                transpose(&oi, out_f, in_f)
            } else {
                oi
            };
            w.copy_from_slice(&back);
            return Some(norms);
        }
    }
    None
}

/// Undoes [`merge_module`]: subtracts `weight · ΔW`, in f32. A DoRA merge cannot be undone from
/// the merged weight alone (its rows are rescaled to the magnitudes, which loses `‖W + ΔW‖`), so
/// it needs the row norms [`merge_module`] returned — PEFT keeps them in a cache for the same
/// reason.
///
/// # Errors
/// [`Error::Invalid`] for a DoRA module without its norms.
pub fn unmerge_module(
    w: &mut [f32],
    info: &ModuleInfo,
    module: &LoraModule,
    weight: f64,
    dora_norms: Option<&[f32]>,
) -> Result<()> {
    let delta = module.delta(weight);
    let [rows, cols] = info.shape;
    let mut oi = if info.kind == ModuleKind::Conv1D {
        transpose(w, rows, cols)
    } else {
        w.to_vec()
    };
    let (out_f, in_f) = info.out_in();
    if let Some(mag) = &module.magnitude {
        let norms = dora_norms.ok_or_else(|| {
            Error::Invalid(
                "unmerging DoRA needs the row norms the merge returned (the merged weight alone does not determine them)".into(),
            )
        })?;
        for o in 0..out_f {
            let f = norms[o] / mag[o];
            oi[o * in_f..(o + 1) * in_f]
                .iter_mut()
                .for_each(|x| *x *= f);
        }
    }
    for (x, d) in oi.iter_mut().zip(&delta) {
        *x -= d;
    }
    let back = if info.kind == ModuleKind::Conv1D {
        transpose(&oi, out_f, in_f)
    } else {
        oi
    };
    w.copy_from_slice(&back);
    Ok(())
}
