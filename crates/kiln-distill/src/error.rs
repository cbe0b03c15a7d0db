//! kiln-distill's errors.

/// What went wrong in distillation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting out of range or inconsistent.
    #[error("distillation: {message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A teacher-logit cache that cannot be read or written.
    #[error("distillation cache {}: {message}", path.display())]
    Cache {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Student and teacher outputs that do not fit together.
    #[error("distillation: {message}")]
    Mismatch {
        /// Which sizes differ.
        message: String,
    },
}

/// `Result` with kiln-distill's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
