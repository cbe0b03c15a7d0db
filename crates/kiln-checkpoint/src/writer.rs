//! Writing checkpoints: a shard plan, a streaming sharded writer, and atomic output directories.
//!
//! The writer streams: it needs every tensor's name, dtype and shape up front (the
//! [`ShardPlan`]), writes each shard's header first, and then takes tensor data one tensor at a
//! time, in plan order, straight to disk. Memory use is one tensor, whatever the shard size.
//! Everything goes to a hidden sibling directory that is fsynced and renamed into place only when
//! complete ([`AtomicDir`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::atomic::{AtomicDir, with_atomic_file};
use crate::checkpoint::{INDEX_FILE, SINGLE_FILE};
use crate::dtype::Dtype;
use crate::error::{Error, Result, io_err};
use crate::header::Header;

/// Default maximum shard size: 5 GB (5 × 10⁹ bytes), as transformers and mergekit.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Name, dtype and shape of a tensor to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Size of the data in bytes.
    pub fn byte_len(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// How tensors are split into shard files.
///
/// Tensors keep their order. A new shard starts when adding the next tensor would take the
/// current one past `max_shard_bytes` (tensor data only, headers not counted); a tensor larger
/// than the limit therefore gets a shard of its own, which is larger than the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    shards: Vec<Vec<TensorSpec>>,
    max_shard_bytes: u64,
}

impl ShardPlan {
    /// Splits `tensors` into shards of at most `max_shard_bytes` bytes each (see above).
    ///
    /// # Errors
    /// [`Error::DuplicateTensor`] for a repeated name; [`Error::WriterOrder`] for a zero limit.
    pub fn new(tensors: Vec<TensorSpec>, max_shard_bytes: u64) -> Result<Self> {
        if max_shard_bytes == 0 {
            return Err(Error::WriterOrder {
                message: "the maximum shard size must be at least one byte".into(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        let mut shards: Vec<Vec<TensorSpec>> = vec![Vec::new()];
        let mut current = 0u64;
        for t in tensors {
            if !seen.insert(t.name.clone()) {
                return Err(Error::DuplicateTensor {
                    path: "output plan".into(),
                    name: t.name,
                });
            }
            let len = t.byte_len();
            let last = shards.last_mut().expect("at least one shard");
            if !last.is_empty() && current + len > max_shard_bytes {
                shards.push(Vec::new());
                current = 0;
            }
            current += len;
            shards.last_mut().expect("at least one shard").push(t);
        }
        Ok(Self {
            shards,
            max_shard_bytes,
        })
    }

    /// The shards, each a list of tensors in write order.
    pub fn shards(&self) -> &[Vec<TensorSpec>] {
        &self.shards
    }

    /// Every tensor in write order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorSpec> {
        self.shards.iter().flatten()
    }

    /// The limit the plan was made with.
    pub fn max_shard_bytes(&self) -> u64 {
        self.max_shard_bytes
    }

    /// Total tensor bytes (the index's `metadata.total_size`).
    pub fn total_bytes(&self) -> u64 {
        self.tensors().map(TensorSpec::byte_len).sum()
    }

    /// File name of shard `i`: `model.safetensors` when there is one shard, else
    /// `model-00001-of-00003.safetensors` and so on (the names transformers writes).
    pub fn file_name(&self, i: usize) -> String {
        if self.shards.len() == 1 {
            SINGLE_FILE.to_owned()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, self.shards.len())
        }
    }
}

/// Writes a sharded safetensors checkpoint, one tensor at a time, into an [`AtomicDir`].
///
/// ```
/// use kiln_checkpoint::{CheckpointWriter, Dtype, ShardPlan, TensorSpec, Checkpoint};
/// let dir = tempfile::tempdir()?;
/// let out = dir.path().join("merged");
/// let plan = ShardPlan::new(vec![
///     TensorSpec { name: "a".into(), dtype: Dtype::F32, shape: vec![2] },
///     TensorSpec { name: "b".into(), dtype: Dtype::BF16, shape: vec![3] },
/// ], 8)?; // 8-byte shards: "a" and "b" land in two files
/// let mut w = CheckpointWriter::create(&out, plan, Default::default(), false)?;
/// w.write_tensor("a", &[0u8; 8])?;
/// w.write_tensor("b", &[0u8; 6])?;
/// w.finish()?;
/// assert_eq!(Checkpoint::open(&out)?.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct CheckpointWriter {
    dir: AtomicDir,
    plan: ShardPlan,
    metadata: BTreeMap<String, String>,
    shard: usize,
    next: usize,
    file: Option<(PathBuf, BufWriter<File>)>,
}

impl CheckpointWriter {
    /// Starts writing `plan` into `out` (see [`AtomicDir::create`] for `force`). `metadata` is
    /// written into every shard's `__metadata__`; empty means `{"format": "pt"}`, which
    /// transformers expects.
    ///
    /// # Errors
    /// As [`AtomicDir::create`].
    pub fn create(
        out: impl AsRef<Path>,
        plan: ShardPlan,
        metadata: BTreeMap<String, String>,
        force: bool,
    ) -> Result<Self> {
        let mut metadata = metadata;
        if metadata.is_empty() {
            metadata.insert("format".into(), "pt".into());
        }
        Ok(Self {
            dir: AtomicDir::create(out, force)?,
            plan,
            metadata,
            shard: 0,
            next: 0,
            file: None,
        })
    }

    /// The plan being written.
    pub fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    /// The staging directory (files become visible at the target only on [`finish`](Self::finish)).
    pub fn staging_path(&self) -> &Path {
        self.dir.path()
    }

    /// The tensor the writer expects next, or `None` when all are written.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.plan
            .shards
            .get(self.shard)
            .and_then(|s| s.get(self.next))
    }

    /// Writes the next tensor's bytes (little-endian, in the planned dtype).
    ///
    /// # Errors
    /// [`Error::WriterOrder`] if `name` is not the next planned tensor or `data` has the wrong
    /// length; [`Error::Io`].
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let r = self.write_tensor_staged(name, data);
        r.map_err(|e| self.as_output(e))
    }

    fn write_tensor_staged(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let spec = self.next_tensor().ok_or_else(|| Error::WriterOrder {
            message: format!("`{name}` written after every planned tensor"),
        })?;
        if spec.name != name {
            return Err(Error::WriterOrder {
                message: format!("expected tensor `{}` next, got `{name}`", spec.name),
            });
        }
        if spec.byte_len() != data.len() as u64 {
            return Err(Error::WriterOrder {
                message: format!(
                    "`{name}` should have {} bytes ({} {:?}), got {}",
                    spec.byte_len(),
                    spec.dtype,
                    spec.shape,
                    data.len()
                ),
            });
        }
        if self.file.is_none() {
            self.open_shard()?;
        }
        let (path, file) = self.file.as_mut().expect("opened above");
        file.write_all(data).map_err(io_err(path.as_path()))?;
        self.next += 1;
        if self.next == self.plan.shards[self.shard].len() {
            self.close_shard()?;
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<()> {
        let name = self.plan.file_name(self.shard);
        let path = self.dir.path().join(&name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut file = BufWriter::with_capacity(8 << 20, file);
        let specs = &self.plan.shards[self.shard];
        let entries: Vec<(&str, Dtype, &[usize])> = specs
            .iter()
            .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice()))
            .collect();
        file.write_all(&Header::encode(&self.metadata, &entries))
            .map_err(io_err(&path))?;
        self.file = Some((path, file));
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some((path, file)) = self.file.take() {
            let file = file
                .into_inner()
                .map_err(|e| io_err(&path)(e.into_error()))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        self.shard += 1;
        self.next = 0;
        Ok(())
    }

    /// Writes an extra file (config.json, a model card, ...) into the output directory.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::WriterOrder`] for a name that is not a plain file name.
    pub fn write_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.extra_path(name)?;
        std::fs::write(&path, bytes)
            .map_err(io_err(&path))
            .map_err(|e| self.as_output(e))
    }

    /// An I/O error on a staged file, reported under the output's name (the hidden staging
    /// directory means nothing to the user; the directory they asked for does).
    fn as_output(&self, e: Error) -> Error {
        as_output(e, self.dir.path(), self.dir.target())
    }

    /// Copies `src` into the output directory as `name`.
    ///
    /// # Errors
    /// As [`write_file`](Self::write_file).
    pub fn copy_file(&mut self, src: &Path, name: &str) -> Result<()> {
        let path = self.extra_path(name)?;
        std::fs::copy(src, &path).map_err(io_err(src))?;
        Ok(())
    }

    fn extra_path(&self, name: &str) -> Result<PathBuf> {
        let plain = Path::new(name).file_name().is_some_and(|f| f == name) && name != "..";
        if !plain {
            return Err(Error::WriterOrder {
                message: format!("extra file name `{name}` must be a plain file name"),
            });
        }
        Ok(self.dir.path().join(name))
    }

    /// Checks every planned tensor was written, writes the index (for several shards), fsyncs and
    /// renames the directory into place. Returns the final path.
    ///
    /// # Errors
    /// [`Error::WriterOrder`] if tensors are missing; [`Error::Io`]; [`Error::OutputExists`].
    pub fn finish(self) -> Result<PathBuf> {
        let (staging, target) = (self.dir.path().to_owned(), self.dir.target().to_owned());
        self.finish_staged()
            .map_err(|e| as_output(e, &staging, &target))
    }

    fn finish_staged(mut self) -> Result<PathBuf> {
        if self.plan.tensors().next().is_none() && self.shard == 0 {
            // No tensors at all: still write a valid, empty model.safetensors.
            self.open_shard()?;
            self.close_shard()?;
        }
        if let Some(spec) = self.next_tensor() {
            return Err(Error::WriterOrder {
                message: format!("finished before tensor `{}` was written", spec.name),
            });
        }
        if self.plan.shards.len() > 1 {
            let mut weight_map = serde_json::Map::new();
            for (i, shard) in self.plan.shards.iter().enumerate() {
                for t in shard {
                    weight_map.insert(t.name.clone(), self.plan.file_name(i).into());
                }
            }
            let index = serde_json::json!({
                "metadata": { "total_size": self.plan.total_bytes() },
                "weight_map": weight_map,
            });
            let text = serde_json::to_string_pretty(&index).expect("JSON serialises");
            self.write_file(INDEX_FILE, text.as_bytes())?;
        }
        self.dir.commit()
    }
}

/// An I/O error on a file under `staging`, reported under the same name in `target`.
fn as_output(e: Error, staging: &Path, target: &Path) -> Error {
    match e {
        Error::Io { path, source } => Error::Io {
            path: path
                .strip_prefix(staging)
                .map_or(path.clone(), |rest| target.join(rest)),
            source,
        },
        other => other,
    }
}

/// Writes one safetensors file atomically (temporary sibling, fsync, rename): `tensors` are
/// `(name, dtype, shape, little-endian bytes)` in file order.
///
/// # Errors
/// [`Error::WriterOrder`] if a tensor's bytes do not match its shape; [`Error::DuplicateTensor`];
/// [`Error::Io`].
pub fn write_file(
    path: &Path,
    tensors: &[(&str, Dtype, &[usize], &[u8])],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (name, dtype, shape, bytes) in tensors {
        if !seen.insert(*name) {
            return Err(Error::DuplicateTensor {
                path: path.display().to_string(),
                name: (*name).to_owned(),
            });
        }
        let want = shape.iter().product::<usize>() * dtype.size();
        if bytes.len() != want {
            return Err(Error::WriterOrder {
                message: format!(
                    "`{name}` should have {want} bytes ({dtype} {shape:?}), got {}",
                    bytes.len()
                ),
            });
        }
    }
    let entries: Vec<(&str, Dtype, &[usize])> =
        tensors.iter().map(|(n, d, s, _)| (*n, *d, *s)).collect();
    with_atomic_file(path, |f| {
        f.write_all(&Header::encode(metadata, &entries))?;
        for (_, _, _, bytes) in tensors {
            f.write_all(bytes)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, bytes: usize) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: Dtype::U8,
            shape: vec![bytes],
        }
    }

    #[test]
    fn shards_split_at_the_byte_limit_and_big_tensors_stand_alone() {
        let plan = ShardPlan::new(
            vec![
                spec("a", 4),
                spec("b", 4),
                spec("c", 3),
                spec("big", 20),
                spec("d", 1),
            ],
            8,
        )
        .unwrap();
        let names: Vec<Vec<&str>> = plan
            .shards()
            .iter()
            .map(|s| s.iter().map(|t| t.name.as_str()).collect())
            .collect();
        assert_eq!(
            names,
            vec![vec!["a", "b"], vec!["c"], vec!["big"], vec!["d"]]
        );
        assert_eq!(plan.file_name(0), "model-00001-of-00004.safetensors");
        assert_eq!(plan.total_bytes(), 32);
        assert!(matches!(
            ShardPlan::new(vec![spec("a", 1), spec("a", 1)], 8),
            Err(Error::DuplicateTensor { .. })
        ));
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        let plan = ShardPlan::new(vec![spec("a", 4), spec("b", 4)], 4).unwrap();
        let mut w = CheckpointWriter::create(&out, plan, BTreeMap::new(), false).unwrap();
        w.write_tensor("a", &[1, 2, 3, 4]).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn misuse_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let plan = ShardPlan::new(vec![spec("a", 4), spec("b", 4)], 100).unwrap();
        let mut w =
            CheckpointWriter::create(dir.path().join("o"), plan, BTreeMap::new(), false).unwrap();
        assert!(matches!(
            w.write_tensor("b", &[0; 4]),
            Err(Error::WriterOrder { .. })
        ));
        assert!(matches!(
            w.write_tensor("a", &[0; 3]),
            Err(Error::WriterOrder { .. })
        ));
        w.write_tensor("a", &[0; 4]).unwrap();
        assert!(w.write_file("../escape", b"x").is_err());
        let err = w.finish().unwrap_err();
        assert!(err.to_string().contains("before tensor `b`"), "{err}");
    }

    #[test]
    fn errors_on_staged_files_name_the_output() {
        let e = as_output(
            Error::Io {
                path: "/d/.out.kiln-tmp-0a0b0c0d-7-0/model.safetensors".into(),
                source: std::io::Error::other("No space left on device"),
            },
            Path::new("/d/.out.kiln-tmp-0a0b0c0d-7-0"),
            Path::new("/d/out"),
        );
        assert_eq!(
            e.to_string(),
            "/d/out/model.safetensors: No space left on device"
        );
    }

    #[test]
    fn single_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        let bytes = 7i64.to_le_bytes();
        write_file(
            &p,
            &[
                ("a", Dtype::I64, &[1], &bytes),
                ("b", Dtype::U8, &[2], &[1, 2]),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        let f = crate::SafetensorsFile::open(&p).unwrap();
        assert_eq!(f.tensor("a").unwrap().data, &bytes);
        assert!(write_file(&p, &[("a", Dtype::U8, &[3], &[1])], &BTreeMap::new()).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
