//! The one error type of this crate.

/// Everything that can go wrong parsing or resolving time and schedules.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A duration string that does not parse.
    #[error(
        "`{text}` is not a duration: {reason}. Write a number and a unit: 100ba (batches), 3ep (epochs), 1000sp (samples), 2e9tok (tokens), 0.1dur (fraction of the run)"
    )]
    Parse {
        /// The text.
        text: String,
        /// What is wrong.
        reason: String,
    },

    /// A duration that cannot be turned into steps with what is known about the run.
    #[error("cannot resolve `{duration}` to steps: {reason}")]
    Resolve {
        /// The duration.
        duration: String,
        /// What is missing or incompatible.
        reason: String,
    },

    /// A schedule parameter out of range or inconsistent.
    #[error("{schedule}: {message}")]
    Invalid {
        /// The schedule.
        schedule: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
