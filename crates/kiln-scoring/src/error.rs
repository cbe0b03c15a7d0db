//! kiln-scoring's error type.

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Inputs whose sizes do not fit together.
    #[error("{what}: {message}")]
    Shape {
        /// Which input.
        what: String,
        /// What was expected and what came.
        message: String,
    },
    /// A label outside the classes, or an example id outside the data set.
    #[error("{what} {value} is out of range (0..{limit}); {hint}")]
    OutOfRange {
        /// Which input.
        what: &'static str,
        /// The value given.
        value: usize,
        /// Its exclusive upper bound.
        limit: usize,
        /// How to fix it.
        hint: &'static str,
    },
    /// A score file that cannot be written or read.
    #[error("{path}: {message}")]
    File {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Writing a score directory failed (kiln-checkpoint's atomic output: an existing output
    /// without `force`, I/O).
    #[error(transparent)]
    Checkpoint(#[from] kiln_checkpoint::Error),
    /// A non-finite logit.
    #[error(
        "example {example}: logit {value} is not finite; scores need finite logits (check the model's outputs for overflow)"
    )]
    NonFinite {
        /// The example.
        example: usize,
        /// The value.
        value: f64,
    },
}

/// kiln-scoring's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
