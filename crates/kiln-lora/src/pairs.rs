//! Walking a base and a fine-tuned checkpoint side by side, one matrix at a time.

use kiln_checkpoint::Checkpoint;
use regex::Regex;

use crate::error::{Error, Result};
use crate::linalg::transpose;
use crate::targets::{Inventory, ModuleInfo, ModuleKind};

/// Include/exclude filters on module names (regexes searched anywhere in the name, like
/// mergekit-extract-lora's `--include-regex`/`--exclude-regex`).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only modules whose name matches.
    pub include: Option<Regex>,
    /// Never modules whose name matches.
    pub exclude: Option<Regex>,
}

impl Filter {
    /// Compiles the two patterns.
    ///
    /// # Errors
    /// [`Error::Regex`].
    pub fn new(include: Option<&str>, exclude: Option<&str>) -> Result<Self> {
        let compile = |p: Option<&str>, field: &str| {
            p.map(|p| {
                Regex::new(p).map_err(|e| Error::Regex {
                    field: field.into(),
                    pattern: p.into(),
                    message: e.to_string(),
                })
            })
            .transpose()
        };
        Ok(Self {
            include: compile(include, "--include")?,
            exclude: compile(exclude, "--exclude")?,
        })
    }

    /// Whether `name` passes.
    pub fn keeps(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|r| r.is_match(name))
            && !self.exclude.as_ref().is_some_and(|r| r.is_match(name))
    }
}

/// A base and a fine-tuned checkpoint of the same architecture.
pub struct Pair {
    /// The base.
    pub base: Checkpoint,
    /// The fine-tuned model.
    pub finetuned: Checkpoint,
    /// The base's modules.
    pub inventory: Inventory,
}

impl Pair {
    /// Opens both and checks that they hold the same tensors with the same shapes.
    ///
    /// # Errors
    /// [`Error::Mismatch`] naming the first tensor that differs; [`Error::Checkpoint`].
    pub fn open(base: &std::path::Path, finetuned: &std::path::Path) -> Result<Self> {
        let base = Checkpoint::open(base)?;
        let finetuned = Checkpoint::open(finetuned)?;
        for name in base.names() {
            let b = base.info(name).expect("listed");
            match finetuned.info(name) {
                None => {
                    return Err(Error::Mismatch {
                        tensor: name.into(),
                        message: format!(
                            "in the base ({}) but not in the fine-tuned checkpoint ({})",
                            base.path().display(),
                            finetuned.path().display()
                        ),
                    });
                }
                Some(f) if f.shape != b.shape => {
                    return Err(Error::Mismatch {
                        tensor: name.into(),
                        message: format!(
                            "shape {:?} in the base but {:?} in the fine-tuned checkpoint (a resized vocabulary or another model?)",
                            b.shape, f.shape
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = finetuned.names().find(|n| !base.contains(n)) {
            return Err(Error::Mismatch {
                tensor: extra.into(),
                message: "in the fine-tuned checkpoint but not in the base".into(),
            });
        }
        let inventory = Inventory::of(&base);
        Ok(Self {
            base,
            finetuned,
            inventory,
        })
    }

    /// The linear modules (Linear, Conv1D, output head) that `filter` keeps.
    pub fn linear_modules(&self, filter: &Filter) -> Vec<ModuleInfo> {
        self.inventory
            .modules()
            .iter()
            .filter(|m| m.kind != ModuleKind::Embedding && filter.keeps(&m.name))
            .cloned()
            .collect()
    }

    /// `(W_base, W_ft)` of `module` in `[out, in]` orientation, f32.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] (e.g. an integer tensor).
    pub fn weights(&self, module: &ModuleInfo) -> Result<(Vec<f32>, Vec<f32>)> {
        let name = format!("{}.weight", module.name);
        let b = self.base.tensor(&name)?.to_f32()?;
        let f = self.finetuned.tensor(&name)?.to_f32()?;
        self.base.release(&name);
        self.finetuned.release(&name);
        Ok(if module.kind == ModuleKind::Conv1D {
            let [r, c] = module.shape;
            (transpose(&b, r, c), transpose(&f, r, c))
        } else {
            (b, f)
        })
    }
}
