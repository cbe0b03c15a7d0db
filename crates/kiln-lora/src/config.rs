//! `adapter_config.json`: PEFT's `LoraConfig`, read and written field for field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The config file's name in a PEFT adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file's name in a PEFT adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The PEFT version whose `LoraConfig` fields kiln writes.
pub const PEFT_VERSION: &str = "0.21.2";

/// `target_modules` / `exclude_modules`: a list of names (a module matches when its name equals
/// an entry or ends with `.` + the entry), or one regex that must match the whole module name.
/// `"all-linear"` (a string) means every linear layer except the output head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Modules {
    /// Names matched exactly or as a dotted suffix.
    List(Vec<String>),
    /// A regex matched against the full module name, or `"all-linear"`.
    Pattern(String),
}

/// An integer or a list of integers (`layers_to_transform`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// One value.
    One(T),
    /// Several.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            Self::One(v) => vec![v.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// Which biases an adapter trains (`bias`): none, every bias of the model, or only the biases of
/// the layers that carry LoRA. Trained biases are saved in the adapter and replace the base's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Bias {
    /// No bias is trained.
    #[default]
    None,
    /// Every bias.
    All,
    /// Biases of LoRA layers.
    LoraOnly,
}

/// PEFT's `LoraConfig`. The fields kiln acts on are typed; every other field of the file is kept
/// in [`extra`](Self::extra) and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// `"LORA"`.
    #[serde(default = "lora")]
    pub peft_type: String,
    /// e.g. `"CAUSAL_LM"` (kept as written, even old typos such as `"CASUAL_LM"`).
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// The base model's revision.
    #[serde(default)]
    pub revision: Option<String>,
    /// Whether the adapter was saved for inference.
    #[serde(default)]
    pub inference_mode: bool,
    /// Default rank.
    pub r: usize,
    /// Default α (the scale is α/r, or α/√r with rsLoRA).
    #[serde(serialize_with = "number")]
    pub lora_alpha: f64,
    /// Dropout on the adapter's input during training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Modules that carry LoRA.
    #[serde(default)]
    pub target_modules: Option<Modules>,
    /// Modules never adapted, even if `target_modules` matches them.
    #[serde(default)]
    pub exclude_modules: Option<Modules>,
    /// Whether weights are stored `[in, out]` (GPT-2's `Conv1D`); PEFT sets it for `Conv1D` targets.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Which biases are trained.
    #[serde(default)]
    pub bias: Bias,
    /// rsLoRA: scale α/√r instead of α/r.
    #[serde(default)]
    pub use_rslora: bool,
    /// Modules trained in full and saved whole in the adapter.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// The initialisation (`true`, `false`, `"gaussian"`, `"pissa"`, `"olora"`, …).
    #[serde(default = "yes")]
    pub init_lora_weights: Value,
    /// Only layers with these indices are adapted.
    #[serde(default)]
    pub layers_to_transform: Option<OneOrMany<usize>>,
    /// The name of the layer list (`h`, `layers`, …) that `layers_to_transform` indexes.
    #[serde(default)]
    pub layers_pattern: Option<OneOrMany<String>>,
    /// Per-module ranks: a key matches a module whose name ends with it (as a regex).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module α.
    #[serde(default, serialize_with = "numbers")]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// DoRA: a learned magnitude times the normalised direction of `W + ΔW`.
    #[serde(default)]
    pub use_dora: bool,
    /// A bias on `lora_B` (used by extraction to carry bias changes).
    #[serde(default)]
    pub lora_bias: bool,
    /// The PEFT version that wrote the file.
    #[serde(default)]
    pub peft_version: Option<String>,
    /// Every other field, kept as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Writes whole numbers as JSON integers (`8`, not `8.0`), as Python writes the ints PEFT
/// configs usually hold.
fn number<S: serde::Serializer>(x: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        s.serialize_i64(*x as i64)
    } else {
        s.serialize_f64(*x)
    }
}

fn numbers<S: serde::Serializer>(
    map: &BTreeMap<String, f64>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(map.len()))?;
    for (k, v) in map {
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            m.serialize_entry(k, &(*v as i64))?;
        } else {
            m.serialize_entry(k, v)?;
        }
    }
    m.end()
}

fn lora() -> String {
    "LORA".into()
}

fn yes() -> Value {
    Value::Bool(true)
}

/// PEFT 0.21 `LoraConfig` fields kiln does not act on, with their defaults. A field here at its
/// default is harmless; one that changes the forward pass at another value is refused
/// ([`LoraConfig::check_supported`]); a field in no list is unknown (legacy or newer) and warned
/// about.
const OTHER_FIELDS: &[(&str, &str)] = &[
    ("alora_invocation_tokens", "null"),
    ("arrow_config", "null"),
    ("auto_mapping", "null"),
    ("corda_config", "null"),
    ("ensure_weight_tying", "false"),
    ("eva_config", "null"),
    ("kasa_config", "null"),
    ("layer_replication", "null"),
    ("loftq_config", "{}"),
    ("lora_ga_config", "null"),
    ("megatron_config", "null"),
    ("megatron_core", "\"megatron.core\""),
    ("monteclora_config", "null"),
    ("qalora_group_size", "16"),
    ("target_parameters", "null"),
    ("trainable_token_indices", "null"),
    ("use_bdlora", "null"),
    ("use_qalora", "false"),
    ("velora_config", "null"),
];

/// Fields that change the forward pass when set: kiln refuses adapters that use them.
const FORWARD_CHANGING: &[(&str, &str)] = &[
    (
        "alora_invocation_tokens",
        "activated LoRA applies only after invocation tokens",
    ),
    (
        "arrow_config",
        "Arrow routing mixes several adapters per token",
    ),
    ("kasa_config", "KaSA changes the adapter's forward pass"),
    (
        "layer_replication",
        "layer replication changes the model's layer stack",
    ),
    (
        "monteclora_config",
        "MonteCLoRA samples the adapter's weights",
    ),
    (
        "target_parameters",
        "LoRA on raw parameters (MoE experts) is not implemented",
    ),
    (
        "trainable_token_indices",
        "trainable token embeddings are not implemented",
    ),
    (
        "use_bdlora",
        "block-diagonal LoRA changes the factor shapes",
    ),
    ("use_qalora", "QA-LoRA pools the input by groups"),
    (
        "velora_config",
        "VeLoRA changes the adapter's backward pass only for training, but is not implemented",
    ),
];

impl LoraConfig {
    /// A config for rank `r`, scale `alpha`/`r` and these targets, with every other field at
    /// PEFT's default (the file kiln writes lists every `LoraConfig` field, as PEFT's does).
    pub fn new(r: usize, lora_alpha: f64, target_modules: Modules) -> Self {
        let mut extra = Map::new();
        for (k, v) in OTHER_FIELDS {
            extra.insert((*k).into(), serde_json::from_str(v).expect("valid JSON"));
        }
        Self {
            peft_type: lora(),
            task_type: None,
            base_model_name_or_path: None,
            revision: None,
            inference_mode: true,
            r,
            lora_alpha,
            lora_dropout: 0.0,
            target_modules: Some(target_modules),
            exclude_modules: None,
            fan_in_fan_out: false,
            bias: Bias::None,
            use_rslora: false,
            modules_to_save: None,
            init_lora_weights: yes(),
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            use_dora: false,
            lora_bias: false,
            peft_version: Some(PEFT_VERSION.into()),
            extra,
        }
    }

    /// Parses the text of an `adapter_config.json`; `path` is for messages.
    ///
    /// # Errors
    /// [`Error::Config`] for invalid JSON, a wrong type, a non-LoRA `peft_type`, or r = 0.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let err = |message: String| Error::Config {
            path: path.to_owned(),
            message,
        };
        let config: Self = serde_json::from_str(text).map_err(|e| {
            err(format!(
                "not a PEFT LoraConfig: {e} (needs at least `r` and `lora_alpha`)"
            ))
        })?;
        if config.peft_type != "LORA" {
            return Err(err(format!(
                "peft_type is `{}`; kiln-lora reads LoRA adapters (`\"peft_type\": \"LORA\"`)",
                config.peft_type
            )));
        }
        if config.r == 0 {
            return Err(err("r is 0; a LoRA rank must be at least 1".into()));
        }
        if !(config.lora_alpha.is_finite()) {
            return Err(err("lora_alpha is not a finite number".into()));
        }
        Ok(config)
    }

    /// Reads `dir/adapter_config.json`.
    ///
    /// # Errors
    /// [`Error::Io`] and as [`parse`](Self::parse).
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// The fields of the file that PEFT 0.21's `LoraConfig` does not have (legacy fields such as
    /// `enable_lora` or `merge_weights`, or fields of a newer PEFT). They are kept when the
    /// config is written back; callers should warn about them.
    pub fn unknown_fields(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .extra
            .keys()
            .filter(|k| !OTHER_FIELDS.iter().any(|(f, _)| f == k))
            .map(String::as_str)
            .collect();
        out.sort_unstable();
        out
    }

    /// Warnings worth printing when this config is read: unknown fields, and a `task_type` that
    /// PEFT would not recognise.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let unknown = self.unknown_fields();
        if !unknown.is_empty() {
            out.push(format!(
                "adapter_config.json has fields PEFT {PEFT_VERSION} does not define ({}); kept as written and ignored",
                unknown.join(", ")
            ));
        }
        const TASKS: &[&str] = &[
            "SEQ_CLS",
            "SEQ_2_SEQ_LM",
            "CAUSAL_LM",
            "TOKEN_CLS",
            "QUESTION_ANS",
            "FEATURE_EXTRACTION",
        ];
        if let Some(t) = &self.task_type
            && !TASKS.contains(&t.as_str())
        {
            out.push(format!(
                "task_type `{t}` is not one PEFT knows ({}); kept as written",
                TASKS.join(", ")
            ));
        }
        out
    }

    /// Refuses configs whose forward pass kiln would compute wrongly.
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the field.
    pub fn check_supported(&self, path: &Path) -> Result<()> {
        for (field, reason) in FORWARD_CHANGING {
            let set = match self.extra.get(*field) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::Array(a)) => !a.is_empty(),
                Some(Value::Object(o)) => !o.is_empty(),
                Some(_) => true,
            };
            if set {
                return Err(Error::Unsupported {
                    path: path.to_owned(),
                    field: (*field).into(),
                    reason: format!("{reason}; merge it with PEFT instead"),
                });
            }
        }
        Ok(())
    }

    /// The α of `module` (`alpha_pattern` first, as PEFT's `get_pattern_key`).
    pub fn alpha_for(&self, module: &str) -> f64 {
        pattern_value(&self.alpha_pattern, module).unwrap_or(self.lora_alpha)
    }

    /// The rank of `module` (`rank_pattern` first).
    pub fn rank_for(&self, module: &str) -> usize {
        pattern_value(&self.rank_pattern, module).unwrap_or(self.r)
    }

    /// The LoRA scale of `module` with rank `r`: α/r, or α/√r with rsLoRA.
    pub fn scaling_for(&self, module: &str, r: usize) -> f64 {
        let alpha = self.alpha_for(module);
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// The config as the JSON object PEFT writes (keys sorted, every field present).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        if let Value::Object(map) = &mut v {
            // keys sorted, like PEFT's `json.dumps(sort_keys=True)` (serde_json's Map keeps
            // insertion order when another crate turns on `preserve_order`)
            let sorted: BTreeMap<String, Value> = std::mem::take(map).into_iter().collect();
            *map = sorted.into_iter().collect();
        }
        v
    }

    /// Writes `dir/adapter_config.json` (the directory must exist; use an
    /// [`AtomicDir`](kiln_checkpoint::AtomicDir) for the whole adapter).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(&self.to_json()).expect("config serialises");
        kiln_checkpoint::write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }
}

/// PEFT's `get_pattern_key`: the first key (in the map's order) such that the module name
/// matches `(.*\.)?(key)$` from its start. Keys that are not valid regexes match literally.
fn pattern_value<T: Copy>(map: &BTreeMap<String, T>, module: &str) -> Option<T> {
    map.iter().find_map(|(key, v)| {
        let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
            .or_else(|_| regex::Regex::new(&format!(r"^(?:.*\.)?{}$", regex::escape(key))))
            .ok()?;
        re.is_match(module).then_some(*v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_dotted_suffixes_like_peft() {
        let mut map = BTreeMap::new();
        map.insert("c_attn".to_string(), 2usize);
        map.insert("mlp.c_proj".to_string(), 3usize);
        assert_eq!(pattern_value(&map, "transformer.h.0.attn.c_attn"), Some(2));
        assert_eq!(pattern_value(&map, "transformer.h.0.mlp.c_proj"), Some(3));
        assert_eq!(pattern_value(&map, "transformer.h.0.attn.c_proj"), None);
        // a suffix must start at a dot: "xc_attn" is another module
        assert_eq!(pattern_value(&map, "h.0.attn.xc_attn"), None);
    }

    #[test]
    fn scaling_plain_rslora_and_patterns() {
        let mut c = LoraConfig::new(4, 8.0, Modules::List(vec!["q".into()]));
        assert_eq!(c.scaling_for("a.q", 4), 2.0);
        c.use_rslora = true;
        assert_eq!(c.scaling_for("a.q", 4), 4.0);
        c.alpha_pattern.insert("q".into(), 2.0);
        assert_eq!(c.scaling_for("a.q", 4), 1.0);
    }

    #[test]
    fn unknown_fields_are_kept_and_reported() {
        let text = r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "merge_weights": false,
                       "enable_lora": null, "task_type": "CASUAL_LM", "use_qalora": false}"#;
        let c = LoraConfig::parse(text, Path::new("x.json")).unwrap();
        assert_eq!(c.unknown_fields(), vec!["enable_lora", "merge_weights"]);
        let w = c.warnings();
        assert!(
            w[0].contains("enable_lora") && w[1].contains("CASUAL_LM"),
            "{w:?}"
        );
        let back = c.to_json();
        assert_eq!(back["merge_weights"], Value::Bool(false));
        assert_eq!(back["task_type"], "CASUAL_LM");
        c.check_supported(Path::new("x")).unwrap();
    }

    #[test]
    fn forward_changing_fields_are_refused() {
        let text = r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_qalora": true}"#;
        let c = LoraConfig::parse(text, Path::new("x.json")).unwrap();
        let e = c
            .check_supported(Path::new("x.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("use_qalora"), "{e}");
        for bad in [
            r#"{"peft_type": "IA3", "r": 2, "lora_alpha": 4}"#,
            r#"{"peft_type": "LORA", "r": 0, "lora_alpha": 4}"#,
            r#"{"peft_type": "LORA", "lora_alpha": 4}"#,
            r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "bias": "some"}"#,
        ] {
            assert!(
                LoraConfig::parse(bad, Path::new("x.json")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn new_writes_every_peft_field() {
        let c = LoraConfig::new(8, 16.0, Modules::Pattern("all-linear".into()));
        let v = c.to_json();
        for field in [
            "r",
            "lora_alpha",
            "target_modules",
            "rank_pattern",
            "alpha_pattern",
            "use_dora",
            "use_qalora",
            "loftq_config",
            "megatron_core",
            "peft_version",
            "layers_pattern",
        ] {
            assert!(v.get(field).is_some(), "{field} missing");
        }
        assert!(c.unknown_fields().is_empty());
    }
}
