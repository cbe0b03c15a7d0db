//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong reading, applying, extracting or analysing adapters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] kiln_checkpoint::Error),

    /// `adapter_config.json` is missing, not JSON, or has a field of the wrong type or value.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A PEFT feature the adapter uses that kiln does not implement (the result would be wrong,
    /// so kiln refuses rather than ignoring it).
    #[error("{path}: `{field}` is not supported by kiln: {reason}")]
    Unsupported {
        /// The adapter config.
        path: PathBuf,
        /// The field.
        field: String,
        /// Why, and what to do instead.
        reason: String,
    },

    /// A `target_modules`/`exclude_modules`/pattern regex that does not compile.
    #[error(
        "invalid regex `{pattern}` in `{field}`: {message} (kiln uses Rust's `regex` syntax, which has no look-around)"
    )]
    Regex {
        /// The config field.
        field: String,
        /// The pattern.
        pattern: String,
        /// The compiler's message.
        message: String,
    },

    /// A targeting rule that selects no module.
    #[error("{what} matches no module of the model; modules that can take an adapter: {available}")]
    NoMatch {
        /// The rule (e.g. `target_modules ["q_proj"]`).
        what: String,
        /// The module names that exist (abbreviated when long).
        available: String,
    },

    /// An adapter tensor that is missing, unexpected or of the wrong shape — usually an adapter
    /// made for another architecture or size.
    #[error("{adapter}: tensor `{tensor}`: {message}")]
    Tensor {
        /// The adapter (or checkpoint) path.
        adapter: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What is wrong.
        message: String,
    },

    /// The base and fine-tuned checkpoints do not pair up (a tensor missing in one, or shapes
    /// that differ).
    #[error("tensor `{tensor}`: {message}")]
    Mismatch {
        /// The tensor name.
        tensor: String,
        /// What differs.
        message: String,
    },

    /// A merge produced NaN or infinite values and `safe_merge` was asked for.
    #[error(
        "merging the adapter into `{tensor}` gives {count} non-finite values; the adapter is broken (refused by safe_merge)"
    )]
    NonFinite {
        /// The tensor.
        tensor: String,
        /// How many values are not finite.
        count: usize,
    },

    /// An argument out of range (rank, threshold, weights).
    #[error("{0}")]
    Invalid(String),

    /// The SVD did not converge.
    #[error("the SVD of `{tensor}` did not converge ({message})")]
    Svd {
        /// The matrix.
        tensor: String,
        /// faer's message.
        message: String,
    },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
