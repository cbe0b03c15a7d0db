//! The merge methods: a registry (name, paper, parameters) and the maths over slices.
//!
//! The task-arithmetic family (`task_arithmetic`, `ties`, `dare_linear`, `dare_ties`) is one
//! parameterised implementation, [`task_arithmetic::combine`]: task vectors `δᵢ = θᵢ − θ_base`,
//! optionally sparsified (magnitude top-k or random drop), weighted, optionally sign-elected
//! (TIES), summed, optionally normalised by the weights that took part, scaled by λ, added to the
//! base.

pub mod linear;
pub mod slerp;
pub mod task_arithmetic;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The merge methods kiln implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Weighted average of the models (model soups).
    Linear,
    /// WiSE-FT: `(1 − α)·θ_base + α·θ_ft`.
    WiseFt,
    /// Task Arithmetic: `θ_base + λ·Σ wᵢ·δᵢ`.
    TaskArithmetic,
    /// TIES: trim to `density` by magnitude, elect signs by mass, disjoint mean.
    Ties,
    /// DARE: random drop with rescale, then a weighted sum.
    DareLinear,
    /// DARE drop followed by TIES sign election.
    DareTies,
    /// Spherical interpolation between the base and one model.
    Slerp,
}

/// How a method uses `base_model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseModel {
    /// Required: task vectors or interpolation start from it.
    Required,
    /// Not used by the maths (it still provides config.json and the tokenizer).
    Optional,
}

/// Type of a parameter value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A number.
    Float,
    /// `true` / `false`.
    Bool,
    /// One of a set of words.
    Choice(&'static [&'static str]),
}

/// A parameter's definition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamDef {
    /// Name as written in YAML.
    pub name: &'static str,
    /// Type.
    pub kind: ParamKind,
    /// Default, or `None` if required.
    pub default: Option<ParamDefault>,
    /// One line of documentation.
    pub doc: &'static str,
}

/// A parameter's default value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamDefault {
    /// A number.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A word.
    Word(&'static str),
}

/// What the registry knows about a method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MethodInfo {
    /// YAML name (`merge_method:`).
    pub name: &'static str,
    /// Human name.
    pub pretty_name: &'static str,
    /// The paper (or reference) that defines it.
    pub reference_url: &'static str,
    /// How it uses `base_model`.
    pub base_model: BaseModel,
    /// Minimum number of models besides the base.
    pub min_models: usize,
    /// Maximum number of models besides the base, if limited.
    pub max_models: Option<usize>,
    /// Parameters set once (top-level `parameters:`), resolvable per tensor.
    pub global_params: &'static [ParamDef],
    /// Parameters set per model (`models[].parameters`, falling back to the top level).
    pub model_params: &'static [ParamDef],
}

const WEIGHT: ParamDef = ParamDef {
    name: "weight",
    kind: ParamKind::Float,
    default: None,
    doc: "weight of the model (required)",
};
const DENSITY: ParamDef = ParamDef {
    name: "density",
    kind: ParamKind::Float,
    default: Some(ParamDefault::Float(1.0)),
    doc: "fraction of the task vector's entries to keep, in [0, 1]",
};
const LAMBDA: ParamDef = ParamDef {
    name: "lambda",
    kind: ParamKind::Float,
    default: Some(ParamDefault::Float(1.0)),
    doc: "scale of the merged task vector",
};
const INT8_MASK: ParamDef = ParamDef {
    name: "int8_mask",
    kind: ParamKind::Bool,
    default: Some(ParamDefault::Bool(false)),
    doc: "accepted for mergekit compatibility (a memory option there); no effect in kiln",
};
const fn normalize(default: bool) -> ParamDef {
    ParamDef {
        name: "normalize",
        kind: ParamKind::Bool,
        default: Some(ParamDefault::Bool(default)),
        doc: "divide by the sum of the weights that took part",
    }
}
const fn rescale(default: bool) -> ParamDef {
    ParamDef {
        name: "rescale",
        kind: ParamKind::Bool,
        default: Some(ParamDefault::Bool(default)),
        doc: "multiply kept entries by 1/density (DARE); mergekit 0.1.5 instead matches the L1 norm",
    }
}
const TRIM_SCOPE: ParamDef = ParamDef {
    name: "trim_scope",
    kind: ParamKind::Choice(&["tensor", "model"]),
    default: Some(ParamDefault::Word("tensor")),
    doc: "`tensor`: keep the top density of each tensor (mergekit); `model`: of the whole model's task vector (the TIES paper's code)",
};

const LINEAR_GLOBAL: [ParamDef; 1] = [normalize(true)];
const GTA_GLOBAL: [ParamDef; 4] = [LAMBDA, normalize(false), rescale(false), INT8_MASK];
const TIES_GLOBAL: [ParamDef; 5] = [
    LAMBDA,
    normalize(true),
    rescale(false),
    INT8_MASK,
    TRIM_SCOPE,
];
const DARE_GLOBAL: [ParamDef; 4] = [LAMBDA, normalize(false), rescale(true), INT8_MASK];

impl Method {
    /// Every method, in a stable order.
    pub const ALL: [Self; 7] = [
        Self::Linear,
        Self::WiseFt,
        Self::TaskArithmetic,
        Self::Ties,
        Self::DareLinear,
        Self::DareTies,
        Self::Slerp,
    ];

    /// The registry entry.
    pub const fn info(self) -> MethodInfo {
        match self {
            Self::Linear => MethodInfo {
                name: "linear",
                pretty_name: "Linear (model soups)",
                reference_url: "https://arxiv.org/abs/2203.05482",
                base_model: BaseModel::Optional,
                min_models: 1,
                max_models: None,
                global_params: &LINEAR_GLOBAL,
                model_params: &[WEIGHT],
            },
            Self::WiseFt => MethodInfo {
                name: "wise_ft",
                pretty_name: "WiSE-FT",
                reference_url: "https://arxiv.org/abs/2109.01903",
                base_model: BaseModel::Required,
                min_models: 1,
                max_models: Some(1),
                global_params: &[ParamDef {
                    name: "alpha",
                    kind: ParamKind::Float,
                    default: Some(ParamDefault::Float(0.5)),
                    doc: "interpolation: 0 is the base (zero-shot) model, 1 the fine-tuned one",
                }],
                model_params: &[],
            },
            Self::TaskArithmetic => MethodInfo {
                name: "task_arithmetic",
                pretty_name: "Task Arithmetic",
                reference_url: "https://arxiv.org/abs/2212.04089",
                base_model: BaseModel::Required,
                min_models: 1,
                max_models: None,
                global_params: &GTA_GLOBAL,
                model_params: &[WEIGHT],
            },
            Self::Ties => MethodInfo {
                name: "ties",
                pretty_name: "TIES",
                reference_url: "https://arxiv.org/abs/2306.01708",
                base_model: BaseModel::Required,
                min_models: 1,
                max_models: None,
                global_params: &TIES_GLOBAL,
                model_params: &[WEIGHT, DENSITY],
            },
            Self::DareLinear => MethodInfo {
                name: "dare_linear",
                pretty_name: "DARE (linear)",
                reference_url: "https://arxiv.org/abs/2311.03099",
                base_model: BaseModel::Required,
                min_models: 1,
                max_models: None,
                global_params: &DARE_GLOBAL,
                model_params: &[WEIGHT, DENSITY],
            },
            Self::DareTies => MethodInfo {
                name: "dare_ties",
                pretty_name: "DARE + TIES",
                reference_url: "https://arxiv.org/abs/2311.03099",
                base_model: BaseModel::Required,
                min_models: 1,
                max_models: None,
                global_params: &DARE_GLOBAL,
                model_params: &[WEIGHT, DENSITY],
            },
            Self::Slerp => MethodInfo {
                name: "slerp",
                pretty_name: "SLERP",
                reference_url: "https://doi.org/10.1145/325165.325242",
                base_model: BaseModel::Required,
                min_models: 1,
                max_models: Some(1),
                global_params: &[ParamDef {
                    name: "t",
                    kind: ParamKind::Float,
                    default: None,
                    doc: "interpolation: 0 is the base model, 1 the other (required)",
                }],
                model_params: &[],
            },
        }
    }

    /// The task-arithmetic configuration of the family's members.
    pub(crate) fn family(self) -> Option<Family> {
        use Sparsify::*;
        Some(match self {
            Self::TaskArithmetic => Family {
                sparsify: None,
                consensus: false,
            },
            Self::Ties => Family {
                sparsify: Magnitude,
                consensus: true,
            },
            Self::DareLinear => Family {
                sparsify: Random,
                consensus: false,
            },
            Self::DareTies => Family {
                sparsify: Random,
                consensus: true,
            },
            _ => return Option::None,
        })
    }
}

/// How a member of the task-arithmetic family sparsifies task vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sparsify {
    None,
    Magnitude,
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Family {
    pub(crate) sparsify: Sparsify,
    pub(crate) consensus: bool,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.info().name)
    }
}

impl FromStr for Method {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.info().name == s.trim())
            .ok_or_else(|| Error::UnknownMethod {
                name: s.to_owned(),
                supported: Self::ALL.map(|m| m.info().name).join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_a_name_a_reference_and_parses() {
        for m in Method::ALL {
            let info = m.info();
            assert!(info.reference_url.starts_with("https://"));
            assert_eq!(info.name.parse::<Method>().unwrap(), m);
        }
        let err = "breadcrumbs".parse::<Method>().unwrap_err().to_string();
        assert!(
            err.contains("breadcrumbs") && err.contains("dare_ties"),
            "{err}"
        );
    }
}
