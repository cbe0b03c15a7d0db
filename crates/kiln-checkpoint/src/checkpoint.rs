//! A Hugging Face model directory: one or many safetensors shards, an index, a config.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::HfConfig;
use crate::error::{Error, Result, io_err};
use crate::file::{SafetensorsFile, TensorView};
use crate::header::TensorInfo;
use crate::paths::{Kind, kind};

/// File name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of the shard index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// File name of the model config.
pub const CONFIG_FILE: &str = "config.json";
/// File name of a diffusers component's single-file checkpoint (`unet/`, `vae/`).
pub const DIFFUSERS_SINGLE_FILE: &str = "diffusion_pytorch_model.safetensors";
/// File name of a diffusers component's shard index.
pub const DIFFUSERS_INDEX_FILE: &str = "diffusion_pytorch_model.safetensors.index.json";

/// A checkpoint opened for lazy, per-tensor reading.
///
/// Open a model directory (`model.safetensors`, or shards listed by
/// `model.safetensors.index.json`; a diffusers component's `diffusion_pytorch_model.*` alike) or
/// a single `.safetensors` file. Every shard is memory-mapped
/// and its header validated up front; tensor data is read only when asked for.
///
/// ```no_run
/// use kiln_checkpoint::Checkpoint;
/// let ckpt = Checkpoint::open("models/gpt2")?;
/// let wte = ckpt.tensor("transformer.wte.weight")?;
/// println!("{:?} {}", wte.shape(), wte.dtype());
/// let values: Vec<f32> = wte.to_f32()?;
/// # Ok::<(), kiln_checkpoint::Error>(())
/// ```
#[derive(Debug)]
pub struct Checkpoint {
    root: PathBuf,
    files: Vec<SafetensorsFile>,
    /// name → (file, index in that file's header)
    by_name: HashMap<String, (usize, usize)>,
    /// Names in the order of the files' headers.
    order: Vec<String>,
    config: Option<HfConfig>,
}

impl Checkpoint {
    /// Opens a model directory or a single safetensors file (read-only).
    ///
    /// # Errors
    /// [`Error::NoWeights`] for a directory without safetensors weights; [`Error::Index`],
    /// [`Error::MissingShard`], [`Error::TensorNotInShard`] for a bad index;
    /// [`Error::DuplicateTensor`] if two shards hold the same name; the errors of
    /// [`SafetensorsFile::open`] and [`HfConfig::read`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match kind(path)? {
            Kind::File => {
                let file = SafetensorsFile::open(path)?;
                let dir = path.parent().unwrap_or(Path::new("."));
                let config = read_config(dir)?;
                return Self::from_files(path.to_owned(), vec![file], None, config);
            }
            Kind::Dir => {}
            Kind::Missing => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no such file or directory",
                    ),
                });
            }
            Kind::Other(what) => {
                return Err(Error::NotARegularFile {
                    path: path.to_owned(),
                    kind: what,
                });
            }
        }
        let config = read_config(path)?;
        for (index_name, single_name) in [
            (INDEX_FILE, SINGLE_FILE),
            (DIFFUSERS_INDEX_FILE, DIFFUSERS_SINGLE_FILE),
        ] {
            let index_path = path.join(index_name);
            if regular_file(&index_path)? {
                let (shards, weight_map) = read_index(&index_path)?;
                let mut files = Vec::with_capacity(shards.len());
                for shard in &shards {
                    let p = path.join(shard);
                    if !regular_file(&p)? {
                        return Err(Error::MissingShard {
                            index: index_path.clone(),
                            dir: path.to_owned(),
                            shard: shard.clone(),
                        });
                    }
                    files.push(SafetensorsFile::open(&p)?);
                }
                let map = weight_map
                    .into_iter()
                    .map(|(tensor, shard)| {
                        let i = shards
                            .iter()
                            .position(|s| *s == shard)
                            .expect("shards come from the map");
                        (tensor, i)
                    })
                    .collect();
                return Self::from_files(
                    path.to_owned(),
                    files,
                    Some((index_path, shards, map)),
                    config,
                );
            }
            let single = path.join(single_name);
            if regular_file(&single)? {
                let file = SafetensorsFile::open(&single)?;
                return Self::from_files(path.to_owned(), vec![file], None, config);
            }
        }
        Err(Error::NoWeights {
            dir: path.to_owned(),
        })
    }

    fn from_files(
        root: PathBuf,
        files: Vec<SafetensorsFile>,
        index: Option<(PathBuf, Vec<String>, BTreeMap<String, usize>)>,
        config: Option<HfConfig>,
    ) -> Result<Self> {
        let mut by_name = HashMap::new();
        let mut order = Vec::new();
        for (fi, file) in files.iter().enumerate() {
            for (ti, t) in file.header().tensors.iter().enumerate() {
                if by_name.insert(t.name.clone(), (fi, ti)).is_some() {
                    return Err(Error::DuplicateTensor {
                        path: root.display().to_string(),
                        name: t.name.clone(),
                    });
                }
                order.push(t.name.clone());
            }
        }
        if let Some((index_path, shards, map)) = index {
            // The index is the authority on which tensors the checkpoint has, as in transformers.
            for (tensor, &shard) in &map {
                match by_name.get(tensor) {
                    Some(&(fi, _)) if fi == shard => {}
                    _ => {
                        return Err(Error::TensorNotInShard {
                            index: index_path,
                            tensor: tensor.clone(),
                            shard: shards[shard].clone(),
                        });
                    }
                }
            }
            order.retain(|n| map.contains_key(n));
            by_name.retain(|n, _| map.contains_key(n));
        }
        Ok(Self {
            root,
            files,
            by_name,
            order,
            config,
        })
    }

    /// The directory (or file) opened.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Tensor names, in shard and header order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the checkpoint has no tensors.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Name, dtype, shape and offsets of a tensor, if present.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name
            .get(name)
            .map(|&(f, t)| &self.files[f].header().tensors[t])
    }

    /// A tensor's view.
    ///
    /// # Errors
    /// [`Error::TensorNotFound`], with a suggestion when a name differs only by a prefix.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        match self.by_name.get(name) {
            Some(&(f, t)) => Ok(self.files[f].view(&self.files[f].header().tensors[t])),
            None => Err(Error::TensorNotFound {
                checkpoint: self.root.clone(),
                name: name.to_owned(),
                suggestion: self
                    .order
                    .iter()
                    .find(|n| n.ends_with(name) || name.ends_with(n.as_str()))
                    .cloned(),
            }),
        }
    }

    /// Drops a tensor's pages from this process's resident memory (see
    /// [`SafetensorsFile::release`]).
    pub fn release(&self, name: &str) {
        if let Some(&(f, _)) = self.by_name.get(name) {
            self.files[f].release(name);
        }
    }

    /// The parsed `config.json`, if the directory has one.
    pub fn config(&self) -> Option<&HfConfig> {
        self.config.as_ref()
    }

    /// `__metadata__` of the first shard (e.g. `{"format": "pt"}`).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.files
            .first()
            .map(|f| f.header().metadata.clone())
            .unwrap_or_default()
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> u64 {
        self.order
            .iter()
            .filter_map(|n| self.info(n))
            .map(|t| t.byte_len() as u64)
            .sum()
    }

    /// The shard files.
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }
}

/// Whether `path` is a regular file: `false` when nothing is there, an error naming what is
/// there instead (a FIFO, a symlink loop, a directory) otherwise.
fn regular_file(path: &Path) -> Result<bool> {
    match kind(path)? {
        Kind::File => Ok(true),
        Kind::Missing => Ok(false),
        Kind::Dir => Err(Error::NotARegularFile {
            path: path.to_owned(),
            kind: "a directory".into(),
        }),
        Kind::Other(what) => Err(Error::NotARegularFile {
            path: path.to_owned(),
            kind: what,
        }),
    }
}

fn read_config(dir: &Path) -> Result<Option<HfConfig>> {
    let p = dir.join(CONFIG_FILE);
    if regular_file(&p)? {
        HfConfig::read(&p).map(Some)
    } else {
        Ok(None)
    }
}

/// Shard names in first-appearance order and the weight map (tensor → shard name).
fn read_index(path: &Path) -> Result<(Vec<String>, BTreeMap<String, String>)> {
    let bad = |message: String| Error::Index {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut shards = Vec::new();
    let mut weight_map = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| bad(format!("`weight_map.{tensor}` must be a file name string")))?;
        if shard.contains('/') || shard.contains('\\') || shard == ".." {
            return Err(bad(format!(
                "shard name `{shard}` must be a plain file name in the model directory"
            )));
        }
        if !shards.iter().any(|s| s == shard) {
            shards.push(shard.to_owned());
        }
        weight_map.insert(tensor.clone(), shard.to_owned());
    }
    shards.sort();
    Ok((shards, weight_map))
}
