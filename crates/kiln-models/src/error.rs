//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong building, loading or saving a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value that kiln cannot build a model from.
    #[error("invalid model config: {message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },

    /// Reading the checkpoint failed (missing files, damaged safetensors, ...).
    #[error(transparent)]
    Checkpoint(#[from] kiln_checkpoint::Error),

    /// Weights the model needs that the checkpoint lacks.
    #[error(
        "{}: missing weights: {}. Is this the right architecture? (pass `allow_missing` to keep the initial values)",
        checkpoint.display(),
        names.join(", ")
    )]
    MissingWeights {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// The missing names (a few).
        names: Vec<String>,
    },

    /// Weights in the checkpoint the model does not use.
    #[error(
        "{}: unexpected weights: {}. (pass `allow_unexpected` to ignore them)",
        checkpoint.display(),
        names.join(", ")
    )]
    UnexpectedWeights {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// The unused names (a few).
        names: Vec<String>,
    },

    /// A weight whose shape does not match the config.
    #[error("{}: `{name}` has shape {got:?}, but the config implies {expected:?}", checkpoint.display())]
    WeightShape {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// The weight.
        name: String,
        /// Its shape.
        got: Vec<usize>,
        /// The expected shape.
        expected: Vec<usize>,
    },

    /// Input ids or masks that do not fit the model.
    #[error("invalid input: {message}")]
    Input {
        /// What is wrong.
        message: String,
    },

    /// An unknown device name.
    #[error("unknown device `{name}`; expected `cpu` (flex){}{}", if cfg!(feature = "cuda-no-fusion") { ", `cuda` or `cuda:N`" } else { " (build with the `cuda` feature for `cuda[:N]`)" }, if cfg!(feature = "wgpu") { ", `wgpu` or `wgpu:cpu`" } else { " (the `wgpu` feature adds `wgpu`, `wgpu:cpu`)" })]
    Device {
        /// The name given.
        name: String,
    },

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn config_err(message: impl Into<String>) -> Error {
    Error::Config {
        message: message.into(),
    }
}
