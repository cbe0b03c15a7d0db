//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong planning or running a merge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The YAML could not be parsed, or has a key kiln does not know (the message says where
    /// and lists the supported keys).
    #[error("{source_name}: {message}")]
    Config {
        /// The config file (or `<string>`).
        source_name: String,
        /// What is wrong, with the YAML location when known.
        message: String,
    },

    /// A mergekit feature kiln does not implement.
    #[error("{source_name}: `{key}` is not supported by kiln: {reason}")]
    Unsupported {
        /// The config file.
        source_name: String,
        /// The key or value.
        key: String,
        /// Why, and what to do instead.
        reason: String,
    },

    /// An unknown `merge_method`.
    #[error("unknown merge_method `{name}`; supported: {supported}")]
    UnknownMethod {
        /// The name given.
        name: String,
        /// The supported names.
        supported: String,
    },

    /// A parameter that is unknown, missing, of the wrong type or out of range.
    #[error("merge_method `{method}`, parameter `{param}`: {message}")]
    Parameter {
        /// The method.
        method: &'static str,
        /// The parameter.
        param: String,
        /// What is wrong.
        message: String,
    },

    /// The wrong number of models or a missing base model for the method.
    #[error("merge_method `{method}`: {message}")]
    Inputs {
        /// The method.
        method: &'static str,
        /// What is wrong.
        message: String,
    },

    /// A model path that is not a local directory or file.
    #[error(
        "model `{model}` not found (tried {}); kiln reads local Hugging Face directories — download with \
         `huggingface-cli download {model} --local-dir <dir>` and give that path",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    ModelNotFound {
        /// The path as written in the config.
        model: String,
        /// The paths tried.
        tried: Vec<PathBuf>,
    },

    /// Reading an input checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] kiln_checkpoint::Error),

    /// A tensor of the base (reference) model is missing from another model.
    #[error(
        "model `{model}` has no tensor `{tensor}`, which the base model has; every model must have the base's tensors"
    )]
    MissingTensor {
        /// The model.
        model: String,
        /// The tensor.
        tensor: String,
    },

    /// A tensor whose shape differs from the base's, under the `error` policy or in a way no
    /// policy handles.
    #[error(
        "tensor `{tensor}`: model `{model}` has shape {shape:?} but the base has {base_shape:?}. {hint}"
    )]
    ShapeMismatch {
        /// The tensor.
        tensor: String,
        /// The model.
        model: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The base's shape.
        base_shape: Vec<usize>,
        /// How to proceed.
        hint: String,
    },

    /// A tensor whose dtype cannot be merged together with the base's (e.g. float vs integer).
    #[error(
        "tensor `{tensor}`: model `{model}` stores {dtype} but the base stores {base_dtype}; float tensors merge only with float tensors"
    )]
    DtypeMismatch {
        /// The tensor.
        tensor: String,
        /// The model.
        model: String,
        /// Its dtype.
        dtype: String,
        /// The base's dtype.
        base_dtype: String,
    },

    /// The merge turned finite inputs into NaN or ±∞ (overflow, e.g. weights near f32's or the
    /// output dtype's range). Nothing was written.
    #[error(
        "the merge produced NaN or infinite values from finite inputs in {} tensor(s): {}; \
         nothing was written. Check the weights (and `out_dtype`: f16 overflows above 65504), or \
         pass --allow-non-finite to write the result anyway",
        tensors.len(),
        crate::plan::few_names(&tensors.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
    )]
    NonFinite {
        /// The tensors and how many non-finite values each holds.
        tensors: Vec<(String, usize)>,
    },

    /// An I/O error outside the checkpoint reader and writer (tokenizer copy, ...).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },

    /// The thread pool could not be built.
    #[error("cannot start {threads} worker threads: {message}")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// Why.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
