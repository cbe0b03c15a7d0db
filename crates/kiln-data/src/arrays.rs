//! Array shards: fixed-shape f32 records (precomputed VAE latents and text embeddings, say)
//! written once and memory-mapped for training — CommonCanvas's first speed switch, the encoders
//! run once instead of every step.
//!
//! A shard is a directory:
//! - one `NAME.bin` per field: every record's values back to back, little-endian `f32`
//!   (record `i` of a field of shape `S` is values `i·|S| .. (i+1)·|S|`);
//! - `index.json` — format, version, the record count and each field's name and shape.
//!
//! The directory is written atomically (temporary sibling, fsync, rename) and checked when
//! opened: a file whose length does not match the index is an error, never silently short.
//! Reading a record is a slice of the mapped file (no copy) on little-endian machines.
//!
//! ```
//! use kiln_data::arrays::{ArrayShard, ArrayShardWriter, Field};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("latents");
//! let fields = [Field::new("latent", &[4, 2, 2]), Field::new("embed", &[3, 8])];
//! let mut w = ArrayShardWriter::create(&path, &fields, false)?;
//! for i in 0..10 {
//!     w.push(&[&[i as f32; 16], &[0.5; 24]])?;
//! }
//! w.finish()?;
//! let shard = ArrayShard::open(&path)?;
//! assert_eq!(shard.len(), 10);
//! assert_eq!(shard.get("latent", 7)?, &[7.0; 16][..]);
//! assert_eq!(shard.field("embed")?.shape, vec![3, 8]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_checkpoint::AtomicDir;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io_err};

const FORMAT: &str = "kiln-array-shard";

/// One field of every record: a name (its file is `NAME.bin`) and a shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// Name: letters, digits, `_` and `-`.
    pub name: String,
    /// Shape of one record's value (row-major).
    pub shape: Vec<usize>,
}

impl Field {
    /// A field `name` of `shape`.
    pub fn new(name: &str, shape: &[usize]) -> Self {
        Self {
            name: name.to_owned(),
            shape: shape.to_vec(),
        }
    }

    /// Values per record.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// `index.json` of an array shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayIndex {
    /// Always `kiln-array-shard`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// Records.
    pub len: u64,
    /// The fields, in file order.
    pub fields: Vec<Field>,
}

fn shard_err(path: &Path, message: String) -> Error {
    Error::Shard {
        path: path.to_owned(),
        message,
    }
}

/// Writes an array shard record by record; nothing is visible at the target until
/// [`finish`](Self::finish).
#[derive(Debug)]
pub struct ArrayShardWriter {
    out: AtomicDir,
    fields: Vec<Field>,
    files: Vec<(PathBuf, BufWriter<File>)>,
    len: u64,
}

impl ArrayShardWriter {
    /// Starts a shard at `dir` with `fields` (replacing an existing one only with `force`).
    ///
    /// # Errors
    /// [`Error::Config`] for no fields, a repeated or unusable name, or an empty shape;
    /// [`kiln_checkpoint::Error::OutputExists`] without `force`; I/O errors.
    pub fn create(dir: impl AsRef<Path>, fields: &[Field], force: bool) -> Result<Self> {
        let bad = |message: String| Err(Error::Config { message });
        if fields.is_empty() {
            return bad("array shard: give at least one field".into());
        }
        for (i, f) in fields.iter().enumerate() {
            let ok_name = !f.name.is_empty()
                && f.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok_name || f.name == "index" {
                return bad(format!(
                    "array shard: field name `{}` must be letters, digits, `_` or `-` (and not `index`)",
                    f.name
                ));
            }
            if fields[..i].iter().any(|g| g.name == f.name) {
                return bad(format!("array shard: field `{}` given twice", f.name));
            }
            if f.numel() == 0 {
                return bad(format!(
                    "array shard: field `{}` has shape {:?}, which holds no values",
                    f.name, f.shape
                ));
            }
        }
        let out = AtomicDir::create(dir.as_ref(), force)?;
        let mut files = Vec::new();
        for f in fields {
            let path = out.path().join(format!("{}.bin", f.name));
            let file = File::create(&path).map_err(io_err(&path))?;
            files.push((path, BufWriter::new(file)));
        }
        Ok(Self {
            out,
            fields: fields.to_vec(),
            files,
            len: 0,
        })
    }

    /// Appends one record: one slice per field, in field order.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field for a wrong count or length, or a non-finite value;
    /// I/O errors.
    pub fn push(&mut self, values: &[&[f32]]) -> Result<()> {
        if values.len() != self.fields.len() {
            return Err(Error::Config {
                message: format!(
                    "array shard record {}: {} values for {} fields",
                    self.len,
                    values.len(),
                    self.fields.len()
                ),
            });
        }
        for (f, v) in self.fields.iter().zip(values) {
            if v.len() != f.numel() {
                return Err(Error::Config {
                    message: format!(
                        "array shard record {}: field `{}` has {} values; its shape {:?} holds {}",
                        self.len,
                        f.name,
                        v.len(),
                        f.shape,
                        f.numel()
                    ),
                });
            }
            if let Some(k) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::Config {
                    message: format!(
                        "array shard record {}: field `{}` value {k} is {} (a diverged encoder?)",
                        self.len, f.name, v[k]
                    ),
                });
            }
        }
        for ((path, w), v) in self.files.iter_mut().zip(values) {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_all(&bytes).map_err(io_err(&*path))?;
        }
        self.len += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no record was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the index, syncs and moves the shard into place.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(self) -> Result<ArrayIndex> {
        for (path, mut w) in self.files {
            w.flush().map_err(io_err(&path))?;
        }
        let index = ArrayIndex {
            format: FORMAT.into(),
            version: 1,
            len: self.len,
            fields: self.fields,
        };
        let index_path = self.out.path().join("index.json");
        std::fs::write(
            &index_path,
            serde_json::to_string_pretty(&index).expect("index serialises"),
        )
        .map_err(io_err(&index_path))?;
        self.out.commit()?;
        Ok(index)
    }
}

/// An open, memory-mapped array shard.
#[derive(Debug)]
pub struct ArrayShard {
    path: PathBuf,
    index: ArrayIndex,
    maps: Vec<Mmap>,
}

impl ArrayShard {
    /// Opens and checks a shard directory.
    ///
    /// # Errors
    /// [`Error::Shard`] naming the file for a missing or unreadable index, another format or
    /// version, or a data file whose length does not match the index.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().to_owned();
        let index_path = path.join("index.json");
        let text = std::fs::read_to_string(&index_path).map_err(|e| {
            shard_err(
                &path,
                format!("{}: {e} (not an array shard?)", index_path.display()),
            )
        })?;
        let index: ArrayIndex = serde_json::from_str(&text)
            .map_err(|e| shard_err(&path, format!("{}: {e}", index_path.display())))?;
        if index.format != FORMAT || index.version != 1 {
            return Err(shard_err(
                &path,
                format!(
                    "{} is format `{}` version {}; this reader reads `{FORMAT}` version 1",
                    index_path.display(),
                    index.format,
                    index.version
                ),
            ));
        }
        let mut maps = Vec::new();
        for f in &index.fields {
            let file_path = path.join(format!("{}.bin", f.name));
            let file = File::open(&file_path).map_err(io_err(&file_path))?;
            // SAFETY: the shard is written once (atomically) and only read afterwards; a file
            // changed underneath a running reader is outside this format's contract.
            let map = unsafe { Mmap::map(&file) }.map_err(io_err(&file_path))?;
            let want = index.len as usize * f.numel() * 4;
            if map.len() != want {
                return Err(shard_err(
                    &path,
                    format!(
                        "{} has {} bytes; {} records of shape {:?} need {want} (truncated or from another shard?)",
                        file_path.display(),
                        map.len(),
                        index.len,
                        f.shape
                    ),
                ));
            }
            maps.push(map);
        }
        Ok(Self { path, index, maps })
    }

    /// Records.
    pub fn len(&self) -> usize {
        self.index.len as usize
    }

    /// Whether the shard has no records.
    pub fn is_empty(&self) -> bool {
        self.index.len == 0
    }

    /// The index.
    pub fn index(&self) -> &ArrayIndex {
        &self.index
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The field `name`.
    ///
    /// # Errors
    /// [`Error::Shard`] listing the fields if there is none of that name.
    pub fn field(&self, name: &str) -> Result<&Field> {
        self.position(name).map(|k| &self.index.fields[k])
    }

    fn position(&self, name: &str) -> Result<usize> {
        self.index
            .fields
            .iter()
            .position(|f| f.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.index.fields.iter().map(|f| f.name.as_str()).collect();
                shard_err(
                    &self.path,
                    format!("no field `{name}` (it has {})", names.join(", ")),
                )
            })
    }

    /// Record `i` of field `name`: borrowed from the mapped file on little-endian machines,
    /// decoded otherwise.
    ///
    /// # Errors
    /// [`Error::Shard`] for an unknown field or `i` outside the shard.
    pub fn get(&self, name: &str, i: usize) -> Result<Cow<'_, [f32]>> {
        let k = self.position(name)?;
        if i >= self.len() {
            return Err(shard_err(
                &self.path,
                format!("record {i} is outside the {} records", self.len()),
            ));
        }
        let n = self.index.fields[k].numel();
        let bytes = &self.maps[k][i * n * 4..(i + 1) * n * 4];
        // mmap is page-aligned and every record starts at a multiple of 4 bytes
        let (head, floats, tail) = unsafe { bytes.align_to::<f32>() };
        if cfg!(target_endian = "little") && head.is_empty() && tail.is_empty() {
            Ok(Cow::Borrowed(floats))
        } else {
            Ok(Cow::Owned(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_input_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        let fields = [Field::new("a", &[2, 3]), Field::new("b_1", &[5])];
        let mut w = ArrayShardWriter::create(&path, &fields, false).unwrap();
        let rec = |i: usize| {
            (
                (0..6)
                    .map(|k| (i * 10 + k) as f32 * 0.25)
                    .collect::<Vec<f32>>(),
                (0..5).map(|k| -((i + k) as f32)).collect::<Vec<f32>>(),
            )
        };
        for i in 0..7 {
            let (a, b) = rec(i);
            w.push(&[&a, &b]).unwrap();
        }
        // wrong length, wrong count, non-finite: refused, nothing written
        let e = w.push(&[&[0.0; 5], &[0.0; 5]]).unwrap_err().to_string();
        assert!(e.contains("`a`") && e.contains("5 values"), "{e}");
        let e = w.push(&[&[0.0; 6]]).unwrap_err().to_string();
        assert!(e.contains("1 values for 2 fields"), "{e}");
        let e = w
            .push(&[&[f32::NAN; 6], &[0.0; 5]])
            .unwrap_err()
            .to_string();
        assert!(e.contains("NaN"), "{e}");
        assert!(!path.exists(), "nothing at the target before finish");
        w.finish().unwrap();
        let s = ArrayShard::open(&path).unwrap();
        assert_eq!(s.len(), 7);
        for i in 0..7 {
            let (a, b) = rec(i);
            assert_eq!(&*s.get("a", i).unwrap(), &a[..]);
            assert_eq!(&*s.get("b_1", i).unwrap(), &b[..]);
        }
        assert!(matches!(s.get("a", 3).unwrap(), Cow::Borrowed(_)));
        let e = s.get("c", 0).unwrap_err().to_string();
        assert!(e.contains("no field `c`") && e.contains("a, b_1"), "{e}");
        assert!(s.get("a", 7).unwrap_err().to_string().contains("record 7"));
        // existing output refused without force
        assert!(ArrayShardWriter::create(&path, &fields, false).is_err());
        // a truncated data file is found when opening
        let bin = path.join("b_1.bin");
        let bytes = std::fs::read(&bin).unwrap();
        std::fs::write(&bin, &bytes[..bytes.len() - 4]).unwrap();
        let e = ArrayShard::open(&path).unwrap_err().to_string();
        assert!(e.contains("b_1.bin") && e.contains("truncated"), "{e}");
        // bad fields
        for bad in [
            vec![],
            vec![Field::new("x y", &[1])],
            vec![Field::new("a", &[1]), Field::new("a", &[2])],
            vec![Field::new("z", &[0, 3])],
        ] {
            assert!(ArrayShardWriter::create(tmp.path().join("t"), &bad, false).is_err());
        }
    }
}
