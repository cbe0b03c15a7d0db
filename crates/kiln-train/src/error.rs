//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can stop a training run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error("the loss is {loss} at step {step}; training stopped. The last good checkpoint ({}) is kept. Lower the learning rate, clip gradients (clip_grad_norm) or check the data", last_checkpoint.as_ref().map_or("none".to_owned(), |p| p.display().to_string()))]
    NonFiniteLoss {
        /// Step at which it happened (1-based: the step being computed).
        step: u64,
        /// The value.
        loss: f64,
        /// The newest checkpoint on disk.
        last_checkpoint: Option<PathBuf>,
    },

    /// A setting is out of range or inconsistent.
    #[error("{message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A checkpoint could not be written or read.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },

    /// An algorithm failed.
    #[error("algorithm `{name}` at {event:?}: {message}")]
    Algorithm {
        /// The algorithm.
        name: String,
        /// The event it was handling.
        event: crate::Event,
        /// What went wrong.
        message: String,
    },

    /// A schedule could not be resolved.
    #[error(transparent)]
    Schedule(#[from] kiln_schedules::Error),

    /// Data failed.
    #[error(transparent)]
    #[cfg(feature = "tasks")]
    Data(#[from] kiln_data::Error),

    /// A model failed.
    #[error(transparent)]
    #[cfg(feature = "tasks")]
    Model(#[from] kiln_models::Error),

    /// Writing output failed.
    #[error(transparent)]
    Output(#[from] kiln_checkpoint::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
