//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong in `kiln-scaling-laws`.
///
/// Every variant carries the offending values, and its message says how to fix the input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A quantity that must be a finite number greater than zero was not.
    #[error("{what} must be a finite number greater than zero, got {value}")]
    NotPositive {
        /// Which quantity (with its unit), e.g. `"n_params (parameters)"`.
        what: &'static str,
        /// The value that was given.
        value: f64,
    },

    /// A quantity that must be finite and non-negative (zero allowed) was not.
    #[error("{what} must be a finite number of zero or more, got {value}")]
    Negative {
        /// Which quantity (with its unit).
        what: &'static str,
        /// The value that was given.
        value: f64,
    },

    /// A result that overflows or underflows `f64` (or rounds to zero) for inputs far outside
    /// any model the law describes, e.g. `1e300` parameters or a loss of `1e300`.
    #[error(
        "{quantity} = {value:e} for {input}: the input is so far outside the range of real \
         models that the result does not fit a 64-bit float; give a value within a few orders \
         of magnitude of today's models"
    )]
    OutOfRange {
        /// The computed quantity (with its unit).
        quantity: &'static str,
        /// What it came out as (`inf`, `0`, ...).
        value: f64,
        /// The input it came from, e.g. `"loss 1e300"`.
        input: String,
    },

    /// A target loss at or below the law's irreducible loss `E`: no finite model reaches it.
    #[error(
        "target loss {loss} is at or below the irreducible loss E = {e} of this law; \
         no finite model reaches it: choose a loss above {e}"
    )]
    LossBelowIrreducible {
        /// The requested loss (nats per token).
        loss: f64,
        /// The law's `E`.
        e: f64,
    },

    /// The loss cannot be reached with the given parameters (or tokens) however long the
    /// model is trained (or however large it is).
    #[error(
        "loss {loss} is unreachable with {given} = {value:e}: even with unlimited {other} \
         the loss stays above {floor}; lower the target or increase {given}"
    )]
    UnreachableLoss {
        /// The requested loss.
        loss: f64,
        /// What was fixed (`"n_params"` or `"train_tokens"`).
        given: &'static str,
        /// Its value.
        value: f64,
        /// What would have to grow without bound (`"tokens"` or `"parameters"`).
        other: &'static str,
        /// The lowest loss reachable at this `given`.
        floor: f64,
    },

    /// A model-FLOPs utilisation outside `(0, 1]`.
    #[error("{phase} MFU must lie in (0, 1] (a fraction of peak FLOP/s, e.g. 0.5), got {value}")]
    InvalidMfu {
        /// `"training"`, `"prefill"` or `"decode"`.
        phase: &'static str,
        /// The value that was given.
        value: f64,
    },

    /// A law coefficient that is not a finite positive number.
    #[error("law coefficient {name} must be a finite number greater than zero, got {value}")]
    InvalidLaw {
        /// `"e"`, `"a"`, `"b"`, `"alpha"` or `"beta"`.
        name: &'static str,
        /// The value that was given.
        value: f64,
    },

    /// A name that is not one of a known set (law preset, GPU, precision, ...).
    #[error("unknown {kind} `{name}`; expected one of: {expected}")]
    UnknownName {
        /// What kind of name (`"law"`, `"GPU"`, `"precision"`).
        kind: &'static str,
        /// The name that was given.
        name: String,
        /// The supported names, comma separated.
        expected: String,
    },

    /// A GPU preset has no peak throughput for this precision (e.g. FP8 on an A100).
    #[error("the {gpu} has no {precision} tensor-core peak; supported precisions: {supported}")]
    UnsupportedPrecision {
        /// GPU name.
        gpu: &'static str,
        /// Precision name.
        precision: &'static str,
        /// The precisions this GPU supports.
        supported: &'static str,
    },

    /// A solver did not converge; the message names the solver and the inputs.
    #[error("{solver} did not converge for {context}: {reason}")]
    NoConvergence {
        /// Which solver.
        solver: &'static str,
        /// The inputs, formatted.
        context: String,
        /// Why, as reported by the solver.
        reason: String,
    },

    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A CSV of runs has no data rows.
    #[error(
        "{source_name}: no runs found (the CSV has a header but no data rows); add one row per training run"
    )]
    EmptyCsv {
        /// File name or `"<input>"`.
        source_name: String,
    },

    /// A CSV of runs is malformed; `line` is 1-based and counts the header.
    #[error("{source_name}, line {line}: {message}")]
    Csv {
        /// File name or `"<input>"`.
        source_name: String,
        /// 1-based line number (the header is line 1).
        line: u64,
        /// What is wrong there.
        message: String,
    },

    /// A fit needs more runs than were given.
    #[error("fitting 5 law coefficients needs at least {needed} runs, got {got}")]
    TooFewRuns {
        /// Minimum number of runs.
        needed: usize,
        /// Runs given.
        got: usize,
    },

    /// A plot could not be drawn (too few points, or a drawing error).
    #[error("cannot draw the plot: {message}")]
    Plot {
        /// What went wrong.
        message: String,
    },

    /// Invalid fitting options.
    #[error("invalid fit option {name}: {message}")]
    InvalidFitOption {
        /// The option.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks that `value` is finite and `> 0`.
pub(crate) fn positive(what: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(Error::NotPositive { what, value })
    }
}

/// Checks that a computed count is finite and greater than zero (no overflow, no underflow).
pub(crate) fn representable(
    quantity: &'static str,
    value: f64,
    input: impl FnOnce() -> String,
) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(Error::OutOfRange {
            quantity,
            value,
            input: input(),
        })
    }
}

/// Checks that `value` is finite and `>= 0`.
pub(crate) fn non_negative(what: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(Error::Negative { what, value })
    }
}
