//! LoRA on kiln-models' burn modules: attach adapters chosen by a PEFT [`LoraConfig`] (targeting,
//! per-module ranks and α, inits, dropout, DoRA, trainable biases), load a PEFT adapter's factors
//! into them, and export the factors as a PEFT [`Adapter`].
//!
//! A linear module's adapter is a [`LoraBranch`] of kiln-models' [`Dense`] layer, computed on the
//! layer's input as PEFT computes it (`x·W + s·dropout(x)·A·B`, with `a = lora_Aᵀ [in, r]` and
//! `b = lora_Bᵀ [r, out]`), so the frozen base weight gets no gradient and the step costs two
//! thin matmuls per adapter. Embedding adapters use burn 0.22's weight reparameterisation
//! (`W + s·a·b`; PEFT applies no dropout to them either).
//!
//! Module names are Hugging Face's ([`DenseLayers`]): GPT-2's equal kiln's parameter paths
//! (`transformer.h.0.attn.c_attn`); BERT's `query`, `key` and `value` are column ranges of kiln's
//! fused `qkv`, each with its own adapter — so adapters trained here are PEFT adapters of the
//! Hugging Face model, for either family.
//!
//! [`Dense`]: kiln_models::dense::Dense
//!
//! ```
//! use kiln_lora::{LoraConfig, Modules, train};
//! use kiln_models::burn::prelude::*;
//! use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
//!
//! let device = Device::flex().autodiff();
//! let gpt2 = Gpt2LmHead::init(&Gpt2Config::tiny(), &device)?;
//! let config = LoraConfig::new(4, 8.0, Modules::List(vec!["c_attn".into(), "c_fc".into()]));
//! let (model, report) = train::attach(gpt2, &config, 0)?;
//! println!("{report}"); // trainable params: … || all params: … || trainable%: …
//! // ... train `model` (only the LoRA factors have gradients) ...
//! let adapter = train::export(&model, &config)?;
//! assert_eq!(adapter.modules.len(), 2 * Gpt2Config::tiny().n_layer);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kiln_models::burn::module::{
    LoraAdapter, Module, ModuleMapper, ModuleVisitor, Param, Reparameterizer,
};
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::dense::{DenseLayers, DenseView, LoraBranch};

use crate::adapter::{Adapter, LoraModule};
use crate::config::{Bias, LoraConfig};
use crate::error::{Error, Result};
use crate::init::{Init, init_factors};
use crate::linalg::transpose;
use crate::targets::{Inventory, ModuleInfo, ModuleKind, Targeting};

/// Every float parameter of a module: path, shape, trainable, and (when asked) its values.
struct Walk {
    path: Vec<String>,
    values: bool,
    out: Vec<(String, Vec<usize>, bool, Vec<f32>)>,
}

impl ModuleVisitor for Walk {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        let t = p.val();
        let (shape, trainable) = (t.dims().to_vec(), t.is_require_grad());
        let values = if self.values { to_vec(t) } else { Vec::new() };
        self.out
            .push((self.path.join("."), shape, trainable, values));
    }
}

/// Paths, shapes and trainable flags (`values`: with the values too).
pub(crate) fn walk_with<M: Module>(
    model: &M,
    values: bool,
) -> Vec<(String, Vec<usize>, bool, Vec<f32>)> {
    let mut w = Walk {
        path: Vec::new(),
        values,
        out: Vec::new(),
    };
    model.visit(&mut w);
    w.out
}

/// Every float parameter of `model`: its path (LoRA factors of a linear layer as `….lora.0.a` /
/// `.b` / `.magnitude`, of an embedding as `….weight.lora.a` / `.b`), shape
/// and whether it trains.
pub fn parameters<M: Module>(model: &M) -> Vec<(String, Vec<usize>, bool)> {
    walk_with(model, false)
        .into_iter()
        .map(|(n, s, t, _)| (n, s, t))
        .collect()
}

/// The modules of a kiln model as kiln-lora sees checkpoint modules, by their Hugging Face
/// names: every linear module a [`Dense`](kiln_models::dense::Dense) layer holds (stored `[in, out]`, like GPT-2's
/// `Conv1D`; BERT's `query`/`key`/`value` are column ranges of kiln's fused `qkv`) and every
/// embedding table (`[num_embeddings, dim]`).
pub fn inventory<M: Module + DenseLayers>(model: &M) -> Inventory {
    let mut modules = Vec::new();
    let mut m = model.clone();
    m.visit_dense(&mut |_, views, dense| {
        let inp = dense.dims()[0];
        for v in views {
            let last = v.name.rsplit('.').next().unwrap_or(&v.name);
            let (kind, shape) = if ["lm_head", "decoder", "embed_out"].contains(&last) {
                (ModuleKind::Output, [v.len, inp])
            } else {
                (ModuleKind::Conv1D, [inp, v.len])
            };
            modules.push(ModuleInfo {
                name: v.name.clone(),
                kind,
                shape,
            });
        }
    });
    let shapes: BTreeMap<String, Vec<usize>> = parameters(model)
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    for (kiln, hf) in model.embedding_names() {
        if let Some(shape) = shapes.get(&format!("{kiln}.weight")) {
            modules.push(ModuleInfo {
                name: hf,
                kind: ModuleKind::Embedding,
                shape: [shape[0], shape[1]],
            });
        }
    }
    Inventory::from_modules(modules)
}

/// What [`attach`] did, with PEFT's `print_trainable_parameters` line as its `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachReport {
    /// Adapted modules (Hugging Face names) with their ranks.
    pub modules: BTreeMap<String, usize>,
    /// Parameters with gradients (factors, DoRA magnitudes and trainable biases).
    pub trainable: usize,
    /// All parameters, factors included.
    pub total: usize,
}

impl fmt::Display for AttachReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            self.trainable,
            self.total,
            100.0 * self.trainable as f64 / self.total.max(1) as f64
        )
    }
}

struct Plan {
    r: usize,
    scaling: f64,
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// A per-module seed: the run's seed mixed with the module's name (FNV-1a), so modules of equal
/// shape start from different factors, as PEFT's draws do.
fn module_seed(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Row norms of `W + s·B·A` (`[out, in]`, f32 accumulated in f64): DoRA's initial magnitude.
fn dora_norms(w_oi: &[f32], a: &[f32], b: &[f32], [out, r, inp]: [usize; 3], s: f64) -> Vec<f32> {
    let ba = crate::linalg::matmul(b, a, out, r, inp);
    (0..out)
        .map(|o| {
            let row = (0..inp)
                .map(|i| {
                    let v = f64::from(w_oi[o * inp + i]) + s * f64::from(ba[o * inp + i]);
                    v * v
                })
                .sum::<f64>();
            row.sqrt() as f32
        })
        .collect()
}

/// Embedding LoRA through burn 0.22's weight reparameterisation (`W + s·a·b`; PEFT applies no
/// dropout to embedding adapters either), and the freezing of everything that does not train.
struct Freeze {
    /// kiln path of an embedding table → its plan.
    embeddings: BTreeMap<String, Plan>,
    trainable_biases: BTreeSet<String>,
    seed: u64,
}

impl Reparameterizer for &mut Freeze {
    type Reparam = LoraAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<LoraAdapter>) {
        if path.contains(".lora.") || (D == 1 && self.trainable_biases.contains(path)) {
            return (param, None);
        }
        let plan = match path
            .strip_suffix(".weight")
            .and_then(|m| self.embeddings.get(m))
        {
            Some(p) if D == 2 => p,
            _ => return (param.set_require_grad(false), None),
        };
        let base = param.base();
        let device = base.device();
        let dims = base.dims();
        let (rows, cols, r) = (dims[0], dims[1], plan.r);
        // PEFT: lora_embedding_A = 0 [r, num], lora_embedding_B ~ N(0, 1) [dim, r]; burn's
        // a [num, r] = Aᵀ, b [r, dim] = Bᵀ.
        let b = crate::spectrum::gaussian(
            cols,
            r,
            ((cols * r) as f64).sqrt(),
            module_seed(self.seed, path),
        );
        let adapter = LoraAdapter {
            a: Param::from_tensor(Tensor::<2>::zeros([rows, r], &device)),
            b: Param::from_tensor(Tensor::<2>::from_data(
                TensorData::new(transpose(&b, cols, r), [r, cols]),
                &device,
            )),
            scale: plan.scaling,
        };
        (param.set_require_grad(false), Some(adapter))
    }
}

/// Attaches LoRA adapters to `model` as `config` asks: PEFT's targeting on the model's Hugging
/// Face module names ([`inventory`]), `r`/`rank_pattern`, `lora_alpha`/`alpha_pattern`, rsLoRA,
/// `lora_dropout` on the adapter input, DoRA (`use_dora`: a trainable magnitude per output
/// column, initialised to the column norms as PEFT does), `init_lora_weights` (`true`,
/// `"gaussian"`, `"pissa"`, `"olora"`; random inits drawn from `seed` and the module's name) and
/// `bias` (`all` / `lora_only` biases stay trainable). Linear modules get a [`LoraBranch`] on
/// their [`Dense`](kiln_models::dense::Dense) layer (computed on the layer input: `x·W + s·dropout(x)·A·B`); embeddings use
/// burn's weight reparameterisation. Every other parameter is frozen, so an optimiser keeps
/// state only for what trains.
///
/// # Errors
/// [`Error::NoMatch`] when the targets select nothing (listing the modules),
/// [`Error::Unsupported`] for `bias: lora_only` on part of a fused layer (BERT's `qkv` with only
/// `query` targeted: a bias tensor trains whole or not at all), [`Error::Invalid`] for a rank
/// larger than a matrix, a dropout outside `[0, 1)` or an unknown init.
pub fn attach<M: Module + DenseLayers>(
    model: M,
    config: &LoraConfig,
    seed: u64,
) -> Result<(M, AttachReport)> {
    let path = std::path::PathBuf::from("<LoraConfig>");
    config.check_supported(&path)?;
    if !(0.0..1.0).contains(&config.lora_dropout) {
        return Err(Error::Invalid(format!(
            "lora_dropout {} is not a probability in [0, 1)",
            config.lora_dropout
        )));
    }
    let init = match &config.init_lora_weights {
        serde_json::Value::Bool(true) => Init::Default,
        serde_json::Value::String(s) => s.parse()?,
        other => {
            return Err(Error::Invalid(format!(
                "init_lora_weights {other} is not implemented for training (true, \"gaussian\", \"pissa\", \"olora\")"
            )));
        }
    };
    let inventory = inventory(&model);
    let chosen = Targeting::new(config)?.select(&inventory)?;
    let mut plans = BTreeMap::new();
    let mut embedding_plans = BTreeMap::new();
    let hf_to_kiln: BTreeMap<String, String> = model
        .embedding_names()
        .into_iter()
        .map(|(k, h)| (h, k))
        .collect();
    for m in &chosen {
        let r = config.rank_for(&m.name);
        let (out, inp) = m.out_in();
        if r == 0 || r > out.min(inp) {
            return Err(Error::Invalid(format!(
                "rank {r} for `{}` ({out} × {inp}): a LoRA rank must be between 1 and the smaller dimension",
                m.name
            )));
        }
        let plan = Plan {
            r,
            scaling: config.scaling_for(&m.name, r),
        };
        if m.kind == ModuleKind::Embedding {
            if config.use_dora {
                return Err(Error::Unsupported {
                    path,
                    field: "use_dora".into(),
                    reason: format!(
                        "DoRA on the embedding `{}` is not implemented; exclude embeddings from target_modules",
                        m.name
                    ),
                });
            }
            let kiln = hf_to_kiln
                .get(&m.name)
                .cloned()
                .unwrap_or_else(|| m.name.clone());
            embedding_plans.insert(kiln, plan);
        } else {
            plans.insert(m.name.clone(), plan);
        }
    }
    let mut model = model;
    let mut error: Option<Error> = None;
    let mut trainable_biases = BTreeSet::new();
    let mut modules: BTreeMap<String, usize> = BTreeMap::new();
    model.visit_dense(&mut |path, views, dense| {
        if error.is_some() {
            return;
        }
        let planned: Vec<&DenseView> = views.iter().filter(|v| plans.contains_key(&v.name)).collect();
        if dense.bias.is_some() {
            let trains = match config.bias {
                Bias::None => false,
                Bias::All => true,
                Bias::LoraOnly => !planned.is_empty(),
            };
            if config.bias == Bias::LoraOnly && !planned.is_empty() && planned.len() < views.len() {
                error = Some(Error::Unsupported {
                    path: std::path::PathBuf::from("<LoraConfig>"),
                    field: "bias".into(),
                    reason: format!(
                        "`lora_only` trains the bias of the adapted modules, but kiln's `{path}` fuses {} into one layer whose bias trains whole; target all of them or use bias \"none\"/\"all\"",
                        views.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                });
                return;
            }
            if trains {
                trainable_biases.insert(format!("{path}.bias"));
            }
        }
        if planned.is_empty() {
            return;
        }
        let weight = dense.weight.val();
        let device = weight.device();
        let [inp, out] = dense.dims();
        let mut w = to_vec(weight); // [in, out]
        let mut residual_changed = false;
        for view in planned {
            let plan = &plans[&view.name];
            let (start, len, r) = (view.start, view.len, plan.r);
            // the module's weight as PyTorch stores it, [len, in]
            let w_oi: Vec<f32> = (0..len)
                .flat_map(|o| (0..inp).map(move |i| (i, o)))
                .map(|(i, o)| w[i * out + start + o])
                .collect();
            let f = match init_factors(
                init,
                &w_oi,
                [len, inp],
                r,
                plan.scaling,
                module_seed(seed, &view.name),
                &view.name,
            ) {
                Ok(f) => f,
                Err(e) => {
                    error = Some(e);
                    return;
                }
            };
            let base_oi = match f.residual {
                Some(res) => {
                    for o in 0..len {
                        for i in 0..inp {
                            w[i * out + start + o] = res[o * inp + i];
                        }
                    }
                    residual_changed = true;
                    res
                }
                None => w_oi,
            };
            let magnitude = config.use_dora.then(|| {
                let m = dora_norms(&base_oi, &f.a, &f.b, [len, r, inp], plan.scaling);
                Tensor::<1>::from_data(TensorData::new(m, [len]), &device)
            });
            let a = Tensor::<2>::from_data(TensorData::new(transpose(&f.a, r, inp), [inp, r]), &device);
            let b = Tensor::<2>::from_data(TensorData::new(transpose(&f.b, len, r), [r, len]), &device);
            dense.lora.push(LoraBranch::new(
                a,
                b,
                plan.scaling,
                start,
                config.lora_dropout,
                magnitude,
            ));
            modules.insert(view.name.clone(), r);
        }
        if residual_changed {
            let trainable = dense.weight.val().is_require_grad();
            dense.weight = Param::from_tensor(
                Tensor::<2>::from_data(TensorData::new(w, [inp, out]), &device)
                    .set_require_grad(trainable),
            );
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    for (kiln, plan) in &embedding_plans {
        let hf = model
            .embedding_names()
            .into_iter()
            .find(|(k, _)| k == kiln)
            .map_or_else(|| kiln.clone(), |(_, h)| h);
        modules.insert(hf, plan.r);
    }
    let mut freeze = Freeze {
        embeddings: embedding_plans,
        trainable_biases,
        seed,
    };
    let model = model.apply_reparameterization(&mut freeze);
    let params = parameters(&model);
    let count = |shape: &Vec<usize>| shape.iter().product::<usize>();
    let report = AttachReport {
        modules,
        trainable: params.iter().filter(|p| p.2).map(|p| count(&p.1)).sum(),
        total: params.iter().map(|p| count(&p.1)).sum(),
    };
    Ok((model, report))
}

/// Reads the factors out of a model [`attach`] adapted (after training) as a PEFT adapter with
/// `config` (the one it was attached with), by Hugging Face module names: `lora_A = aᵀ`,
/// `lora_B = bᵀ`, DoRA magnitudes, trainable biases as the tensors the adapter replaces (BERT's
/// fused `qkv` bias split into `query`/`key`/`value`).
///
/// # Errors
/// [`Error::Invalid`] when the model carries no adapter.
pub fn export<M: Module + DenseLayers>(model: &M, config: &LoraConfig) -> Result<Adapter> {
    let trainable: BTreeSet<String> = parameters(model)
        .into_iter()
        .filter(|p| p.2)
        .map(|p| p.0)
        .collect();
    let mut modules = BTreeMap::new();
    let mut replaced = BTreeMap::new();
    let mut error = None;
    let mut m = model.clone();
    m.visit_dense(&mut |path, views, dense| {
        let inp = dense.dims()[0];
        for branch in &dense.lora {
            let Some(view) = views
                .iter()
                .find(|v| v.start == branch.start && v.len == branch.len())
            else {
                error = Some(Error::Invalid(format!(
                    "`{path}` carries an adapter on columns {}..{} that is none of its modules",
                    branch.start,
                    branch.start + branch.len()
                )));
                return;
            };
            let (r, len) = (branch.rank(), branch.len());
            let mut module = LoraModule::new(
                transpose(&to_vec(branch.a.val()), inp, r),
                transpose(&to_vec(branch.b.val()), r, len),
                [len, r, inp],
                branch.scale,
                false,
            );
            module.magnitude = branch.magnitude.as_ref().map(|m| to_vec(m.val()));
            modules.insert(view.name.clone(), module);
        }
        if let Some(bias) = dense.bias.as_ref()
            && trainable.contains(&format!("{path}.bias"))
        {
            let values = to_vec(bias.val());
            for v in views {
                replaced.insert(
                    format!("{}.bias", v.name),
                    (vec![v.len], values[v.start..v.start + v.len].to_vec()),
                );
            }
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    let tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = walk_with(model, true)
        .into_iter()
        .filter(|(name, ..)| name.contains(".weight.lora."))
        .map(|(name, shape, _, values)| (name, (shape, values)))
        .collect();
    for (kiln, hf) in model.embedding_names() {
        let (Some((shape, a)), Some((_, b))) = (
            tensors.get(&format!("{kiln}.weight.lora.a")),
            tensors.get(&format!("{kiln}.weight.lora.b")),
        ) else {
            continue;
        };
        let (rows, r) = (shape[0], shape[1]);
        let cols = b.len() / r;
        modules.insert(
            hf.clone(),
            LoraModule::new(
                transpose(a, rows, r),
                transpose(b, r, cols),
                [cols, r, rows],
                config.scaling_for(&hf, r),
                true,
            ),
        );
    }
    if modules.is_empty() {
        return Err(Error::Invalid(
            "the model carries no LoRA adapter; attach one with kiln_lora::train::attach".into(),
        ));
    }
    Ok(Adapter {
        path: std::path::PathBuf::new(),
        config: config.clone(),
        modules,
        replaced,
    })
}

/// Sets the factors of a model [`attach`] adapted to those of a PEFT adapter (to continue
/// training it, or to run it), by Hugging Face module names: `a = lora_Aᵀ`, `b = lora_Bᵀ`, DoRA
/// magnitudes, and the tensors the adapter replaces (trained biases).
///
/// # Errors
/// [`Error::Tensor`] when the adapter has a module the model's adapters lack or a shape differs,
/// or replaces a tensor of rank ≠ 1 (`modules_to_save`).
pub fn load_factors<M: Module + DenseLayers>(model: M, adapter: &Adapter) -> Result<M> {
    let fail = |tensor: &str, message: String| Error::Tensor {
        adapter: adapter.path.clone(),
        tensor: tensor.to_owned(),
        message,
    };
    for (name, (shape, _)) in &adapter.replaced {
        if shape.len() != 1 {
            // `modules_to_save` (whole embeddings, heads): not a trained bias of an adapted layer
            return Err(fail(
                name,
                format!(
                    "the adapter replaces this {shape:?} tensor whole (modules_to_save), which a live model cannot take yet; merge the adapter into the checkpoint instead (kiln lora merge)"
                ),
            ));
        }
    }
    let mut model = model;
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut error = None;
    model.visit_dense(&mut |_, views, dense| {
        let [inp, _] = dense.dims();
        for branch in dense.lora.iter_mut() {
            let Some(view) = views
                .iter()
                .find(|v| v.start == branch.start && v.len == branch.len())
            else {
                continue;
            };
            let Some(m) = adapter.modules.get(&view.name) else {
                continue;
            };
            used.insert(view.name.clone());
            let (r, len) = (branch.rank(), branch.len());
            if [m.r, m.a_cols, m.b_rows] != [r, inp, len] || m.embedding {
                error = Some(fail(
                    &view.name,
                    format!(
                        "rank {} with A [{}, {}] and B [{}, {}] in the adapter; the model's adapter has rank {r} on a {len} × {inp} module",
                        m.r, m.r, m.a_cols, m.b_rows, m.r
                    ),
                ));
                return;
            }
            let device = branch.a.val().device();
            let set2 = |p: &mut Param<Tensor<2>>, v: Vec<f32>, shape: [usize; 2]| {
                let trainable = p.val().is_require_grad();
                *p = Param::from_tensor(
                    Tensor::<2>::from_data(TensorData::new(v, shape), &device)
                        .set_require_grad(trainable),
                );
            };
            set2(&mut branch.a, transpose(&m.a, r, inp), [inp, r]);
            set2(&mut branch.b, transpose(&m.b, len, r), [r, len]);
            match (&mut branch.magnitude, &m.magnitude) {
                (Some(p), Some(v)) if v.len() == len => {
                    let trainable = p.val().is_require_grad();
                    *p = Param::from_tensor(
                        Tensor::<1>::from_data(TensorData::new(v.clone(), [len]), &device)
                            .set_require_grad(trainable),
                    );
                }
                (None, None) => {}
                (mine, _) => {
                    error = Some(fail(
                        &view.name,
                        format!(
                            "the adapter {} a DoRA magnitude of the right length and the model's adapter {} one; attach the adapter's own config",
                            if m.magnitude.is_some() { "has" } else { "lacks" },
                            if mine.is_some() { "has" } else { "lacks" },
                        ),
                    ));
                    return;
                }
            }
        }
        if let Some(bias) = dense.bias.as_mut() {
            let names: Vec<(&DenseView, &[f32])> = views
                .iter()
                .filter_map(|v| {
                    let t = adapter.replaced.get(&format!("{}.bias", v.name))?;
                    Some((v, t.1.as_slice()))
                })
                .collect();
            if names.is_empty() {
                return;
            }
            let mut values = to_vec(bias.val());
            for (v, new) in names {
                used.insert(format!("{}.bias", v.name));
                if new.len() != v.len {
                    error = Some(fail(
                        &format!("{}.bias", v.name),
                        format!("{} values in the adapter, {} in the model", new.len(), v.len),
                    ));
                    return;
                }
                values[v.start..v.start + v.len].copy_from_slice(new);
            }
            let device = bias.val().device();
            let trainable = bias.val().is_require_grad();
            let n = values.len();
            *bias = Param::from_tensor(
                Tensor::<1>::from_data(TensorData::new(values, [n]), &device)
                    .set_require_grad(trainable),
            );
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    // embeddings (burn's reparameterisation, by kiln path)
    let kiln_of: BTreeMap<String, String> = model
        .embedding_names()
        .into_iter()
        .map(|(k, h)| (h, k))
        .collect();
    let mut values: BTreeMap<String, (Vec<f32>, [usize; 2])> = BTreeMap::new();
    for (name, m) in &adapter.modules {
        if used.contains(name) {
            continue;
        }
        let Some(kiln) = kiln_of.get(name).filter(|_| m.embedding) else {
            return Err(fail(
                name,
                "the model has no such adapter factor; attach the adapter's config first".into(),
            ));
        };
        values.insert(
            format!("{kiln}.weight.lora.a"),
            (transpose(&m.a, m.r, m.a_cols), [m.a_cols, m.r]),
        );
        values.insert(
            format!("{kiln}.weight.lora.b"),
            (transpose(&m.b, m.b_rows, m.r), [m.r, m.b_rows]),
        );
    }
    if let Some(name) = adapter.replaced.keys().find(|n| !used.contains(*n)) {
        return Err(fail(
            name,
            "the adapter replaces a tensor that is no bias of the model's linear modules".into(),
        ));
    }
    set_values(model, values, &adapter.path)
}

/// Replaces the values of named parameters (flattened, with the element count `shape[0] ·
/// shape[1]`), keeping their trainable flags.
///
/// # Errors
/// [`Error::Tensor`] (naming `source`) for a name the model lacks or a count that differs.
pub(crate) fn set_values<M: Module>(
    model: M,
    values: BTreeMap<String, (Vec<f32>, [usize; 2])>,
    source: &std::path::Path,
) -> Result<M> {
    let present: Vec<String> = parameters(&model).into_iter().map(|p| p.0).collect();
    if let Some(missing) = values.keys().find(|k| !present.contains(k)) {
        return Err(Error::Tensor {
            adapter: source.to_owned(),
            tensor: missing.clone(),
            message: "the model has no such adapter factor; attach the adapter's config first"
                .into(),
        });
    }
    let mut set = SetFactors {
        path: Vec::new(),
        values,
        error: None,
        adapter: source.to_owned(),
    };
    let model = model.map(&mut set);
    match set.error {
        Some(e) => Err(e),
        None => Ok(model),
    }
}

struct SetFactors {
    path: Vec<String>,
    values: BTreeMap<String, (Vec<f32>, [usize; 2])>,
    error: Option<Error>,
    adapter: std::path::PathBuf,
}

impl ModuleMapper for SetFactors {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        let Some((v, shape)) = self.values.remove(&name) else {
            return param;
        };
        let error = &mut self.error;
        let adapter = &self.adapter;
        param.map(|t| {
            let n: usize = t.dims().iter().product();
            if n != shape[0] * shape[1] {
                *error = Some(Error::Tensor {
                    adapter: adapter.clone(),
                    tensor: name.clone(),
                    message: format!(
                        "{} values in the adapter, shape {:?} in the model",
                        shape[0] * shape[1],
                        t.dims()
                    ),
                });
                return t;
            }
            let trainable = t.is_require_grad();
            Tensor::<1>::from_data(TensorData::new(v, [shape[0] * shape[1]]), &t.device())
                .reshape(t.shape())
                .set_require_grad(trainable)
        })
    }
}
