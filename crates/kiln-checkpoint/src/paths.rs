//! Where an output may go: never onto, inside or around an input.
//!
//! Paths are compared after resolving symlinks and `.`/`..` ([`resolve`]), so `./a/model`,
//! `a/../a/model` and a symlink to `a/model` are all the same input. A command that writes checks
//! its output against every input with [`check_output`] before it creates anything, with or
//! without `--force`: replacing an output that *contains* an input would delete the input.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result, io_err};

/// The canonical form of `path`, which need not exist: the longest existing prefix is
/// canonicalised (following symlinks) and the rest appended with `.` and `..` applied.
///
/// # Errors
/// [`Error::Io`] when an existing prefix cannot be resolved (a symlink loop, no permission).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).map_err(io_err(path))?;
    let parts: Vec<Component<'_>> = absolute.components().collect();
    // The longest prefix that exists is resolved by the OS (symlinks, `..` after a symlink);
    // the components that do not exist yet are applied lexically.
    for k in (1..=parts.len()).rev() {
        let prefix: PathBuf = parts[..k].iter().collect();
        match prefix.canonicalize() {
            Ok(mut out) => {
                for c in &parts[k..] {
                    match c {
                        Component::ParentDir => {
                            out.pop();
                        }
                        Component::CurDir => {}
                        other => out.push(other),
                    }
                }
                return Ok(out);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    Ok(absolute)
}

/// What a path holds, for readers that must not block on a FIFO or misreport a broken link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Nothing there.
    Missing,
    /// A regular file (possibly through symlinks).
    File,
    /// A directory (possibly through symlinks).
    Dir,
    /// Something kiln does not read; the string says what ("a FIFO", "a symlink loop", …).
    Other(String),
}

/// Classifies `path` without opening it.
///
/// # Errors
/// [`Error::Io`] for failures other than "not found" and symlink loops (e.g. no permission).
pub fn kind(path: &Path) -> Result<Kind> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Kind::File),
        Ok(m) if m.is_dir() => Ok(Kind::Dir),
        Ok(m) => Ok(Kind::Other(special_kind(&m))),
        Err(e) => match std::fs::symlink_metadata(path) {
            // The path exists as a link, but following it fails: a loop or a dangling link.
            Ok(_) if e.kind() == std::io::ErrorKind::NotFound => Ok(Kind::Other(format!(
                "a symlink to {} that does not exist",
                std::fs::read_link(path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "a target".into())
            ))),
            Ok(_) => Ok(Kind::Other(format!(
                "a symlink that cannot be followed ({e})"
            ))),
            Err(_) if e.kind() == std::io::ErrorKind::NotFound => Ok(Kind::Missing),
            Err(_) => Err(io_err(path)(e)),
        },
    }
}

fn special_kind(m: &std::fs::Metadata) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        if t.is_fifo() {
            return "a FIFO (named pipe)".into();
        }
        if t.is_socket() {
            return "a socket".into();
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device".into();
        }
    }
    let _ = m;
    "not a regular file".into()
}

/// How an output relates to an input it must stay away from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// The output is the input.
    Same,
    /// The output lies inside the input (a directory).
    Inside,
    /// The output contains the input: replacing the output would delete it.
    Contains,
}

impl Overlap {
    /// Words for an error message: "output … {words} input …".
    pub fn words(self) -> &'static str {
        match self {
            Self::Same => "is",
            Self::Inside => "lies inside",
            Self::Contains => "contains",
        }
    }
}

/// How `output` overlaps `input` once both are resolved, if it does.
///
/// # Errors
/// As [`resolve`].
pub fn overlap(output: &Path, input: &Path) -> Result<Option<Overlap>> {
    let (o, i) = (resolve(output)?, resolve(input)?);
    Ok(if o == i {
        Some(Overlap::Same)
    } else if o.starts_with(&i) {
        Some(Overlap::Inside)
    } else if i.starts_with(&o) {
        Some(Overlap::Contains)
    } else {
        None
    })
}

/// Refuses an `output` that is, lies inside or contains any of `inputs` (each with a short
/// description such as `"model `a`"`), after resolving symlinks.
///
/// ```
/// use kiln_checkpoint::paths::check_output;
/// let dir = tempfile::tempdir()?;
/// let model = dir.path().join("models/a");
/// std::fs::create_dir_all(&model)?;
/// let inputs = [("model `a`".to_string(), model.clone())];
/// assert!(check_output(&dir.path().join("merged"), &inputs).is_ok());
/// // Replacing ./models would delete the model inside it.
/// let err = check_output(&dir.path().join("models"), &inputs).unwrap_err();
/// assert!(err.to_string().contains("contains model `a`"), "{err}");
/// assert!(check_output(&model.join("model.safetensors"), &inputs).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Error::OutputOverlapsInput`] naming both paths; [`Error::Io`] as [`resolve`].
pub fn check_output(output: &Path, inputs: &[(String, PathBuf)]) -> Result<()> {
    for (what, input) in inputs {
        if let Some(relation) = overlap(output, input)? {
            return Err(Error::OutputOverlapsInput {
                output: output.to_owned(),
                input: input.to_owned(),
                what: what.clone(),
                relation,
                resolved: Box::new((resolve(output)?, resolve(input)?)),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_handles_missing_tails_dots_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("a")).unwrap();
        assert_eq!(resolve(&root.join("a/./b/../c")).unwrap(), root.join("a/c"));
        assert_eq!(resolve(&root.join("new/x")).unwrap(), root.join("new/x"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.join("a"), root.join("link")).unwrap();
            assert_eq!(resolve(&root.join("link/m")).unwrap(), root.join("a/m"));
            std::os::unix::fs::symlink(root.join("loop"), root.join("loop")).unwrap();
            assert!(resolve(&root.join("loop")).is_err());
            assert!(
                matches!(kind(&root.join("loop")).unwrap(), Kind::Other(k) if k.contains("symlink"))
            );
            std::os::unix::fs::symlink(root.join("nowhere"), root.join("dangling")).unwrap();
            assert!(
                matches!(kind(&root.join("dangling")).unwrap(), Kind::Other(k) if k.contains("does not exist"))
            );
        }
        assert_eq!(kind(&root.join("a")).unwrap(), Kind::Dir);
        assert_eq!(kind(&root.join("nothing")).unwrap(), Kind::Missing);
    }

    #[test]
    fn every_direction_of_overlap_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("models/a")).unwrap();
        let a = root.join("models/a");
        assert_eq!(overlap(&a, &a).unwrap(), Some(Overlap::Same));
        assert_eq!(
            overlap(&root.join("./models/a/"), &a).unwrap(),
            Some(Overlap::Same)
        );
        assert_eq!(overlap(&a.join("out"), &a).unwrap(), Some(Overlap::Inside));
        assert_eq!(
            overlap(&root.join("models"), &a).unwrap(),
            Some(Overlap::Contains)
        );
        assert_eq!(overlap(&root.join("models/ab"), &a).unwrap(), None);
        assert_eq!(overlap(&root.join("merged"), &a).unwrap(), None);
    }
}
