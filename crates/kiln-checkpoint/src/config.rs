//! `config.json`: untyped JSON with typed accessors for the fields model crates need.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result, io_err};

/// A Hugging Face `config.json`, kept as JSON so unknown fields survive a round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    path: PathBuf,
    value: Value,
}

impl HfConfig {
    /// Reads `path`.
    ///
    /// # Errors
    /// [`Error::Io`], or [`Error::Config`] if it is not a JSON object.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` names it in errors.
    ///
    /// # Errors
    /// [`Error::Config`] if it is not a JSON object.
    pub fn parse(text: &str, path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Config {
            path: path.clone(),
            message: format!("not valid JSON: {e}"),
        })?;
        if !value.is_object() {
            return Err(Error::Config {
                path,
                message: "config.json must be a JSON object".into(),
            });
        }
        Ok(Self { path, value })
    }

    /// The whole config.
    pub fn json(&self) -> &Value {
        &self.value
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The first of `keys` present, as an unsigned integer.
    ///
    /// # Errors
    /// [`Error::Config`] if the present key is not a non-negative integer.
    pub fn usize_any(&self, keys: &[&str]) -> Result<Option<usize>> {
        for key in keys {
            if let Some(v) = self.value.get(*key) {
                if v.is_null() {
                    continue;
                }
                return v
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| Error::Config {
                        path: self.path.clone(),
                        message: format!("`{key}` must be a non-negative integer, got {v}"),
                    });
            }
        }
        Ok(None)
    }

    /// A string field.
    ///
    /// # Errors
    /// [`Error::Config`] if present but not a string.
    pub fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(Error::Config {
                path: self.path.clone(),
                message: format!("`{key}` must be a string, got {v}"),
            }),
        }
    }

    /// Number of transformer layers (`num_hidden_layers`, GPT-2's `n_layer`, `num_layers`,
    /// `n_layers`).
    ///
    /// # Errors
    /// As [`usize_any`](Self::usize_any).
    pub fn num_hidden_layers(&self) -> Result<Option<usize>> {
        self.usize_any(&["num_hidden_layers", "n_layer", "num_layers", "n_layers"])
    }

    /// Hidden size (`hidden_size`, `n_embd`, `d_model`).
    ///
    /// # Errors
    /// As [`usize_any`](Self::usize_any).
    pub fn hidden_size(&self) -> Result<Option<usize>> {
        self.usize_any(&["hidden_size", "n_embd", "d_model"])
    }

    /// Vocabulary size.
    ///
    /// # Errors
    /// As [`usize_any`](Self::usize_any).
    pub fn vocab_size(&self) -> Result<Option<usize>> {
        self.usize_any(&["vocab_size"])
    }

    /// `model_type` (`"gpt2"`, `"bert"`, ...).
    ///
    /// # Errors
    /// As [`str`](Self::str).
    pub fn model_type(&self) -> Result<Option<&str>> {
        self.str("model_type")
    }

    /// `architectures` (`["GPT2LMHeadModel"]`).
    pub fn architectures(&self) -> Vec<&str> {
        self.value
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_accessors_read_gpt2_and_bert_names() {
        let gpt2 = HfConfig::parse(r#"{"n_layer": 12, "n_embd": 768, "vocab_size": 50257, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}"#, "c").unwrap();
        assert_eq!(gpt2.num_hidden_layers().unwrap(), Some(12));
        assert_eq!(gpt2.hidden_size().unwrap(), Some(768));
        assert_eq!(gpt2.architectures(), vec!["GPT2LMHeadModel"]);
        let bert = HfConfig::parse(r#"{"num_hidden_layers": 2, "hidden_size": 64}"#, "c").unwrap();
        assert_eq!(bert.num_hidden_layers().unwrap(), Some(2));
        assert_eq!(bert.model_type().unwrap(), None);
    }

    #[test]
    fn wrong_types_are_errors() {
        let c = HfConfig::parse(r#"{"n_layer": "twelve"}"#, "c").unwrap();
        assert!(
            c.num_hidden_layers()
                .unwrap_err()
                .to_string()
                .contains("`n_layer` must be")
        );
        assert!(HfConfig::parse("[1]", "c").is_err());
        assert!(HfConfig::parse("{", "c").is_err());
    }
}
