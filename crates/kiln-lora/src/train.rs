//! LoRA on kiln-models' burn modules: attach adapters chosen by a PEFT [`LoraConfig`] (targeting,
//! per-module ranks and α, inits, trainable biases), load a PEFT adapter's factors into them, and
//! export the factors as a PEFT [`Adapter`] — built on burn 0.22's reparameterisation
//! (`Param` = frozen base + `scale · a @ b`, with `a = lora_Aᵀ [in, r]`, `b = lora_Bᵀ [r, out]`).
//!
//! Module names are the model's burn parameter paths, which for kiln-models' GPT-2 equal the
//! Hugging Face names (`transformer.h.0.attn.c_attn`), so adapters trained here are PEFT adapters
//! of the Hugging Face model. (kiln-models' BERT fuses `query/key/value` into one `qkv` layer, so
//! its adapters are named after kiln's layers and are not loadable by PEFT.)
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

use std::collections::BTreeMap;
use std::fmt;

use kiln_models::burn::module::{
    LoraAdapter, Module, ModuleMapper, ModuleVisitor, Param, Reparameterizer,
};
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;

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

/// Every float parameter of `model`: its path (LoRA factors as `….weight.lora.a` / `.b`), shape
/// and whether it trains.
pub fn parameters<M: Module>(model: &M) -> Vec<(String, Vec<usize>, bool)> {
    walk_with(model, false)
        .into_iter()
        .map(|(n, s, t, _)| (n, s, t))
        .collect()
}

/// The modules of a burn model as kiln-lora sees checkpoint modules: burn stores every linear
/// weight `[in, out]` (like GPT-2's `Conv1D`), embeddings `[num_embeddings, dim]`.
pub fn inventory<M: Module>(model: &M) -> Inventory {
    let modules = parameters(model)
        .into_iter()
        .filter(|(name, shape, _)| {
            shape.len() == 2 && name.ends_with(".weight") && !name.contains(".lora.")
        })
        .map(|(name, shape, _)| {
            let module = name.trim_end_matches(".weight").to_owned();
            let last = module.rsplit('.').next().unwrap_or(&module);
            let kind = if last.contains("embed") || last == "wte" || last == "wpe" {
                ModuleKind::Embedding
            } else if ["lm_head", "decoder", "embed_out"].contains(&last) {
                ModuleKind::Output
            } else {
                ModuleKind::Conv1D
            };
            ModuleInfo {
                name: module,
                kind,
                shape: [shape[0], shape[1]],
            }
        })
        .collect();
    Inventory::from_modules(modules)
}

/// What [`attach`] did, with PEFT's `print_trainable_parameters` line as its `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachReport {
    /// Adapted modules with their ranks.
    pub modules: BTreeMap<String, usize>,
    /// Parameters with gradients (factors and trainable biases).
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
    embedding: bool,
}

struct PeftLora {
    plans: BTreeMap<String, Plan>,
    init: Init,
    seed: u64,
    trainable_biases: Vec<String>,
    error: Option<Error>,
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

impl Reparameterizer for &mut PeftLora {
    type Reparam = LoraAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<LoraAdapter>) {
        if D == 1 && self.trainable_biases.iter().any(|b| b == path) {
            return (param, None);
        }
        let module = path.strip_suffix(".weight");
        let plan = match module.and_then(|m| self.plans.get(m)) {
            Some(p) if D == 2 && self.error.is_none() => p,
            _ => return (param.set_require_grad(false), None),
        };
        let base = param.base();
        let device = base.device();
        let dims = base.dims();
        let (rows, cols) = (dims[0], dims[1]);
        let r = plan.r;
        // PEFT's factors of the stored weight: linear [in, out] → A [r, in], B [out, r] with
        // W_oi = Wᵀ; embedding [num, dim] → lora_embedding_A [r, num], _B [dim, r].
        let stored = to_vec(base.clone());
        let (a_t, b_t, residual) = if plan.embedding {
            // PEFT: A = 0, B ~ N(0, 1)
            let b = crate::spectrum::gaussian(
                cols,
                r,
                ((cols * r) as f64).sqrt(),
                self.seed ^ rows as u64,
            );
            (vec![0.0; r * rows], b, None)
        } else {
            let w_oi = transpose(&stored, rows, cols);
            let f = match init_factors(
                self.init,
                &w_oi,
                [cols, rows],
                r,
                plan.scaling,
                self.seed,
                path,
            ) {
                Ok(f) => f,
                Err(e) => {
                    self.error = Some(e);
                    return (param.set_require_grad(false), None);
                }
            };
            (f.a, f.b, f.residual.map(|res| transpose(&res, cols, rows)))
        };
        // burn's a = Aᵀ [in, r], b = Bᵀ [r, out]; for an embedding a [num, r], b [r, dim]
        let a = transpose(&a_t, r, rows);
        let b = transpose(&b_t, cols, r);
        let adapter = LoraAdapter {
            a: Param::from_tensor(Tensor::<2>::from_data(
                TensorData::new(a, [rows, r]),
                &device,
            )),
            b: Param::from_tensor(Tensor::<2>::from_data(
                TensorData::new(b, [r, cols]),
                &device,
            )),
            scale: plan.scaling,
        };
        let base = match residual {
            Some(res) => param.map(|_| {
                Tensor::<1>::from_data(TensorData::new(res, [rows * cols]), &device)
                    .reshape(base.shape())
            }),
            None => param,
        };
        (base.set_require_grad(false), Some(adapter))
    }
}

/// Attaches LoRA adapters to `model` as `config` asks: PEFT's targeting on the model's module
/// names, `r`/`rank_pattern`, `lora_alpha`/`alpha_pattern`, rsLoRA, `init_lora_weights`
/// (`true`, `"gaussian"`, `"pissa"`, `"olora"`; random inits drawn from `seed`) and `bias`
/// (`all` / `lora_only` biases stay trainable). Every other parameter is frozen, so an optimiser
/// keeps state only for what trains.
///
/// # Errors
/// [`Error::NoMatch`] when the targets select nothing (listing the modules), [`Error::Unsupported`]
/// for `lora_dropout > 0` (burn reparameterises the weight, so there is no adapter input to drop
/// out) and DoRA, [`Error::Invalid`] for a rank larger than a matrix or an unknown init.
pub fn attach<M: Module>(model: M, config: &LoraConfig, seed: u64) -> Result<(M, AttachReport)> {
    let path = std::path::PathBuf::from("<LoraConfig>");
    config.check_supported(&path)?;
    if config.lora_dropout != 0.0 {
        return Err(Error::Unsupported {
            path,
            field: "lora_dropout".into(),
            reason: "kiln trains LoRA through burn's weight reparameterisation, which has no adapter input to drop out; set lora_dropout to 0 (use the model's own dropout)".into(),
        });
    }
    if config.use_dora {
        return Err(Error::Unsupported {
            path,
            field: "use_dora".into(),
            reason: "DoRA training is not implemented (DoRA adapters can be merged and combined)"
                .into(),
        });
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
    for m in &chosen {
        let r = config.rank_for(&m.name);
        let (out, inp) = m.out_in();
        if r == 0 || r > out.min(inp) {
            return Err(Error::Invalid(format!(
                "rank {r} for `{}` ({out} × {inp}): a LoRA rank must be between 1 and the smaller dimension",
                m.name
            )));
        }
        plans.insert(
            m.name.clone(),
            Plan {
                r,
                scaling: config.scaling_for(&m.name, r),
                embedding: m.kind == ModuleKind::Embedding,
            },
        );
    }
    let trainable_biases: Vec<String> = parameters(&model)
        .into_iter()
        .filter(|(name, shape, _)| shape.len() == 1 && name.ends_with(".bias"))
        .map(|(name, _, _)| name)
        .filter(|name| match config.bias {
            Bias::None => false,
            Bias::All => true,
            Bias::LoraOnly => plans.contains_key(name.trim_end_matches(".bias")),
        })
        .collect();
    let mut reparam = PeftLora {
        plans,
        init,
        seed,
        trainable_biases,
        error: None,
    };
    let modules: BTreeMap<String, usize> = reparam
        .plans
        .iter()
        .map(|(k, p)| (k.clone(), p.r))
        .collect();
    let model = model.apply_reparameterization(&mut reparam);
    if let Some(e) = reparam.error {
        return Err(e);
    }
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
/// `config` (the one it was attached with): `lora_A = aᵀ`, `lora_B = bᵀ`, trainable biases as
/// the tensors the adapter replaces.
///
/// # Errors
/// [`Error::Invalid`] when the model carries no adapter.
pub fn export<M: Module>(model: &M, config: &LoraConfig) -> Result<Adapter> {
    let tensors: BTreeMap<String, (Vec<usize>, Vec<f32>, bool)> = walk_with(model, true)
        .into_iter()
        .map(|(name, shape, trainable, values)| (name, (shape, values, trainable)))
        .collect();
    let inventory = inventory(model);
    let mut modules = BTreeMap::new();
    let mut replaced = BTreeMap::new();
    for (name, (shape, values, trainable)) in &tensors {
        if let Some(module) = name.strip_suffix(".weight.lora.a") {
            let (_, b_values, _) = &tensors[&format!("{module}.weight.lora.b")];
            let (rows, r) = (shape[0], shape[1]);
            let cols = b_values.len() / r;
            let embedding = inventory
                .find(module)
                .is_some_and(|m| m.kind == ModuleKind::Embedding);
            modules.insert(
                module.to_owned(),
                LoraModule::new(
                    transpose(values, rows, r),
                    transpose(b_values, r, cols),
                    [cols, r, rows],
                    config.scaling_for(module, r),
                    embedding,
                ),
            );
        } else if *trainable && shape.len() == 1 {
            replaced.insert(name.clone(), (shape.clone(), values.clone()));
        }
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
/// training it, or to run it): `a = lora_Aᵀ`, `b = lora_Bᵀ`, and the tensors the adapter
/// replaces (trained biases) by name.
///
/// # Errors
/// [`Error::Tensor`] when the adapter has a module the model's adapters lack or a shape differs,
/// or replaces a tensor of rank ≠ 1 (`modules_to_save`).
pub fn load_factors<M: Module>(model: M, adapter: &Adapter) -> Result<M> {
    let mut values: BTreeMap<String, (Vec<f32>, [usize; 2])> = BTreeMap::new();
    for (name, m) in &adapter.modules {
        values.insert(
            format!("{name}.weight.lora.a"),
            (transpose(&m.a, m.r, m.a_cols), [m.a_cols, m.r]),
        );
        values.insert(
            format!("{name}.weight.lora.b"),
            (transpose(&m.b, m.b_rows, m.r), [m.r, m.b_rows]),
        );
    }
    for (name, (shape, v)) in &adapter.replaced {
        if shape.len() != 1 {
            // `modules_to_save` (whole embeddings, heads): not a trained bias of an adapted layer
            return Err(Error::Tensor {
                adapter: adapter.path.clone(),
                tensor: name.clone(),
                message: format!(
                    "the adapter replaces this {shape:?} tensor whole (modules_to_save), which a live model cannot take yet; merge the adapter into the checkpoint instead (kiln lora merge)"
                ),
            });
        }
        values.insert(name.clone(), (v.clone(), [shape[0], 1]));
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
