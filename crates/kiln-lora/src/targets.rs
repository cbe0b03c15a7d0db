//! Which modules of a checkpoint can carry LoRA, and which ones a config selects — PEFT's rules
//! (`check_target_module_exists`) on module names read from the checkpoint itself.

use std::collections::BTreeSet;

use kiln_checkpoint::Checkpoint;
use regex::Regex;

use crate::config::{LoraConfig, Modules};
use crate::error::{Error, Result};

/// How a module stores its weight, which decides how ΔW is added to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// `nn.Linear`: weight `[out, in]`.
    Linear,
    /// GPT-2's `Conv1D`: weight `[in, out]` (PEFT's `fan_in_fan_out`).
    Conv1D,
    /// `nn.Embedding`: weight `[num_embeddings, dim]`.
    Embedding,
    /// The output head (`lm_head`, BERT's `decoder`): linear, but `all-linear` skips it.
    Output,
}

/// One 2-D weight of a checkpoint seen as a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The module's name (the tensor name without `.weight`).
    pub name: String,
    /// How it stores its weight.
    pub kind: ModuleKind,
    /// The stored weight's shape.
    pub shape: [usize; 2],
}

impl ModuleInfo {
    /// `(out_features, in_features)` in PyTorch's `nn.Linear` sense (for embeddings:
    /// `(num_embeddings, dim)`).
    pub fn out_in(&self) -> (usize, usize) {
        match self.kind {
            ModuleKind::Conv1D => (self.shape[1], self.shape[0]),
            _ => (self.shape[0], self.shape[1]),
        }
    }
}

/// GPT-2's `Conv1D` module names.
const CONV1D: &[&str] = &["c_attn", "c_proj", "c_fc", "q_attn"];
/// Names of output heads (`all-linear` leaves them out, as PEFT does).
const OUTPUT: &[&str] = &["lm_head", "decoder", "embed_out"];

/// The modules of a checkpoint that LoRA can adapt: every 2-D `.weight`, classified by name and
/// by `config.json`'s `model_type` (GPT-2's `c_attn`/`c_proj`/`c_fc` are `Conv1D`).
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    modules: Vec<ModuleInfo>,
}

impl Inventory {
    /// Reads the module list of an opened checkpoint.
    pub fn of(ckpt: &Checkpoint) -> Self {
        let gpt2 = ckpt
            .config()
            .and_then(|c| c.model_type().ok().flatten())
            .is_some_and(|t| t == "gpt2");
        let mut modules = Vec::new();
        for name in ckpt.names() {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            let Some(info) = ckpt.info(name) else {
                continue;
            };
            if info.shape.len() != 2 {
                continue;
            }
            let last = module.rsplit('.').next().unwrap_or(module);
            let kind = if last.contains("embed") || last == "wte" || last == "wpe" {
                ModuleKind::Embedding
            } else if OUTPUT.contains(&last) {
                ModuleKind::Output
            } else if gpt2 && CONV1D.contains(&last) {
                ModuleKind::Conv1D
            } else {
                ModuleKind::Linear
            };
            modules.push(ModuleInfo {
                name: module.to_owned(),
                kind,
                shape: [info.shape[0], info.shape[1]],
            });
        }
        Self { modules }
    }

    /// Builds an inventory from a list (for tests and synthetic models).
    pub fn from_modules(modules: Vec<ModuleInfo>) -> Self {
        Self { modules }
    }

    /// All modules.
    pub fn modules(&self) -> &[ModuleInfo] {
        &self.modules
    }

    /// The module called `name`, also when the checkpoint was saved without the task model's
    /// first prefix (`transformer.`, `bert.`): adapters name modules as in the task model.
    pub fn find(&self, name: &str) -> Option<&ModuleInfo> {
        self.modules.iter().find(|m| m.name == name).or_else(|| {
            let (_, rest) = name.split_once('.')?;
            self.modules.iter().find(|m| m.name == rest)
        })
    }

    /// Module names with layer indices folded (`transformer.h.N.attn.c_attn`), for messages.
    pub fn describe(&self) -> String {
        let folded: BTreeSet<String> = self
            .modules
            .iter()
            .map(|m| {
                m.name
                    .split('.')
                    .map(|s| if s.parse::<usize>().is_ok() { "N" } else { s })
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .collect();
        folded.into_iter().collect::<Vec<_>>().join(", ")
    }
}

/// A compiled targeting rule: `target_modules`, `exclude_modules`, `layers_to_transform`,
/// `layers_pattern`.
#[derive(Debug, Clone)]
pub struct Targeting {
    target: Rule,
    exclude: Option<Rule>,
    layers: Option<Vec<usize>>,
    layer_patterns: Vec<Regex>,
    described: String,
}

#[derive(Debug, Clone)]
enum Rule {
    AllLinear,
    Names(Vec<String>),
    Regex(Regex),
}

impl Rule {
    fn compile(m: &Modules, field: &str) -> Result<Self> {
        Ok(match m {
            Modules::Pattern(p) if p == "all-linear" => Self::AllLinear,
            Modules::Pattern(p) => {
                Self::Regex(Regex::new(&format!("^(?:{p})$")).map_err(|e| Error::Regex {
                    field: field.into(),
                    pattern: p.clone(),
                    message: e.to_string(),
                })?)
            }
            Modules::List(names) => Self::Names(names.clone()),
        })
    }

    fn matches(&self, m: &ModuleInfo) -> bool {
        match self {
            Self::AllLinear => matches!(m.kind, ModuleKind::Linear | ModuleKind::Conv1D),
            Self::Regex(re) => re.is_match(&m.name),
            Self::Names(names) => names.iter().any(|t| suffix_match(&m.name, t)),
        }
    }
}

/// PEFT's list rule: equal, or a suffix that starts after a dot.
fn suffix_match(name: &str, target: &str) -> bool {
    name == target
        || name
            .strip_suffix(target)
            .is_some_and(|head| head.ends_with('.'))
}

/// PEFT's default layer-list names for `layers_to_transform`.
const COMMON_LAYERS_PATTERN: &[&str] = &["layers", "h", "block", "blocks", "layer"];

impl Targeting {
    /// Compiles the targeting fields of `config`.
    ///
    /// # Errors
    /// [`Error::Regex`] for a pattern that does not compile; [`Error::Invalid`] when
    /// `target_modules` is missing, or `layers_to_transform` is combined with a regex (PEFT
    /// refuses that too).
    pub fn new(config: &LoraConfig) -> Result<Self> {
        let Some(target) = &config.target_modules else {
            return Err(Error::Invalid(
                "the config has no target_modules; give a list of module names, a regex, or \"all-linear\"".into(),
            ));
        };
        let layers = config.layers_to_transform.as_ref().map(|l| l.to_vec());
        if layers.is_some() && matches!(target, Modules::Pattern(p) if p != "all-linear") {
            return Err(Error::Invalid(
                "layers_to_transform cannot be used when target_modules is a regex (PEFT refuses it too); fold the layer indices into the regex".into(),
            ));
        }
        let names = config
            .layers_pattern
            .as_ref()
            .map(|p| p.to_vec())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| {
                COMMON_LAYERS_PATTERN
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            });
        let layer_patterns = names
            .iter()
            .map(|p| {
                Regex::new(&format!(r"^.*\.{p}\.(\d+)\.")).map_err(|e| Error::Regex {
                    field: "layers_pattern".into(),
                    pattern: p.clone(),
                    message: e.to_string(),
                })
            })
            .collect::<Result<_>>()?;
        let mut described = format!("target_modules {}", describe(target));
        if let Some(l) = &layers {
            described.push_str(&format!(" with layers_to_transform {l:?}"));
        }
        Ok(Self {
            target: Rule::compile(target, "target_modules")?,
            exclude: config
                .exclude_modules
                .as_ref()
                .map(|e| Rule::compile(e, "exclude_modules"))
                .transpose()?,
            layers,
            layer_patterns,
            described,
        })
    }

    /// Whether `module` is adapted.
    pub fn matches(&self, module: &ModuleInfo) -> bool {
        if module.kind == ModuleKind::Output && matches!(self.target, Rule::AllLinear) {
            return false;
        }
        if self.exclude.as_ref().is_some_and(|e| e.matches(module)) {
            return false;
        }
        if !self.target.matches(module) {
            return false;
        }
        match &self.layers {
            None => true,
            Some(layers) => self
                .layer_patterns
                .iter()
                .find_map(|re| re.captures(&module.name))
                .and_then(|c| c[1].parse::<usize>().ok())
                .is_some_and(|i| layers.contains(&i)),
        }
    }

    /// The modules of `inventory` this rule selects.
    ///
    /// # Errors
    /// [`Error::NoMatch`] when it selects none, listing the modules that exist.
    pub fn select<'a>(&self, inventory: &'a Inventory) -> Result<Vec<&'a ModuleInfo>> {
        let chosen: Vec<_> = inventory
            .modules()
            .iter()
            .filter(|m| self.matches(m))
            .collect();
        if chosen.is_empty() {
            return Err(Error::NoMatch {
                what: self.described.clone(),
                available: inventory.describe(),
            });
        }
        Ok(chosen)
    }
}

fn describe(m: &Modules) -> String {
    match m {
        Modules::List(l) => format!("{l:?}"),
        Modules::Pattern(p) => format!("\"{p}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt2() -> Inventory {
        let mut m = vec![
            ModuleInfo {
                name: "transformer.wte".into(),
                kind: ModuleKind::Embedding,
                shape: [61, 16],
            },
            ModuleInfo {
                name: "lm_head".into(),
                kind: ModuleKind::Output,
                shape: [61, 16],
            },
        ];
        for l in 0..2 {
            for (n, s) in [
                ("attn.c_attn", [16, 48]),
                ("attn.c_proj", [16, 16]),
                ("mlp.c_fc", [16, 24]),
                ("mlp.c_proj", [24, 16]),
            ] {
                m.push(ModuleInfo {
                    name: format!("transformer.h.{l}.{n}"),
                    kind: ModuleKind::Conv1D,
                    shape: s,
                });
            }
        }
        Inventory::from_modules(m)
    }

    fn names(t: &Targeting, inv: &Inventory) -> Vec<String> {
        t.select(inv)
            .unwrap()
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }

    #[test]
    fn lists_regexes_all_linear_exclusions_and_layers() {
        let inv = gpt2();
        let mut c = LoraConfig::new(
            4,
            8.0,
            Modules::List(vec!["c_attn".into(), "mlp.c_proj".into()]),
        );
        assert_eq!(
            names(&Targeting::new(&c).unwrap(), &inv),
            [
                "transformer.h.0.attn.c_attn",
                "transformer.h.0.mlp.c_proj",
                "transformer.h.1.attn.c_attn",
                "transformer.h.1.mlp.c_proj"
            ]
        );
        c.layers_to_transform = Some(crate::config::OneOrMany::One(1));
        assert_eq!(
            names(&Targeting::new(&c).unwrap(), &inv),
            ["transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_proj"]
        );
        let mut c = LoraConfig::new(4, 8.0, Modules::Pattern("all-linear".into()));
        assert_eq!(
            Targeting::new(&c).unwrap().select(&inv).unwrap().len(),
            8,
            "no lm_head, no wte"
        );
        c.exclude_modules = Some(Modules::Pattern(r".*\.c_proj".into()));
        assert_eq!(Targeting::new(&c).unwrap().select(&inv).unwrap().len(), 4);
        let c = LoraConfig::new(4, 8.0, Modules::Pattern(r".*\.1\.attn\.c_attn".into()));
        assert_eq!(
            names(&Targeting::new(&c).unwrap(), &inv),
            ["transformer.h.1.attn.c_attn"]
        );
    }

    #[test]
    fn a_rule_that_matches_nothing_lists_what_exists() {
        let c = LoraConfig::new(4, 8.0, Modules::List(vec!["q_proj".into()]));
        let e = Targeting::new(&c)
            .unwrap()
            .select(&gpt2())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("q_proj") && e.contains("transformer.h.N.attn.c_attn"),
            "{e}"
        );
        // a suffix must start at a dot
        let c = LoraConfig::new(4, 8.0, Modules::List(vec!["attn".into()]));
        assert!(Targeting::new(&c).unwrap().select(&gpt2()).is_err());
        let mut c = LoraConfig::new(4, 8.0, Modules::Pattern("(".into()));
        assert!(matches!(Targeting::new(&c), Err(Error::Regex { .. })));
        c.target_modules = Some(Modules::Pattern(".*c_attn".into()));
        c.layers_to_transform = Some(crate::config::OneOrMany::One(0));
        assert!(matches!(Targeting::new(&c), Err(Error::Invalid(_))));
    }
}
