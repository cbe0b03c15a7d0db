//! Several named adapters on one live burn model, as PEFT's `PeftModel`: add or load adapters
//! by name, choose the active one (or a weighted set), disable them all, delete one, merge the
//! active adapter into the weights and unmerge it.
//!
//! [`LoraModel`] keeps the base model untouched and every adapter's factors on the host, and
//! builds the live model for the active adapter when it changes: [`set_adapter`] attaches its
//! config (kiln's [`attach`](crate::train::attach())) and loads its factors. Switching therefore
//! costs one pass over the adapted layers, not a copy of the model (burn's tensors are shared).
//! After training the live model, hand it back with [`update`]: its factors become the
//! adapter's. A weighted set of adapters ([`set_adapters`]) runs as their exact `cat`
//! combination and is frozen (gradients cannot be routed back to the separate adapters).
//!
//! Merging keeps the base: [`merge_adapter`] bakes `W + s·B·A` (DoRA: rescaled per column)
//! into a plain model (f32, the model's own precision), [`unmerge_adapter`] returns to the
//! adapter-carrying model with the base weights exactly as they were — no subtraction, so no
//! rounding error (PEFT subtracts).
//!
//! ```
//! use kiln_lora::{LoraConfig, Modules, live::LoraModel};
//! use kiln_models::burn::prelude::*;
//! use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
//!
//! let device = Device::flex().autodiff();
//! let gpt2 = Gpt2LmHead::init(&Gpt2Config::tiny(), &device)?;
//! let mut model = LoraModel::new(gpt2);
//! model.add_adapter("code", &LoraConfig::new(4, 8.0, Modules::Pattern("all-linear".into())), 0)?;
//! model.add_adapter("math", &LoraConfig::new(8, 16.0, Modules::List(vec!["c_attn".into()])), 1)?;
//! model.set_adapter("math")?;
//! assert_eq!(model.active_adapters(), vec![("math".to_owned(), 1.0)]);
//! // train: let out = trainer.fit(model.active_model()?, …)?; model.update(out.model)?;
//! model.disable_adapters(); // model.model() is the base
//! model.enable_adapters();
//! model.delete_adapter("code")?;
//! let merged = model.merge_and_unload(true)?; // a plain Gpt2LmHead with W + s·B·A
//! # let _ = merged;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`set_adapter`]: LoraModel::set_adapter
//! [`set_adapters`]: LoraModel::set_adapters
//! [`update`]: LoraModel::update
//! [`merge_adapter`]: LoraModel::merge_adapter
//! [`unmerge_adapter`]: LoraModel::unmerge_adapter

use std::collections::BTreeMap;

use kiln_models::burn::module::Module;
use kiln_models::dense::DenseLayers;

use crate::adapter::Adapter;
use crate::combine::{Combination, CombineOptions, add_weighted_adapter};
use crate::config::LoraConfig;
use crate::error::{Error, Result};
use crate::train::{AttachReport, attach, export, load_factors, parameters, set_values, walk_with};

struct Entry {
    adapter: Adapter,
    /// The seed `attach` drew the initial factors from (PiSSA/OLoRA residuals are recomputed
    /// from the base on every attach, identically).
    seed: u64,
}

/// A base model with named LoRA adapters, one (or a weighted set) active. See the
/// [module docs](self).
pub struct LoraModel<M: Module + DenseLayers> {
    base: M,
    adapters: BTreeMap<String, Entry>,
    active: Vec<(String, f64)>,
    enabled: bool,
    /// The base with the active adapter(s) attached, and the config it was attached with.
    live: Option<(M, LoraConfig)>,
    /// The live model with its adapters baked in, while merged.
    merged: Option<M>,
}

impl<M: Module + DenseLayers> LoraModel<M> {
    /// A model without adapters yet (`model()` is `base`).
    pub fn new(base: M) -> Self {
        Self {
            base,
            adapters: BTreeMap::new(),
            active: Vec::new(),
            enabled: true,
            live: None,
            merged: None,
        }
    }

    fn known(&self, name: &str) -> Result<()> {
        if self.adapters.contains_key(name) {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "no adapter named `{name}` (adapters: {}); add or load it first",
                self.names().join(", ")
            )))
        }
    }

    fn not_merged(&self, what: &str) -> Result<()> {
        if self.merged.is_some() {
            return Err(Error::Invalid(format!(
                "cannot {what} while an adapter is merged into the weights; call unmerge_adapter first"
            )));
        }
        Ok(())
    }

    /// The adapter names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.adapters.keys().cloned().collect()
    }

    /// A named adapter with its current factors (those of the last [`update`](Self::update)).
    pub fn adapter(&self, name: &str) -> Option<&Adapter> {
        self.adapters.get(name).map(|e| &e.adapter)
    }

    /// The active adapters and their weights (one with weight 1 after
    /// [`set_adapter`](Self::set_adapter)).
    pub fn active_adapters(&self) -> Vec<(String, f64)> {
        self.active.clone()
    }

    /// Whether the adapters are applied (not [`disable_adapters`](Self::disable_adapters)d).
    pub fn adapters_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the active adapter is merged into the weights.
    pub fn is_merged(&self) -> bool {
        self.merged.is_some()
    }

    /// The base model, as given (never changed).
    pub fn base(&self) -> &M {
        &self.base
    }

    /// The model to run: the merged one while merged, else the base when adapters are disabled
    /// or none is active, else the base with the active adapter(s).
    pub fn model(&self) -> &M {
        if let Some(m) = &self.merged {
            return m;
        }
        match (&self.live, self.enabled) {
            (Some((live, _)), true) => live,
            _ => &self.base,
        }
    }

    /// Adds an adapter named `name`, freshly initialised by `config` (random parts from `seed`),
    /// and makes it active if none is (as PEFT). Returns the parameter counts it would train.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a name in use; [`attach`]'s errors for the config.
    pub fn add_adapter(
        &mut self,
        name: &str,
        config: &LoraConfig,
        seed: u64,
    ) -> Result<AttachReport> {
        self.fresh_name(name)?;
        let (model, report) = attach(self.base.clone(), config, seed)?;
        let adapter = export(&model, config)?;
        self.adapters
            .insert(name.to_owned(), Entry { adapter, seed });
        if self.active.is_empty() && self.merged.is_none() {
            self.active = vec![(name.to_owned(), 1.0)];
            self.live = Some((model, config.clone()));
        }
        Ok(report)
    }

    /// Adds an adapter read from files ([`Adapter::load`]) under `name` — checked against this
    /// model by attaching it once — and makes it active if none is.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a name in use; [`attach`]'s and [`load_factors`]' errors when the
    /// adapter does not fit the model (a module it lacks, another shape).
    pub fn load_adapter(&mut self, name: &str, adapter: Adapter) -> Result<()> {
        self.fresh_name(name)?;
        let model = self.attach_entry(&adapter, 0)?;
        let config = adapter.config.clone();
        self.adapters
            .insert(name.to_owned(), Entry { adapter, seed: 0 });
        if self.active.is_empty() && self.merged.is_none() {
            self.active = vec![(name.to_owned(), 1.0)];
            self.live = Some((model, config));
        }
        Ok(())
    }

    fn fresh_name(&self, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::Invalid("an adapter name must not be empty".into()));
        }
        if self.adapters.contains_key(name) {
            return Err(Error::Invalid(format!(
                "an adapter named `{name}` exists already; delete it first or choose another name"
            )));
        }
        Ok(())
    }

    fn attach_entry(&self, adapter: &Adapter, seed: u64) -> Result<M> {
        let (model, _) = attach(self.base.clone(), &adapter.config, seed)?;
        load_factors(model, adapter)
    }

    /// Makes `name` the only active adapter (weight 1); its live model trains.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an unknown name or while merged.
    pub fn set_adapter(&mut self, name: &str) -> Result<()> {
        self.not_merged("change the active adapter")?;
        self.known(name)?;
        let entry = &self.adapters[name];
        self.live = Some((
            self.attach_entry(&entry.adapter, entry.seed)?,
            entry.adapter.config.clone(),
        ));
        self.active = vec![(name.to_owned(), 1.0)];
        Ok(())
    }

    /// Makes a weighted set of adapters active together: the live model carries their exact
    /// combination Σ wᵢ·ΔWᵢ (PEFT's `cat`) and is frozen — it runs, it does not train (the
    /// gradient of a sum cannot be routed back to the separate adapters). One adapter with
    /// weight 1 is [`set_adapter`](Self::set_adapter).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty set, an unknown or repeated name, while merged, or
    /// adapters `cat` cannot combine (DoRA, trained biases).
    pub fn set_adapters(&mut self, weighted: &[(&str, f64)]) -> Result<()> {
        self.not_merged("change the active adapters")?;
        if weighted.is_empty() {
            return Err(Error::Invalid(
                "set_adapters needs at least one adapter".into(),
            ));
        }
        for (i, (name, w)) in weighted.iter().enumerate() {
            self.known(name)?;
            if weighted[..i].iter().any(|(n, _)| n == name) {
                return Err(Error::Invalid(format!("adapter `{name}` is listed twice")));
            }
            if !w.is_finite() {
                return Err(Error::Invalid(format!(
                    "adapter `{name}`: weight {w} is not finite"
                )));
            }
        }
        if let [(name, w)] = weighted
            && *w == 1.0
        {
            return self.set_adapter(name);
        }
        let parts: Vec<(&Adapter, f64)> = weighted
            .iter()
            .map(|(n, w)| (&self.adapters[*n].adapter, *w))
            .collect();
        let combined = add_weighted_adapter(&parts, &CombineOptions::new(Combination::Cat))?;
        self.live = Some((self.attach_entry(&combined, 0)?.no_grad(), combined.config));
        self.active = weighted
            .iter()
            .map(|(n, w)| ((*n).to_owned(), *w))
            .collect();
        Ok(())
    }

    /// A model to train (or run) with the active adapter: a cheap clone of the live model.
    /// Give the trained model back with [`update`](Self::update).
    ///
    /// # Errors
    /// [`Error::Invalid`] when no adapter is active or adapters are disabled or merged.
    pub fn active_model(&self) -> Result<M> {
        self.not_merged("train")?;
        match (&self.live, self.enabled) {
            (Some((live, _)), true) => Ok(live.clone()),
            (Some(_), false) => Err(Error::Invalid(
                "adapters are disabled; call enable_adapters first".into(),
            )),
            (None, _) => Err(Error::Invalid(
                "no adapter is active; add one or call set_adapter".into(),
            )),
        }
    }

    /// Takes a trained version of [`active_model`](Self::active_model) back: it becomes the
    /// live model and its factors (and trained biases) the active adapter's.
    ///
    /// # Errors
    /// [`Error::Invalid`] when a weighted set is active (it does not train), while merged, or
    /// when `trained` carries other adapted modules than the active adapter.
    pub fn update(&mut self, trained: M) -> Result<()> {
        self.not_merged("update the adapter")?;
        let name = match self.active.as_slice() {
            [(name, w)] if *w == 1.0 => name.clone(),
            [] => return Err(Error::Invalid("no adapter is active to update".into())),
            _ => {
                return Err(Error::Invalid(
                    "a weighted set of adapters is active; it runs frozen and cannot be updated (set_adapter one of them to train it)".into(),
                ));
            }
        };
        let entry = self.adapters.get_mut(&name).expect("active adapters exist");
        let adapter = export(&trained, &entry.adapter.config)?;
        if adapter.modules.keys().ne(entry.adapter.modules.keys()) {
            return Err(Error::Invalid(format!(
                "the model handed back does not carry adapter `{name}`'s modules; update takes the model active_model returned, after training"
            )));
        }
        entry.adapter = Adapter {
            path: entry.adapter.path.clone(),
            ..adapter
        };
        let config = entry.adapter.config.clone();
        self.live = Some((trained, config));
        Ok(())
    }

    /// Runs the base model without adapters (PEFT's `disable_adapter`); the adapters are kept.
    pub fn disable_adapters(&mut self) {
        self.enabled = false;
    }

    /// Applies the active adapter(s) again.
    pub fn enable_adapters(&mut self) {
        self.enabled = true;
    }

    /// Deletes an adapter.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an unknown name, or an active one (set another active first), or
    /// while merged.
    pub fn delete_adapter(&mut self, name: &str) -> Result<()> {
        self.not_merged("delete an adapter")?;
        self.known(name)?;
        if self.active.iter().any(|(n, _)| n == name) {
            return Err(Error::Invalid(format!(
                "adapter `{name}` is active; set another adapter active (or remove it from the active set) before deleting it"
            )));
        }
        self.adapters.remove(name);
        Ok(())
    }

    /// The base model with `live`'s adapters merged into its weights: each adapted linear
    /// layer's [`merged_weight`](kiln_models::dense::Dense::merged_weight) (`W + s·A·B`, DoRA's
    /// column rescaling included, in the model's f32; `W` is the live model's stored base — the
    /// residual after PiSSA/OLoRA), embedding adapters `W + s·a·b` on the host, trained biases
    /// copied.
    fn bake(&self, safe: bool) -> Result<M> {
        let Some((live, config)) = &self.live else {
            return Ok(self.base.clone());
        };
        let mut values = BTreeMap::new();
        let mut live_layers = live.clone();
        live_layers.visit_dense(&mut |path, _, dense| {
            if dense.lora.is_empty() {
                return;
            }
            let [rows, cols] = dense.dims();
            let merged = dense
                .merged_weight()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap_or_default();
            values.insert(format!("{path}.weight"), (merged, [rows, cols]));
        });
        let tensors: BTreeMap<String, (Vec<usize>, bool, Vec<f32>)> = walk_with(live, true)
            .into_iter()
            .map(|(name, shape, trainable, values)| (name, (shape, trainable, values)))
            .collect();
        for (name, (shape, trainable, v)) in &tensors {
            if let Some(module) = name.strip_suffix(".weight.lora.a") {
                // an embedding adapter (burn's reparameterisation): W + s·a·b
                let (rows, r) = (shape[0], shape[1]);
                let b = &tensors[&format!("{module}.weight.lora.b")].2;
                let (w_shape, _, w) = &tensors[&format!("{module}.weight")];
                let cols = w_shape[1];
                let s = config.scaling_for(module, r) as f32;
                let mut merged = w.clone();
                for i in 0..rows {
                    let ai = &v[i * r..(i + 1) * r];
                    let row = &mut merged[i * cols..(i + 1) * cols];
                    for (k, &aik) in ai.iter().enumerate() {
                        let f = s * aik;
                        for (x, &bkj) in row.iter_mut().zip(&b[k * cols..(k + 1) * cols]) {
                            *x += f * bkj;
                        }
                    }
                }
                values.insert(format!("{module}.weight"), (merged, [rows, cols]));
            } else if *trainable && shape.len() == 1 && !name.contains(".lora.") {
                values.insert(name.clone(), (v.clone(), [shape[0], 1]));
            }
        }
        if safe
            && let Some((module, _)) = values
                .iter()
                .find(|(_, (v, _))| v.iter().any(|x| !x.is_finite()))
        {
            return Err(Error::Invalid(format!(
                "safe_merge: merging gives non-finite weights in `{}`; the adapter holds NaN or ∞ (nothing was merged)",
                module.trim_end_matches(".weight")
            )));
        }
        set_values(self.base.clone(), values, std::path::Path::new("<merge>"))
    }

    /// Merges the active adapter(s) into the weights: [`model`](Self::model) becomes a plain
    /// model with `W + s·B·A` (trained biases included). `safe_merge` checks the merged weights
    /// for NaN/∞ first and refuses them.
    ///
    /// # Errors
    /// [`Error::Invalid`] when no adapter is active, adapters are disabled, already merged, or
    /// (`safe_merge`) the result is not finite.
    pub fn merge_adapter(&mut self, safe_merge: bool) -> Result<()> {
        self.not_merged("merge again")?;
        self.active_model()?;
        self.merged = Some(self.bake(safe_merge)?);
        Ok(())
    }

    /// Undoes [`merge_adapter`](Self::merge_adapter): the base weights are exactly those given
    /// to [`new`](Self::new) (kiln keeps them; PEFT subtracts the delta again).
    ///
    /// # Errors
    /// [`Error::Invalid`] when nothing is merged.
    pub fn unmerge_adapter(&mut self) -> Result<()> {
        if self.merged.take().is_none() {
            return Err(Error::Invalid("no adapter is merged".into()));
        }
        Ok(())
    }

    /// The model with the active adapter(s) merged in and no adapter left (PEFT's
    /// `merge_and_unload`); without an active adapter or with adapters disabled, the base.
    ///
    /// # Errors
    /// [`Error::Invalid`] (`safe_merge`) when the result is not finite.
    pub fn merge_and_unload(self, safe_merge: bool) -> Result<M> {
        if let Some(m) = self.merged {
            return Ok(m);
        }
        if self.enabled {
            self.bake(safe_merge)
        } else {
            Ok(self.base)
        }
    }

    /// Parameter counts of the model [`model`](Self::model) returns (as PEFT prints them).
    pub fn parameter_counts(&self) -> (usize, usize) {
        let params = parameters(self.model());
        let count = |s: &Vec<usize>| s.iter().product::<usize>();
        (
            params.iter().filter(|p| p.2).map(|p| count(&p.1)).sum(),
            params.iter().map(|p| count(&p.1)).sum(),
        )
    }
}
