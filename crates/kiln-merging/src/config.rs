//! The merge configuration: the subset of mergekit's YAML that people use, plus two kiln keys.
//!
//! ```yaml
//! models:
//!   - model: ./ft-math            # local Hugging Face directories (or .safetensors files)
//!     parameters: { density: [1, 0.7, 0.1], weight: 1.0 }   # a list is interpolated over depth
//!   - model: ./ft-code
//!     parameters:
//!       density: 0.33
//!       weight: [ { filter: mlp, value: 0.5 }, { value: 0 } ] # first matching filter wins
//! merge_method: ties
//! base_model: ./base
//! parameters: { normalize: true, lambda: 1.0 }
//! dtype: float32            # compute precision (float32 or float64)
//! out_dtype: bfloat16       # stored precision (default: dtype if given, else each base tensor's)
//! tokenizer_source: base    # copy the base's tokenizer files
//! shape_mismatch: error     # kiln: `error` (default) or `base_rows`
//! ```
//!
//! Parameter values are a scalar, a list of numbers interpolated linearly over layer depth (the
//! first numeric component of a tensor name is its layer; layer `i` of `L` sits at
//! `t = i/(L−1)`; tensors outside layers sit at `t = 0`), or a list of `{filter, value}` entries
//! where the first entry whose `filter` is a substring of the tensor name (or that has no
//! filter) applies. Per-model parameters fall back to the top-level `parameters`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_checkpoint::Dtype;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::methods::{Method, ParamDef, ParamKind};

/// A parameter value as written in YAML.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// One value for every tensor.
    Scalar(Scalar),
    /// Numbers interpolated over layer depth.
    Gradient(Vec<f64>),
    /// `{filter, value}` entries; the first that matches applies.
    Conditional(Vec<(Option<String>, ParamValue)>),
}

/// A resolved scalar.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// A word.
    Word(String),
}

impl ParamValue {
    /// The value for `tensor` at depth `t ∈ [0, 1]`, or `None` if no conditional entry matches.
    pub fn resolve(&self, tensor: &str, t: f64) -> Option<Scalar> {
        match self {
            Self::Scalar(s) => Some(s.clone()),
            Self::Gradient(v) => Some(Scalar::Number(interpolate(v, t))),
            Self::Conditional(entries) => entries
                .iter()
                .find(|(filter, _)| filter.as_deref().is_none_or(|f| tensor.contains(f)))
                .and_then(|(_, v)| v.resolve(tensor, t)),
        }
    }

    fn from_json(v: &Value, kind: ParamKind, what: &dyn Fn(String) -> Error) -> Result<Self> {
        match v {
            Value::Array(items) if items.iter().all(|i| i.is_object()) => items
                .iter()
                .map(|item| conditional(item, kind, what))
                .collect::<Result<Vec<_>>>()
                .map(Self::Conditional),
            Value::Array(items) => {
                if kind != ParamKind::Float {
                    return Err(what(
                        "only numeric parameters can be lists interpolated over layers".into(),
                    ));
                }
                if items.is_empty() {
                    return Err(what(
                        "an interpolation list needs at least one number".into(),
                    ));
                }
                items
                    .iter()
                    .map(|i| {
                        i.as_f64()
                            .filter(|x| x.is_finite())
                            .ok_or_else(|| what(format!("list entry {i} is not a number")))
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Self::Gradient)
            }
            Value::Object(_) => Ok(Self::Conditional(vec![conditional(v, kind, what)?])),
            scalar => scalar_of(scalar, kind, what).map(Self::Scalar),
        }
    }
}

fn conditional(
    v: &Value,
    kind: ParamKind,
    what: &dyn Fn(String) -> Error,
) -> Result<(Option<String>, ParamValue)> {
    let obj = v.as_object().expect("checked by the caller");
    if let Some(k) = obj.keys().find(|k| *k != "filter" && *k != "value") {
        return Err(what(format!(
            "unknown key `{k}` in a conditional entry; expected `filter` and `value`"
        )));
    }
    let filter = match obj.get("filter") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(what(format!("`filter` must be a string, got {other}"))),
    };
    let value = obj
        .get("value")
        .ok_or_else(|| what("a conditional entry needs a `value`".into()))?;
    if value.is_object()
        || value
            .as_array()
            .is_some_and(|a| a.iter().any(Value::is_object))
    {
        return Err(what("conditional entries cannot nest".into()));
    }
    Ok((filter, ParamValue::from_json(value, kind, what)?))
}

fn scalar_of(v: &Value, kind: ParamKind, what: &dyn Fn(String) -> Error) -> Result<Scalar> {
    match (kind, v) {
        (ParamKind::Float, Value::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Scalar::Number)
            .ok_or_else(|| what(format!("{n} is not a finite number"))),
        (ParamKind::Bool, Value::Bool(b)) => Ok(Scalar::Bool(*b)),
        (ParamKind::Choice(words), Value::String(s)) if words.contains(&s.as_str()) => {
            Ok(Scalar::Word(s.clone()))
        }
        (ParamKind::Choice(words), other) => Err(what(format!(
            "expected one of {}, got {other}",
            words.join(", ")
        ))),
        (ParamKind::Float, other) => Err(what(format!(
            "expected a number (or a list of them), got {other}"
        ))),
        (ParamKind::Bool, other) => Err(what(format!("expected true or false, got {other}"))),
    }
}

/// Linear interpolation of `values` at `t ∈ [0, 1]` (mergekit's gradient semantics).
pub fn interpolate(values: &[f64], t: f64) -> f64 {
    if values.len() == 1 {
        return values[0];
    }
    let scaled = t.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let i0 = scaled.floor() as usize;
    let i1 = (i0 + 1).min(values.len() - 1);
    let frac = scaled - i0 as f64;
    values[i0] * (1.0 - frac) + values[i1] * frac
}

/// Precision the arithmetic runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compute {
    /// f32 (the default).
    F32,
    /// f64.
    F64,
}

/// What to do when a model's tensor has a different shape from the base's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapePolicy {
    /// Refuse to merge (the default).
    Error,
    /// For tensors differing only in their first dimension (vocabulary rows of embeddings and
    /// output heads): keep the base's rows; rows a model lacks count as equal to the base's,
    /// rows beyond the base's are dropped. Each affected tensor is reported.
    BaseRows,
}

/// A model named in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// As written in the YAML.
    pub name: String,
    /// Resolved local path.
    pub path: PathBuf,
}

/// Where the tokenizer files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSource {
    /// The base model.
    Base,
    /// One of the models (by index into [`MergeConfig::models`]).
    Model(usize),
}

/// A model entry with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// The model.
    pub model: ModelRef,
    /// Its parameters.
    pub parameters: BTreeMap<String, ParamValue>,
}

/// A validated merge configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeConfig {
    /// Where it came from (for messages).
    pub source_name: String,
    /// The YAML text, copied into the output directory.
    pub text: String,
    /// The method.
    pub method: Method,
    /// `base_model`.
    pub base_model: Option<ModelRef>,
    /// The other models (for base-requiring methods the base is removed from this list).
    pub models: Vec<ModelEntry>,
    /// Top-level `parameters`.
    pub parameters: BTreeMap<String, ParamValue>,
    /// Compute precision.
    pub compute: Compute,
    /// Stored dtype of float tensors; `None` keeps each base tensor's dtype.
    pub out_dtype: Option<Dtype>,
    /// Tokenizer to copy.
    pub tokenizer_source: Option<TokenizerSource>,
    /// Shape-mismatch policy.
    pub shape_mismatch: ShapePolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    models: Option<Vec<RawModel>>,
    merge_method: String,
    base_model: Option<String>,
    parameters: Option<serde_json::Map<String, Value>>,
    dtype: Option<String>,
    out_dtype: Option<String>,
    tokenizer_source: Option<String>,
    shape_mismatch: Option<String>,
    // mergekit keys kiln does not implement: parsed only to explain.
    slices: Option<Value>,
    modules: Option<Value>,
    tokenizer: Option<Value>,
    chat_template: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    model: String,
    parameters: Option<serde_json::Map<String, Value>>,
}

impl MergeConfig {
    /// Reads and validates a config file; model paths resolve against the working directory,
    /// then the config's directory.
    ///
    /// # Errors
    /// [`Error::Io`] and the errors of [`MergeConfig::parse`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(
            &text,
            &path.display().to_string(),
            path.parent().unwrap_or(Path::new(".")),
        )
    }

    /// Parses and validates YAML text. `source_name` names it in errors; relative model paths are
    /// tried against the working directory, then `config_dir`.
    ///
    /// # Errors
    /// [`Error::Config`] for malformed YAML or unknown keys (naming the supported ones),
    /// [`Error::Unsupported`] for mergekit features kiln lacks, [`Error::UnknownMethod`],
    /// [`Error::Parameter`], [`Error::Inputs`], [`Error::ModelNotFound`].
    pub fn parse(text: &str, source_name: &str, config_dir: &Path) -> Result<Self> {
        let cfg_err = |message: String| Error::Config {
            source_name: source_name.to_owned(),
            message,
        };
        let unsupported = |key: &str, reason: &str| Error::Unsupported {
            source_name: source_name.to_owned(),
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| cfg_err(e.to_string()))?;
        if raw.slices.is_some() || raw.modules.is_some() {
            return Err(unsupported(
                if raw.slices.is_some() {
                    "slices"
                } else {
                    "modules"
                },
                "kiln merges whole models tensor by tensor; list them under `models:` (layer-dependent \
                 parameters are written as lists interpolated over depth)",
            ));
        }
        if raw.tokenizer.is_some() {
            return Err(unsupported(
                "tokenizer",
                "vocabulary surgery is not implemented; use `tokenizer_source: base`",
            ));
        }
        if raw.chat_template.is_some() {
            return Err(unsupported(
                "chat_template",
                "copy the tokenizer with `tokenizer_source` instead",
            ));
        }
        let method: Method = raw.merge_method.parse()?;
        let info = method.info();

        let resolve = |name: &str| resolve_model(name, config_dir);
        let base_model = raw.base_model.as_deref().map(resolve).transpose()?;
        let raw_models = raw
            .models
            .ok_or_else(|| cfg_err("missing `models:`, the list of models to merge".into()))?;
        let mut models = Vec::with_capacity(raw_models.len());
        for m in raw_models {
            if m.model.contains('+') && !Path::new(&m.model).exists() {
                return Err(unsupported(
                    &m.model,
                    "`model+lora` inputs are not supported; merge the adapter into the model first",
                ));
            }
            let model = resolve(&m.model)?;
            let parameters = params(
                m.parameters.unwrap_or_default(),
                method,
                info.model_params,
                &format!("models[{}] `{}`", models.len(), m.model),
            )?;
            models.push(ModelEntry { model, parameters });
        }
        let mut all_params = info.global_params.to_vec();
        all_params.extend_from_slice(info.model_params);
        let parameters = params(
            raw.parameters.unwrap_or_default(),
            method,
            &all_params,
            "parameters",
        )?;

        // The base is not one of the task vectors of base-requiring methods (mergekit does the same).
        if info.base_model == crate::methods::BaseModel::Required {
            let base = base_model.as_ref().ok_or_else(|| Error::Inputs {
                method: info.name,
                message: "needs `base_model:`".into(),
            })?;
            models.retain(|m| !same_path(&m.model.path, &base.path));
        }
        if models.len() < info.min_models || info.max_models.is_some_and(|max| models.len() > max) {
            let expected = match info.max_models {
                Some(max) if max == info.min_models => format!("exactly {max}"),
                Some(max) => format!("{} to {max}", info.min_models),
                None => format!("at least {}", info.min_models),
            };
            return Err(Error::Inputs {
                method: info.name,
                message: format!(
                    "takes {expected} model(s) besides the base, got {}",
                    models.len()
                ),
            });
        }
        // Every required per-model parameter must be given somewhere.
        for def in info
            .model_params
            .iter()
            .chain(info.global_params)
            .filter(|d| d.default.is_none())
        {
            let global = parameters.contains_key(def.name);
            let per_model = info.model_params.contains(def);
            if !global
                && (!per_model || models.iter().any(|m| !m.parameters.contains_key(def.name)))
            {
                return Err(Error::Parameter {
                    method: info.name,
                    param: def.name.into(),
                    message: format!(
                        "required ({}); set it {}",
                        def.doc,
                        if per_model {
                            "for every model or under top-level `parameters`"
                        } else {
                            "under top-level `parameters`"
                        }
                    ),
                });
            }
        }

        let dtype = |name: &str, key: &str| -> Result<Dtype> {
            let d: Dtype = name.parse().map_err(|_| {
                cfg_err(format!(
                    "`{key}: {name}`: expected float32, float64, bfloat16 or float16"
                ))
            })?;
            if d.is_float() {
                Ok(d)
            } else {
                Err(cfg_err(format!(
                    "`{key}: {name}`: expected float32, float64, bfloat16 or float16"
                )))
            }
        };
        let compute_dtype = raw
            .dtype
            .as_deref()
            .map(|d| dtype(d, "dtype"))
            .transpose()?;
        let compute = if compute_dtype == Some(Dtype::F64) {
            Compute::F64
        } else {
            Compute::F32
        };
        let out_dtype = match raw.out_dtype.as_deref() {
            Some(d) => Some(dtype(d, "out_dtype")?),
            // mergekit stores in `dtype` when no `out_dtype` is given.
            None => compute_dtype,
        };
        let tokenizer_source = match raw.tokenizer_source.as_deref() {
            None => None,
            Some("base") => {
                if base_model.is_none() {
                    return Err(cfg_err(
                        "`tokenizer_source: base` needs a `base_model`".into(),
                    ));
                }
                Some(TokenizerSource::Base)
            }
            Some("union") => {
                return Err(unsupported(
                    "tokenizer_source: union",
                    "vocabulary union is not implemented; use `base` or a model",
                ));
            }
            Some(other) => {
                let path = resolve(other)?.path;
                if base_model
                    .as_ref()
                    .is_some_and(|b| same_path(&b.path, &path))
                {
                    Some(TokenizerSource::Base)
                } else {
                    let i = models
                        .iter()
                        .position(|m| same_path(&m.model.path, &path))
                        .ok_or_else(|| {
                            cfg_err(format!(
                                "`tokenizer_source: {other}` must be `base` or one of the models"
                            ))
                        })?;
                    Some(TokenizerSource::Model(i))
                }
            }
        };
        let shape_mismatch = match raw.shape_mismatch.as_deref() {
            None | Some("error") => ShapePolicy::Error,
            Some("base_rows") => ShapePolicy::BaseRows,
            Some(other) => {
                return Err(cfg_err(format!(
                    "`shape_mismatch: {other}`: expected `error` or `base_rows`"
                )));
            }
        };
        Ok(Self {
            source_name: source_name.to_owned(),
            text: text.to_owned(),
            method,
            base_model,
            models,
            parameters,
            compute,
            out_dtype,
            tokenizer_source,
            shape_mismatch,
        })
    }
}

fn params(
    raw: serde_json::Map<String, Value>,
    method: Method,
    allowed: &[ParamDef],
    place: &str,
) -> Result<BTreeMap<String, ParamValue>> {
    let info = method.info();
    let mut out = BTreeMap::new();
    for (name, value) in raw {
        let def = allowed
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| Error::Parameter {
                method: info.name,
                param: name.clone(),
                message: format!(
                    "unknown in {place}; accepted there: {}",
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed
                            .iter()
                            .map(|d| d.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            })?;
        let what = |message: String| Error::Parameter {
            method: info.name,
            param: name.clone(),
            message: format!("{message} (in {place})"),
        };
        out.insert(
            name.clone(),
            ParamValue::from_json(&value, def.kind, &what)?,
        );
    }
    Ok(out)
}

fn resolve_model(name: &str, config_dir: &Path) -> Result<ModelRef> {
    let written = Path::new(name);
    let mut tried = vec![written.to_owned()];
    if written.exists() {
        return Ok(ModelRef {
            name: name.to_owned(),
            path: written.to_owned(),
        });
    }
    if written.is_relative() {
        let beside = config_dir.join(written);
        if beside.exists() {
            return Ok(ModelRef {
                name: name.to_owned(),
                path: beside,
            });
        }
        tried.push(beside);
    }
    Err(Error::ModelNotFound {
        model: name.to_owned(),
        tried,
    })
}

pub(crate) fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        for m in ["base", "a", "b"] {
            std::fs::create_dir(d.path().join(m)).unwrap();
        }
        let p = d.path().to_owned();
        (d, p)
    }

    fn parse(yaml: &str, dir: &Path) -> Result<MergeConfig> {
        MergeConfig::parse(yaml, "test.yml", dir)
    }

    #[test]
    fn parses_the_mergekit_ties_example() {
        let (_d, dir) = dirs();
        let yaml = "models:\n  - model: a\n    parameters: { density: [1, 0.7, 0.1], weight: 1.0 }\n  - model: b\n    parameters:\n      density: 0.33\n      weight: [ { filter: mlp, value: 0.5 }, { value: 0 } ]\nmerge_method: ties\nbase_model: base\nparameters: { normalize: true, int8_mask: true }\ndtype: float16\n";
        let c = parse(yaml, &dir).unwrap();
        assert_eq!(c.method, Method::Ties);
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.out_dtype, Some(Dtype::F16));
        assert_eq!(c.compute, Compute::F32);
        let density = &c.models[0].parameters["density"];
        assert_eq!(density.resolve("x", 0.25), Some(Scalar::Number(0.85)));
        assert_eq!(density.resolve("x", 1.0), Some(Scalar::Number(0.1)));
        let w = &c.models[1].parameters["weight"];
        assert_eq!(
            w.resolve("model.layers.0.mlp.up_proj.weight", 0.0),
            Some(Scalar::Number(0.5))
        );
        assert_eq!(
            w.resolve("model.layers.0.self_attn.q_proj.weight", 0.0),
            Some(Scalar::Number(0.0))
        );
    }

    #[test]
    fn unknown_keys_and_methods_name_the_supported_set() {
        let (_d, dir) = dirs();
        let err = parse(
            "models: [{model: a, parameters: {weight: 1}}]\nmerge_method: linear\nmerge_mthod: x\n",
            &dir,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("merge_mthod") && err.contains("merge_method"),
            "{err}"
        );
        let err = parse("models: [{model: a}]\nmerge_method: della\n", &dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("della") && err.contains("ties"), "{err}");
        let err = parse("models: [{model: a, parameters: {weight: 1, densty: 0.5}}]\nmerge_method: ties\nbase_model: base\n", &dir).unwrap_err().to_string();
        assert!(
            err.contains("densty") && err.contains("weight, density"),
            "{err}"
        );
        let err = parse("slices: []\nmerge_method: linear\n", &dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`slices` is not supported"), "{err}");
    }

    #[test]
    fn inputs_are_checked() {
        let (_d, dir) = dirs();
        let err = parse(
            "models: [{model: a, parameters: {weight: 1}}]\nmerge_method: ties\n",
            &dir,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Inputs { .. }), "{err}");
        let err = parse("models: [{model: a}, {model: b}]\nmerge_method: slerp\nbase_model: base\nparameters: {t: 0.5}\n", &dir).unwrap_err();
        assert!(err.to_string().contains("exactly 1"), "{err}");
        let err = parse(
            "models: [{model: a}]\nmerge_method: slerp\nbase_model: base\n",
            &dir,
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::Parameter { .. }) && err.to_string().contains("required"),
            "{err}"
        );
        let err = parse(
            "models: [{model: a, parameters: {weight: yes}}]\nmerge_method: linear\n",
            &dir,
        )
        .unwrap_err();
        assert!(err.to_string().contains("expected a number"), "{err}");
        let err = parse(
            "models: [{model: nowhere, parameters: {weight: 1}}]\nmerge_method: linear\n",
            &dir,
        )
        .unwrap_err();
        assert!(matches!(err, Error::ModelNotFound { .. }), "{err}");
        // The base listed among the models is not its own task vector.
        let c = parse("models: [{model: base}, {model: a, parameters: {weight: 1}}]\nmerge_method: task_arithmetic\nbase_model: base\n", &dir).unwrap();
        assert_eq!(c.models.len(), 1);
    }

    #[test]
    fn interpolation_matches_mergekit_gradients() {
        assert_eq!(interpolate(&[1.0, 0.7, 0.1], 0.0), 1.0);
        assert!((interpolate(&[1.0, 0.7, 0.1], 0.75) - 0.4).abs() < 1e-12);
        assert_eq!(interpolate(&[0.2], 0.6), 0.2);
    }
}
