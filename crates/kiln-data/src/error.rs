//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong reading, tokenizing, sharding and sampling data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },

    /// A tokenizer could not be loaded, trained, saved or used.
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer {
        /// Its file (or what was being trained).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// An input record is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },

    /// A token or array shard directory is missing pieces or inconsistent.
    #[error("shard {}: {message}", path.display())]
    Shard {
        /// The shard directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A configuration value is out of range or inconsistent.
    #[error("{message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A schedule could not be resolved.
    #[error(transparent)]
    Schedule(#[from] kiln_schedules::Error),

    /// Writing output failed.
    #[error(transparent)]
    Checkpoint(#[from] kiln_checkpoint::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
