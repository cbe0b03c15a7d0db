//! Checkpoints: `run_dir/checkpoints/step-<N>/` holding the model and optimiser (burnpack), the
//! trainer state (JSON), the algorithms' tensors (`algorithms.safetensors`, when there are any)
//! and a manifest of every file's size and FNV-1a hash.
//!
//! A checkpoint directory is written into a temporary sibling, fsynced and renamed into place
//! ([`kiln_checkpoint::AtomicDir`]), so it is either complete or absent. When resuming, the
//! newest checkpoint whose manifest matches its files is loaded; an incomplete or damaged one is
//! skipped with a warning and never loaded.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io_err};

/// Model weights file in a checkpoint.
pub const MODEL_FILE: &str = "model.bpk";
/// Optimiser state file.
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// Trainer state file.
pub const STATE_FILE: &str = "state.json";
/// Algorithms' checkpointed tensors (`<algorithm>/<tensor>`), when any algorithm has some.
pub const ALGORITHMS_FILE: &str = "algorithms.safetensors";
/// Manifest file.
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    format: String,
    step: u64,
    files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileEntry {
    name: String,
    bytes: u64,
    fnv1a64: String,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The checkpoints of one run.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    /// Checkpoints under `run_dir/checkpoints`.
    pub fn new(run_dir: &Path) -> Self {
        Self {
            dir: run_dir.join("checkpoints"),
        }
    }

    /// The directory holding them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the checkpoint at `step`.
    pub fn path(&self, step: u64) -> PathBuf {
        self.dir.join(format!("step-{step:09}"))
    }

    /// Writes a checkpoint for `step`: `write` fills the staging directory with the model,
    /// optimiser and state files; the manifest is added and the directory committed atomically.
    ///
    /// # Errors
    /// I/O errors, or those of `write`.
    pub fn save(&self, step: u64, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        let out = kiln_checkpoint::AtomicDir::create(self.path(step), true)?;
        write(out.path())?;
        let mut files = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(out.path())
            .map_err(io_err(out.path()))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        for name in names {
            let p = out.path().join(&name);
            let bytes = std::fs::read(&p).map_err(io_err(&p))?;
            files.push(FileEntry {
                name,
                bytes: bytes.len() as u64,
                fnv1a64: format!("{:016x}", fnv1a(&bytes)),
            });
        }
        let manifest = Manifest {
            format: "kiln-train-checkpoint/1".into(),
            step,
            files,
        };
        let mp = out.path().join(MANIFEST_FILE);
        std::fs::write(
            &mp,
            serde_json::to_vec_pretty(&manifest).expect("manifest serialises"),
        )
        .map_err(io_err(&mp))?;
        Ok(out.commit()?)
    }

    /// Checkpoint directories by step, newest first (complete or not).
    pub fn list(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut v: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                let step = e
                    .file_name()
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse()
                    .ok()?;
                e.path().is_dir().then(|| (step, e.path()))
            })
            .collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.0));
        v
    }

    /// Checks that a checkpoint's files match its manifest.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] saying what is missing or damaged.
    pub fn verify(&self, path: &Path) -> Result<u64> {
        let bad = |message: String| Error::Checkpoint {
            path: path.to_owned(),
            message,
        };
        let mp = path.join(MANIFEST_FILE);
        let text = std::fs::read(&mp).map_err(|e| {
            bad(format!(
                "no readable manifest ({e}); the checkpoint is incomplete"
            ))
        })?;
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("manifest.json is damaged: {e}")))?;
        for required in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
            if !manifest.files.iter().any(|f| f.name == required) {
                return Err(bad(format!("the manifest lists no {required}")));
            }
        }
        for f in &manifest.files {
            let p = path.join(&f.name);
            let bytes = std::fs::read(&p).map_err(|e| bad(format!("{}: {e}", f.name)))?;
            if bytes.len() as u64 != f.bytes || format!("{:016x}", fnv1a(&bytes)) != f.fnv1a64 {
                return Err(bad(format!(
                    "{} does not match the manifest ({} bytes, expected {}); the file is damaged",
                    f.name,
                    bytes.len(),
                    f.bytes
                )));
            }
        }
        Ok(manifest.step)
    }

    /// The newest checkpoint that verifies; damaged ones are reported through `warn` and
    /// skipped.
    pub fn latest_valid(&self, mut warn: impl FnMut(&Error)) -> Option<(u64, PathBuf)> {
        for (step, path) in self.list() {
            match self.verify(&path) {
                Ok(_) => return Some((step, path)),
                Err(e) => warn(&e),
            }
        }
        None
    }

    /// Keeps the newest `keep` checkpoints that verify (at least one) and deletes every
    /// checkpoint older than the oldest of them.
    ///
    /// # Errors
    /// I/O errors.
    pub fn prune(&self, keep: usize) -> Result<()> {
        let mut valid = 0;
        for (_, path) in self.list() {
            if valid >= keep.max(1) {
                std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
            } else if self.verify(&path).is_ok() {
                valid += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_all(dir: &Path) -> Result<()> {
        for (name, body) in [(MODEL_FILE, "m"), (OPTIMIZER_FILE, "o"), (STATE_FILE, "{}")] {
            std::fs::write(dir.join(name), body).unwrap();
        }
        Ok(())
    }

    #[test]
    fn damaged_and_partial_checkpoints_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path());
        c.save(10, write_all).unwrap();
        c.save(20, write_all).unwrap();
        c.save(30, write_all).unwrap();
        // Damage the newest, leave a partial one newer still.
        std::fs::write(c.path(30).join(MODEL_FILE), "x").unwrap();
        std::fs::create_dir_all(c.path(40)).unwrap();
        let mut warnings = Vec::new();
        let (step, _) = c.latest_valid(|e| warnings.push(e.to_string())).unwrap();
        assert_eq!(step, 20);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("incomplete"), "{warnings:?}");
        assert!(warnings[1].contains("damaged"), "{warnings:?}");
        c.prune(1).unwrap();
        assert_eq!(
            c.list().iter().map(|x| x.0).collect::<Vec<_>>(),
            [40, 30, 20]
        );
    }
}
