//! The one error type of this crate.

use std::path::PathBuf;

use crate::dtype::Dtype;

/// Everything that can go wrong reading or writing checkpoints.
///
/// File-level variants name the file (`path`), tensor-level ones the tensor too.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a file or directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The file ends before its header or data does.
    #[error("{path}: truncated file: {message}")]
    Truncated {
        /// The file.
        path: String,
        /// What is missing.
        message: String,
    },

    /// The header length prefix exceeds the limit kiln accepts.
    #[error(
        "{path}: header length {len} exceeds the {limit}-byte limit; this is not a safetensors file or it is corrupt"
    )]
    HeaderTooLarge {
        /// The file.
        path: String,
        /// The length prefix.
        len: u64,
        /// The limit.
        limit: u64,
    },

    /// The header length prefix points past the end of the file.
    #[error(
        "{path}: the header claims {header_len} bytes but the file has only {file_len} bytes (truncated or not a safetensors file)"
    )]
    HeaderPastEnd {
        /// The file.
        path: String,
        /// The length prefix.
        header_len: u64,
        /// The file length.
        file_len: u64,
    },

    /// The header is not a JSON object of the expected form.
    #[error("{path}: malformed safetensors header: {message}")]
    HeaderJson {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },

    /// A tensor name appears twice (in one header, or in two shards of one checkpoint).
    #[error("{path}: tensor `{name}` appears more than once")]
    DuplicateTensor {
        /// The file (or checkpoint directory).
        path: String,
        /// The repeated name.
        name: String,
    },

    /// A tensor entry is malformed (unknown dtype, shape and offsets that disagree, ...).
    #[error("{path}: tensor `{tensor}`: {message}")]
    InvalidTensor {
        /// The file.
        path: String,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        message: String,
    },

    /// A tensor's data lies beyond the end of the file.
    #[error(
        "{path}: tensor `{tensor}` ends at data byte {end} but the file holds only {data_len} data bytes (truncated file?)"
    )]
    OutOfBounds {
        /// The file.
        path: String,
        /// The tensor.
        tensor: String,
        /// End offset in the data section.
        end: u64,
        /// Data section length.
        data_len: u64,
    },

    /// Two tensors' byte ranges overlap.
    #[error("{path}: the data of tensors `{first}` and `{second}` overlap")]
    Overlap {
        /// The file.
        path: String,
        /// One tensor.
        first: String,
        /// The other.
        second: String,
    },

    /// A dtype name that is not a safetensors dtype kiln reads.
    #[error(
        "unknown dtype `{dtype}`; expected one of: {expected} (or bfloat16, float16, float32, float64)"
    )]
    UnknownDtype {
        /// The name given.
        dtype: String,
        /// The supported names.
        expected: String,
    },

    /// A float conversion asked of a non-float dtype.
    #[error("dtype {dtype} is not a floating-point type kiln converts (F32, F16, BF16, F64)")]
    NotFloat {
        /// The dtype.
        dtype: Dtype,
    },

    /// A buffer whose length does not match its element count.
    #[error("{bytes} bytes do not hold {elements} elements of {dtype}")]
    LengthMismatch {
        /// Buffer length.
        bytes: usize,
        /// The dtype.
        dtype: Dtype,
        /// Expected elements.
        elements: usize,
    },

    /// A directory without `model.safetensors` or `model.safetensors.index.json` (or diffusers'
    /// `diffusion_pytorch_model.*` names).
    #[error(
        "{}: no safetensors weights (expected model.safetensors, model.safetensors.index.json or \
         diffusers' diffusion_pytorch_model.safetensors[.index.json]); convert PyTorch .bin \
         checkpoints to safetensors first",
        dir.display()
    )]
    NoWeights {
        /// The directory.
        dir: PathBuf,
    },

    /// A malformed `model.safetensors.index.json`.
    #[error("{}: malformed index: {message}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The index names a shard that does not exist.
    #[error("{}: names shard `{shard}`, which does not exist in {}", index.display(), dir.display())]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The directory.
        dir: PathBuf,
        /// The missing shard file name.
        shard: String,
    },

    /// The index maps a tensor to a shard that does not contain it.
    #[error("{}: maps `{tensor}` to `{shard}`, but that shard has no such tensor", index.display())]
    TensorNotInShard {
        /// The index file.
        index: PathBuf,
        /// The tensor.
        tensor: String,
        /// The shard.
        shard: String,
    },

    /// A tensor name that the checkpoint does not have.
    #[error("{}: no tensor named `{name}`{}", checkpoint.display(), suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    TensorNotFound {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// The name asked for.
        name: String,
        /// A close existing name, if any.
        suggestion: Option<String>,
    },

    /// A malformed `config.json` or a field of the wrong type.
    #[error("{}: {message}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The output directory exists and overwriting was not allowed.
    #[error("{} already exists; choose another output directory or pass --force to replace it", path.display())]
    OutputExists {
        /// The directory.
        path: PathBuf,
    },

    /// An output path that is, lies inside or contains an input (after resolving symlinks).
    #[error(
        "output {} {} {what} at {} (resolved: {} and {}); kiln never writes onto, inside or \
         around its inputs, with or without --force — choose an output path outside every input",
        output.display(), relation.words(), input.display(), resolved.0.display(),
        resolved.1.display()
    )]
    OutputOverlapsInput {
        /// The output as given.
        output: PathBuf,
        /// The input as given.
        input: PathBuf,
        /// What the input is (e.g. "model `a`").
        what: String,
        /// How they overlap.
        relation: crate::paths::Overlap,
        /// The output and the input with symlinks and `..` resolved.
        resolved: Box<(PathBuf, PathBuf)>,
    },

    /// A path that exists but is not what kiln can read (a FIFO, a socket, a device, a symlink
    /// that loops or points nowhere).
    #[error("{}: {kind}; expected a regular file", path.display())]
    NotARegularFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: String,
    },

    /// The target of an interrupted replacement could not be restored.
    #[error("{}: {message}", path.display())]
    Recovery {
        /// The output directory.
        path: PathBuf,
        /// What was found and what to do.
        message: String,
    },

    /// A writer was given tensors out of plan order, of the wrong size, or finished early.
    #[error("checkpoint writer: {message}")]
    WriterOrder {
        /// What went wrong.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
