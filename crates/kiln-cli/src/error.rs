//! The CLI's error type.

use std::path::PathBuf;

/// Everything the `kiln` command can fail with (argument errors are clap's).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CliError {
    /// An error of the scaling-laws crate (bad loss, unreachable target, bad CSV, ...).
    #[error(transparent)]
    ScalingLaws(#[from] kiln_scaling_laws::Error),

    /// An error of the merging crate (bad config, inputs, shapes, output exists, ...).
    #[error(transparent)]
    Merging(#[from] kiln_merging::Error),

    /// An error of the checkpoint crate (an output overlapping an input, I/O, ...).
    #[error(transparent)]
    Checkpoint(#[from] kiln_checkpoint::Error),

    /// An error of the data crate (tokenizers).
    #[error(transparent)]
    Data(#[from] kiln_data::Error),

    /// An error of the LoRA crate (adapter files, targeting, extraction, spectra).
    #[error(transparent)]
    Lora(#[from] kiln_lora::Error),

    /// An error of the scoring crate (score files, runs that do not fit together, ...).
    #[error(transparent)]
    Scoring(#[from] kiln_scoring::Error),

    /// An error of the training crate (multiple-choice evaluation, ...).
    #[error(transparent)]
    Train(#[from] kiln_train::Error),

    /// An error of the models crate (config, weights, device, tokenizer, ...).
    #[error(transparent)]
    Models(#[from] kiln_models::Error),

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Serialising output failed.
    #[error("cannot write JSON output: {0}")]
    Json(#[source] serde_json::Error),

    /// A law file that is not a JSON object with `e`, `a`, `b`, `alpha`, `beta`.
    #[error(
        "{}: not a law: {message}. Expected a JSON object with numbers `e`, `a`, `b`, `alpha`, `beta` \
         (the output of `kiln scaling fit --json` works)",
        path.display()
    )]
    LawFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// `--law` is neither a preset nor an existing file.
    #[error("--law `{given}` is neither a preset ({presets}) nor a law JSON file that exists")]
    UnknownLaw {
        /// The value given.
        given: String,
        /// The preset names.
        presets: String,
    },

    /// A result that does not fit a 64-bit float (overflow to ±∞ or NaN).
    #[error(
        "`{field}` is not a finite number for `kiln {command}`: the inputs lie so far outside \
         real models that the result overflows a 64-bit float; give values within a few orders \
         of magnitude of today's models"
    )]
    NotFinite {
        /// The result field.
        field: String,
        /// The command's arguments.
        command: String,
    },

    /// Arguments that are individually valid but do not go together.
    #[error("{0}")]
    Usage(String),
}
