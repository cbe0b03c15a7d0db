//! One memory-mapped safetensors file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::dtype::{self, Dtype};
use crate::error::{Error, Result, io_err};
use crate::header::{Header, TensorInfo};

/// A safetensors file, memory-mapped read-only, with a validated header.
///
/// Tensors are read lazily: nothing but the header is touched until a tensor's bytes are.
/// As with every memory-mapped reader, the file must not be truncated or rewritten by another
/// process while it is open.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Bytes,
    header: Header,
    by_name: HashMap<String, usize>,
}

#[derive(Debug)]
enum Bytes {
    Mapped(Mmap),
    /// Files too short to map (they can only be errors or empty checkpoints).
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

impl SafetensorsFile {
    /// Opens and validates `path` (read-only).
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be opened or mapped, and the header errors of
    /// [`Header::parse`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        // Opening a FIFO would block until someone writes to it.
        if let crate::paths::Kind::Other(what) = crate::paths::kind(&path)? {
            return Err(Error::NotARegularFile { path, kind: what });
        }
        let file = File::open(&path).map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        let bytes = if len < 4096 {
            Bytes::Owned(std::fs::read(&path).map_err(io_err(&path))?)
        } else {
            // SAFETY: the map is read-only and private to this process. The usual caveat of
            // memory maps applies: another process truncating the file while it is mapped makes
            // reads fault; kiln never writes its inputs.
            Bytes::Mapped(unsafe { Mmap::map(&file) }.map_err(io_err(&path))?)
        };
        let header = Header::parse(bytes.as_slice(), &path.display().to_string())?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path,
            bytes,
            header,
            by_name,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.by_name
            .get(name)
            .map(|&i| self.view(&self.header.tensors[i]))
    }

    pub(crate) fn view<'a>(&'a self, info: &'a TensorInfo) -> TensorView<'a> {
        let start = self.header.data_start;
        let (b, e) = info.data_offsets;
        TensorView {
            info,
            data: &self.bytes.as_slice()[start + b..start + e],
        }
    }

    /// Tells the kernel that this process is done with `name`'s pages, so they leave its
    /// resident set (they stay in the page cache). Streaming readers call this after each
    /// tensor to keep memory bounded however large the checkpoint is. A no-op off Linux and
    /// for small files.
    pub fn release(&self, name: &str) {
        #[cfg(target_os = "linux")]
        if let (Bytes::Mapped(map), Some(&i)) = (&self.bytes, self.by_name.get(name)) {
            let info = &self.header.tensors[i];
            let page = 4096;
            let start = self.header.data_start + info.data_offsets.0;
            let end = self.header.data_start + info.data_offsets.1;
            // Only whole pages inside the tensor, so neighbours' pages are not dropped early.
            let first = start.div_ceil(page) * page;
            let last = end / page * page;
            if last > first {
                // SAFETY: the map is read-only and file-backed; MADV_DONTNEED only drops this
                // process's mapping of those pages, which are read back from the file (page
                // cache) if touched again. No memory is invalidated.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        first,
                        last - first,
                    )
                };
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = name;
    }
}

/// A tensor's metadata and raw little-endian bytes, borrowed from a memory map.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// Name, dtype, shape and offsets.
    pub info: &'a TensorInfo,
    /// The raw bytes.
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// Element type.
    pub fn dtype(&self) -> Dtype {
        self.info.dtype
    }

    /// Shape.
    pub fn shape(&self) -> &[usize] {
        &self.info.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.info.numel()
    }

    /// All values as f32.
    ///
    /// # Errors
    /// [`Error::NotFloat`] for non-float dtypes.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.numel()];
        dtype::decode_f32(self.data, self.dtype(), &mut out)?;
        Ok(out)
    }

    /// Elements `start..start + out.len()` as f32 into `out`, for chunked processing.
    ///
    /// # Errors
    /// [`Error::NotFloat`] for non-float dtypes; [`Error::LengthMismatch`] if the range runs past
    /// the end.
    pub fn decode_range_f32(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let size = self.dtype().size();
        let end = start + out.len();
        if end > self.numel() {
            return Err(Error::LengthMismatch {
                bytes: self.data.len(),
                dtype: self.dtype(),
                elements: end,
            });
        }
        dtype::decode_f32(&self.data[start * size..end * size], self.dtype(), out)
    }

    /// Elements `start..start + out.len()` as f64 into `out`.
    ///
    /// # Errors
    /// As [`decode_range_f32`](Self::decode_range_f32).
    pub fn decode_range_f64(&self, start: usize, out: &mut [f64]) -> Result<()> {
        let size = self.dtype().size();
        let end = start + out.len();
        if end > self.numel() {
            return Err(Error::LengthMismatch {
                bytes: self.data.len(),
                dtype: self.dtype(),
                elements: end,
            });
        }
        dtype::decode_f64(&self.data[start * size..end * size], self.dtype(), out)
    }
}
