//! A cache of a teacher's top-k log-probabilities: captured once, read by every later run of a
//! sweep instead of running the teacher (offline distillation, as DistillKit, Megatron-LM and
//! maxtext do).
//!
//! A cache is a directory, written atomically (`kiln_checkpoint::AtomicDir`):
//! - `manifest.json`: the format, k, the dtype of the log-probabilities (`bf16` or `f16`), the
//!   vocabulary size, rows per example, the temperature, the teacher's and the data's names and
//!   fingerprints, and each shard's file, first example, example count, size and FNV-1a hash;
//! - `shard-NNNNN.bin`: examples in id order, each `rows × (k indices as u32 LE, k
//!   log-probabilities as bf16/f16 LE, the tail mass 1 − Σ top-k p as f32 LE)` — a fixed size per
//!   example, so example `i` is read at `(i − first) × bytes_per_example` from a memory map.
//!
//! Reading an example costs a copy of `rows × (6k + 4)` bytes (k = 128: 772 bytes per token, about
//! 2.5× DistillKit's compressed ~300; kiln keeps exact indices and 16-bit log-probabilities
//! without polynomial tails). [`TopKCache::check`] refuses a cache made for other data, another
//! k or another vocabulary, naming which; a shard shorter or longer than the manifest says is an
//! error when the cache is opened.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use half::{bf16, f16};
use kiln_checkpoint::AtomicDir;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::loss::SparseTeacher;

/// The manifest's `format`.
pub const FORMAT: &str = "kiln-distill-topk/1";
const MANIFEST: &str = "manifest.json";
/// Examples per shard file.
const EXAMPLES_PER_SHARD: u64 = 4096;

/// 16-bit storage of the log-probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogProbDtype {
    /// bfloat16 (8 exponent bits: no underflow of small log-probabilities).
    Bf16,
    /// IEEE half (more mantissa, range to ±65504).
    F16,
}

impl LogProbDtype {
    fn encode(self, x: f32) -> [u8; 2] {
        match self {
            Self::Bf16 => bf16::from_f32(x).to_le_bytes(),
            Self::F16 => f16::from_f32(x).to_le_bytes(),
        }
    }

    fn decode(self, b: [u8; 2]) -> f32 {
        match self {
            Self::Bf16 => bf16::from_le_bytes(b).to_f32(),
            Self::F16 => f16::from_le_bytes(b).to_f32(),
        }
    }
}

/// What a cache holds and was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Classes kept per row.
    pub k: usize,
    /// Storage of the log-probabilities.
    pub dtype: LogProbDtype,
    /// The teacher's vocabulary (classes per row).
    pub vocab_size: usize,
    /// Logit rows per example (sequence length − 1 for a causal LM, 1 for a classifier).
    pub rows_per_example: usize,
    /// The softmax temperature the log-probabilities were taken at (the student must use it).
    pub temperature: f64,
    /// Which teacher (a path, a run name).
    pub teacher: String,
    /// Which data (a name) — its fingerprint is computed from the examples.
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardEntry {
    file: String,
    first: u64,
    count: u64,
    bytes: u64,
    fnv1a: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    #[serde(flatten)]
    spec: CacheSpec,
    /// FNV-1a of the examples' token ids (or whatever the capture was given), in id order.
    data_fingerprint: String,
    examples: u64,
    bytes_per_example: u64,
    shards: Vec<ShardEntry>,
}

/// FNV-1a 64 over a sequence of u32s (little-endian bytes): the data's fingerprint.
pub fn fingerprint<'a>(examples: impl IntoIterator<Item = &'a [u32]>) -> String {
    let mut h = Fnv::default();
    for ex in examples {
        h.write(&(ex.len() as u64).to_le_bytes());
        for t in ex {
            h.write(&t.to_le_bytes());
        }
    }
    format!("{:016x}", h.0)
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn bytes_per_row(k: usize) -> u64 {
    (6 * k + 4) as u64
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Cache {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Writes a cache: examples in id order, each as its `[rows, vocab]` logits.
pub struct CacheWriter {
    dir: AtomicDir,
    spec: CacheSpec,
    hasher: Fnv,
    examples: u64,
    shard: Option<(BufWriter<File>, ShardEntry, Fnv)>,
    shards: Vec<ShardEntry>,
}

impl CacheWriter {
    /// Starts a cache at `dir` (refused if it exists, unless `force`).
    ///
    /// # Errors
    /// [`Error::Config`] for k = 0, k above the vocabulary, no rows or T ≤ 0; [`Error::Cache`]
    /// for an existing directory or I/O.
    pub fn create(dir: impl AsRef<Path>, spec: CacheSpec, force: bool) -> Result<Self> {
        let bad = |message: String| Err(Error::Config { message });
        if spec.k == 0 || spec.k > spec.vocab_size {
            return bad(format!(
                "cache: k {} must be in 1..={} (the vocabulary)",
                spec.k, spec.vocab_size
            ));
        }
        if spec.rows_per_example == 0 || !(spec.temperature.is_finite() && spec.temperature > 0.0) {
            return bad(format!(
                "cache: rows per example {} must be ≥ 1 and the temperature {} positive",
                spec.rows_per_example, spec.temperature
            ));
        }
        let dir_path = dir.as_ref().to_owned();
        let dir = AtomicDir::create(&dir_path, force).map_err(|e| Error::Cache {
            path: dir_path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            dir,
            spec,
            hasher: Fnv::default(),
            examples: 0,
            shard: None,
            shards: Vec::new(),
        })
    }

    /// Appends the next example: its `tokens` (for the data fingerprint) and the teacher's
    /// `logits` `[rows_per_example, vocab_size]` (any device; copied to the host).
    ///
    /// # Errors
    /// [`Error::Mismatch`] for logits of another shape; [`Error::Cache`] for I/O.
    pub fn push(&mut self, tokens: &[u32], logits: Tensor<2>) -> Result<()> {
        let (r, v) = (self.spec.rows_per_example, self.spec.vocab_size);
        if logits.dims() != [r, v] {
            return Err(Error::Mismatch {
                message: format!(
                    "example {}: teacher logits are {:?}, the cache holds [{r}, {v}] per example",
                    self.examples,
                    logits.dims()
                ),
            });
        }
        self.hasher.write(&(tokens.len() as u64).to_le_bytes());
        for t in tokens {
            self.hasher.write(&t.to_le_bytes());
        }
        let lp = log_softmax(logits.div_scalar(self.spec.temperature), 1)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| Error::Mismatch {
                message: format!("teacher logits: {e:?}"),
            })?;
        let mut record = Vec::with_capacity(r * bytes_per_row(self.spec.k) as usize);
        for row in lp.chunks_exact(v) {
            encode_row(row, self.spec.k, self.spec.dtype, &mut record);
        }
        if self.shard.is_none() {
            let file = format!("shard-{:05}.bin", self.shards.len());
            let path = self.dir.path().join(&file);
            let f = File::create(&path).map_err(io(&path))?;
            self.shard = Some((
                BufWriter::new(f),
                ShardEntry {
                    file,
                    first: self.examples,
                    count: 0,
                    bytes: 0,
                    fnv1a: String::new(),
                },
                Fnv::default(),
            ));
        }
        let (w, entry, h) = self.shard.as_mut().expect("a shard is open");
        let path = self.dir.path().join(&entry.file);
        w.write_all(&record).map_err(io(&path))?;
        h.write(&record);
        entry.count += 1;
        entry.bytes += record.len() as u64;
        self.examples += 1;
        if entry.count == EXAMPLES_PER_SHARD {
            self.close_shard()?;
        }
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some((mut w, mut entry, h)) = self.shard.take() {
            let path = self.dir.path().join(&entry.file);
            w.flush().map_err(io(&path))?;
            entry.fnv1a = format!("{:016x}", h.0);
            self.shards.push(entry);
        }
        Ok(())
    }

    /// Writes the manifest and commits the directory (fsync, rename).
    ///
    /// # Errors
    /// [`Error::Config`] for an empty cache; [`Error::Cache`] for I/O.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.close_shard()?;
        if self.examples == 0 {
            return Err(Error::Config {
                message: "cache: no example was captured".into(),
            });
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            spec: self.spec.clone(),
            data_fingerprint: format!("{:016x}", self.hasher.0),
            examples: self.examples,
            bytes_per_example: self.spec.rows_per_example as u64 * bytes_per_row(self.spec.k),
            shards: self.shards.clone(),
        };
        let path = self.dir.path().join(MANIFEST);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&manifest).expect("manifest serialises"),
        )
        .map_err(io(&path))?;
        let target = self.dir.target().to_owned();
        self.dir.commit().map_err(|e| Error::Cache {
            path: target,
            message: e.to_string(),
        })
    }
}

/// The top k of one row of log-probabilities (ties to the lower index), encoded.
fn encode_row(row: &[f32], k: usize, dtype: LogProbDtype, out: &mut Vec<u8>) {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    let mass: f64 = idx.iter().map(|&i| f64::from(row[i as usize]).exp()).sum();
    for &i in &idx {
        out.extend_from_slice(&i.to_le_bytes());
    }
    for &i in &idx {
        out.extend_from_slice(&dtype.encode(row[i as usize]));
    }
    out.extend_from_slice(&((1.0 - mass).max(0.0) as f32).to_le_bytes());
}

/// One cached row: the teacher's top-k classes, their log-probabilities (decoded from 16 bits)
/// and the tail mass.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedRow {
    /// Class indices, most probable first.
    pub indices: Vec<u32>,
    /// Their log-probabilities.
    pub log_probs: Vec<f32>,
    /// 1 − Σ top-k p.
    pub tail: f32,
}

/// An open cache: memory-mapped shards, checked against the manifest.
pub struct TopKCache {
    dir: PathBuf,
    manifest: Manifest,
    maps: Vec<Mmap>,
}

impl std::fmt::Debug for TopKCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopKCache")
            .field("dir", &self.dir)
            .field("spec", &self.manifest.spec)
            .field("examples", &self.manifest.examples)
            .finish_non_exhaustive()
    }
}

impl TopKCache {
    /// Opens the cache at `dir`: reads the manifest and maps every shard, checking its size (a
    /// truncated or padded shard is an error naming it).
    ///
    /// # Errors
    /// [`Error::Cache`] naming the file and what is wrong.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        let bad = |path: &Path, message: String| Error::Cache {
            path: path.to_owned(),
            message,
        };
        let mpath = dir.join(MANIFEST);
        let text = std::fs::read(&mpath).map_err(io(&mpath))?;
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| bad(&mpath, format!("not a kiln-distill cache manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(bad(
                &mpath,
                format!(
                    "format `{}`, this kiln-distill reads `{FORMAT}`",
                    manifest.format
                ),
            ));
        }
        let per = manifest.spec.rows_per_example as u64 * bytes_per_row(manifest.spec.k);
        if manifest.bytes_per_example != per {
            return Err(bad(
                &mpath,
                format!(
                    "bytes_per_example {} does not fit k {} and {} rows ({per})",
                    manifest.bytes_per_example, manifest.spec.k, manifest.spec.rows_per_example
                ),
            ));
        }
        let mut maps = Vec::new();
        let mut next = 0;
        for s in &manifest.shards {
            let path = dir.join(&s.file);
            if s.first != next || s.bytes != s.count * per {
                return Err(bad(
                    &mpath,
                    format!(
                        "shard `{}` does not follow its predecessor or has the wrong size",
                        s.file
                    ),
                ));
            }
            let f = File::open(&path).map_err(io(&path))?;
            let len = f.metadata().map_err(io(&path))?.len();
            if len != s.bytes {
                return Err(bad(
                    &path,
                    format!(
                        "{len} bytes, the manifest says {} ({} examples): the shard is truncated or damaged; capture the cache again",
                        s.bytes, s.count
                    ),
                ));
            }
            // SAFETY: the file is opened read-only and not modified while mapped (caches are
            // written once, atomically).
            let map = unsafe { Mmap::map(&f) }.map_err(io(&path))?;
            maps.push(map);
            next += s.count;
        }
        if next != manifest.examples {
            return Err(bad(
                &mpath,
                format!(
                    "the shards hold {next} examples, the manifest says {}",
                    manifest.examples
                ),
            ));
        }
        Ok(Self {
            dir,
            manifest,
            maps,
        })
    }

    /// What the cache holds.
    pub fn spec(&self) -> &CacheSpec {
        &self.manifest.spec
    }

    /// Examples cached.
    pub fn len(&self) -> u64 {
        self.manifest.examples
    }

    /// Whether the cache is empty (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.manifest.examples == 0
    }

    /// Bytes stored per token (row): `6k + 4`.
    pub fn bytes_per_row(&self) -> u64 {
        bytes_per_row(self.manifest.spec.k)
    }

    /// The data fingerprint the cache was made from.
    pub fn data_fingerprint(&self) -> &str {
        &self.manifest.data_fingerprint
    }

    /// Checks that this cache fits a run: the same data (fingerprint of its examples), the
    /// student's vocabulary and, if given, k.
    ///
    /// # Errors
    /// [`Error::Mismatch`] saying which differs, with both values.
    pub fn check(&self, data_fingerprint: &str, vocab_size: usize, k: Option<usize>) -> Result<()> {
        let s = &self.manifest.spec;
        let at = self.dir.display();
        if data_fingerprint != self.manifest.data_fingerprint {
            return Err(Error::Mismatch {
                message: format!(
                    "the cache at {at} was made for other data (`{}`, fingerprint {}) than this run's (fingerprint {data_fingerprint}): capture it again for this data",
                    s.data, self.manifest.data_fingerprint
                ),
            });
        }
        if vocab_size != s.vocab_size {
            return Err(Error::Mismatch {
                message: format!(
                    "the cache at {at} holds a vocabulary of {} (another tokenizer?), the student has {vocab_size}",
                    s.vocab_size
                ),
            });
        }
        if let Some(k) = k
            && k != s.k
        {
            return Err(Error::Mismatch {
                message: format!(
                    "the cache at {at} holds the top {}, this run asks for the top {k}",
                    s.k
                ),
            });
        }
        Ok(())
    }

    fn record(&self, id: u64) -> Result<&[u8]> {
        let per = self.manifest.bytes_per_example;
        for (s, map) in self.manifest.shards.iter().zip(&self.maps) {
            if id >= s.first && id < s.first + s.count {
                let at = ((id - s.first) * per) as usize;
                return Ok(&map[at..at + per as usize]);
            }
        }
        Err(Error::Mismatch {
            message: format!(
                "example {id} is not in the cache at {} ({} examples)",
                self.dir.display(),
                self.manifest.examples
            ),
        })
    }

    /// The raw top-k of example `id`, one [`CachedRow`] per row.
    ///
    /// # Errors
    /// [`Error::Mismatch`] for an id outside the cache.
    pub fn example(&self, id: u64) -> Result<Vec<CachedRow>> {
        let k = self.manifest.spec.k;
        let dtype = self.manifest.spec.dtype;
        let rec = self.record(id)?;
        Ok(rec
            .chunks_exact(bytes_per_row(k) as usize)
            .map(|row| {
                let idx = row[..4 * k]
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let lp = row[4 * k..6 * k]
                    .chunks_exact(2)
                    .map(|b| dtype.decode([b[0], b[1]]))
                    .collect();
                let t = &row[6 * k..];
                CachedRow {
                    indices: idx,
                    log_probs: lp,
                    tail: f32::from_le_bytes([t[0], t[1], t[2], t[3]]),
                }
            })
            .collect())
    }

    /// The rows of examples `ids` (in order, each example's rows in a block) as a
    /// [`SparseTeacher`] on `device`.
    ///
    /// # Errors
    /// [`Error::Mismatch`] for an id outside the cache.
    pub fn rows(&self, ids: &[u64], device: &Device) -> Result<SparseTeacher> {
        let k = self.manifest.spec.k;
        let n = ids.len() * self.manifest.spec.rows_per_example;
        let (mut idx, mut lp, mut tail) = (
            Vec::with_capacity(n * k),
            Vec::with_capacity(n * k),
            Vec::with_capacity(n),
        );
        for &id in ids {
            for row in self.example(id)? {
                idx.extend(row.indices.into_iter().map(i64::from));
                lp.extend(row.log_probs);
                tail.push(row.tail);
            }
        }
        Ok(SparseTeacher {
            indices: Tensor::<2, Int>::from_data(TensorData::new(idx, [n, k]), device),
            log_probs: Tensor::<2>::from_data(TensorData::new(lp, [n, k]), device),
            tail: Tensor::<1>::from_data(TensorData::new(tail, [n]), device),
        })
    }

    /// The manifest's shards: file name → (first example, count).
    pub fn shards(&self) -> BTreeMap<String, (u64, u64)> {
        self.manifest
            .shards
            .iter()
            .map(|s| (s.file.clone(), (s.first, s.count)))
            .collect()
    }
}
