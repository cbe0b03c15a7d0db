//! The safetensors header: parsed strictly (it is untrusted input) and written.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of UTF-8 JSON, then the data.
//! The JSON maps tensor names to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets
//! relative to the start of the data) and may hold `"__metadata__"`, a map of strings.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// Largest header kiln reads (the same limit as the reference `safetensors` crate).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Key of the metadata map in the header.
pub const METADATA_KEY: &str = "__metadata__";

/// One tensor's entry in a header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Byte range `[begin, end)` within the data section.
    pub data_offsets: (usize, usize),
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size of the data in bytes.
    pub fn byte_len(&self) -> usize {
        self.data_offsets.1 - self.data_offsets.0
    }
}

/// A parsed and validated header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    /// `__metadata__`, if present.
    pub metadata: BTreeMap<String, String>,
    /// Tensors in header order.
    pub tensors: Vec<TensorInfo>,
    /// Offset of the data section from the start of the file (`8 + n`).
    pub data_start: usize,
}

/// Entries of the JSON object in order, keeping duplicates so they can be reported.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        deserializer.deserialize_map(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

impl Header {
    /// Parses and validates the header at the start of `file` (the whole file's bytes, or at
    /// least the header and data). `source` names the file in errors.
    ///
    /// Checks: the length prefix is present and within the file; the JSON is a UTF-8 object
    /// without duplicate keys; every dtype is known; `data_offsets` match `shape × dtype size`,
    /// lie within the data, and no two tensors overlap.
    ///
    /// # Errors
    /// [`Error::Truncated`], [`Error::HeaderTooLarge`], [`Error::HeaderPastEnd`],
    /// [`Error::HeaderJson`], [`Error::DuplicateTensor`], [`Error::UnknownDtype`] (via
    /// [`Error::InvalidTensor`]), [`Error::InvalidTensor`], [`Error::OutOfBounds`],
    /// [`Error::Overlap`].
    pub fn parse(file: &[u8], source: &str) -> Result<Self> {
        let src = || source.to_owned();
        if file.len() < 8 {
            return Err(Error::Truncated {
                path: src(),
                message: format!(
                    "{} bytes is shorter than the 8-byte header length prefix",
                    file.len()
                ),
            });
        }
        let n = u64::from_le_bytes(file[..8].try_into().expect("8 bytes"));
        if n > MAX_HEADER_BYTES {
            return Err(Error::HeaderTooLarge {
                path: src(),
                len: n,
                limit: MAX_HEADER_BYTES,
            });
        }
        let data_start = 8 + n as usize;
        if data_start > file.len() {
            return Err(Error::HeaderPastEnd {
                path: src(),
                header_len: n,
                file_len: file.len() as u64,
            });
        }
        let json = std::str::from_utf8(&file[8..data_start]).map_err(|e| Error::HeaderJson {
            path: src(),
            message: format!("header is not UTF-8: {e}"),
        })?;
        let entries: Entries<'_> = serde_json::from_str(json).map_err(|e| Error::HeaderJson {
            path: src(),
            message: e.to_string(),
        })?;
        let data_len = file.len() - data_start;

        let mut header = Header {
            data_start,
            ..Header::default()
        };
        let mut seen = std::collections::HashSet::new();
        for (name, raw) in entries.0 {
            if !seen.insert(name.clone()) {
                return Err(Error::DuplicateTensor { path: src(), name });
            }
            if name == METADATA_KEY {
                header.metadata =
                    serde_json::from_str(raw.get()).map_err(|e| Error::HeaderJson {
                        path: src(),
                        message: format!("`{METADATA_KEY}` must map strings to strings: {e}"),
                    })?;
                continue;
            }
            let invalid = |message: String| Error::InvalidTensor {
                path: src(),
                tensor: name.clone(),
                message,
            };
            let entry: RawEntry = serde_json::from_str(raw.get()).map_err(|e| {
                invalid(format!(
                    "entry must be {{\"dtype\", \"shape\", \"data_offsets\"}}: {e}"
                ))
            })?;
            let dtype: Dtype = entry
                .dtype
                .parse()
                .map_err(|e: Error| invalid(e.to_string()))?;
            let shape: Vec<usize> = entry
                .shape
                .iter()
                .map(|&d| {
                    usize::try_from(d).map_err(|_| invalid(format!("dimension {d} is too large")))
                })
                .collect::<Result<_>>()?;
            let bytes = shape
                .iter()
                .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| invalid(format!("shape {shape:?} overflows")))?;
            let (begin, end) = entry.data_offsets;
            if begin > end {
                return Err(invalid(format!(
                    "data_offsets [{begin}, {end}] run backwards"
                )));
            }
            if (end - begin) as u128 != bytes as u128 {
                return Err(invalid(format!(
                    "data_offsets [{begin}, {end}] hold {} bytes but shape {shape:?} of {dtype} needs {bytes}",
                    end - begin
                )));
            }
            if end > data_len as u64 {
                return Err(Error::OutOfBounds {
                    path: src(),
                    tensor: name,
                    end,
                    data_len: data_len as u64,
                });
            }
            header.tensors.push(TensorInfo {
                name,
                dtype,
                shape,
                data_offsets: (begin as usize, end as usize),
            });
        }

        let mut order: Vec<&TensorInfo> =
            header.tensors.iter().filter(|t| t.byte_len() > 0).collect();
        order.sort_by_key(|t| t.data_offsets);
        for pair in order.windows(2) {
            if pair[1].data_offsets.0 < pair[0].data_offsets.1 {
                return Err(Error::Overlap {
                    path: src(),
                    first: pair[0].name.clone(),
                    second: pair[1].name.clone(),
                });
            }
        }
        Ok(header)
    }

    /// Serialises a header for `tensors` laid out back to back in the given order (offsets are
    /// computed here), padded with spaces so the data starts 8-byte aligned. Returns the bytes to
    /// write before the data: the length prefix and the JSON.
    pub fn encode(
        metadata: &BTreeMap<String, String>,
        tensors: &[(&str, Dtype, &[usize])],
    ) -> Vec<u8> {
        let mut map = serde_json::Map::new();
        if !metadata.is_empty() {
            map.insert(
                METADATA_KEY.into(),
                serde_json::to_value(metadata).expect("strings serialise"),
            );
        }
        let mut offset = 0usize;
        for (name, dtype, shape) in tensors {
            let len = shape.iter().product::<usize>() * dtype.size();
            map.insert(
                (*name).to_owned(),
                serde_json::json!({ "dtype": dtype.name(), "shape": shape, "data_offsets": [offset, offset + len] }),
            );
            offset += len;
        }
        let mut json =
            serde_json::to_vec(&serde_json::Value::Object(map)).expect("JSON serialises");
        while !(8 + json.len()).is_multiple_of(8) {
            json.push(b' ');
        }
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&json);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.extend(std::iter::repeat_n(0u8, data_len));
        f
    }

    #[test]
    fn parses_a_valid_header() {
        let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let header = Header::parse(&file(h, 12), "x").unwrap();
        assert_eq!(header.metadata["format"], "pt");
        assert_eq!(header.tensors.len(), 2);
        assert_eq!(header.tensors[0].name, "b");
        assert_eq!(header.tensors[1].byte_len(), 8);
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let meta = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
        let bytes = Header::encode(
            &meta,
            &[
                ("w", Dtype::F16, &[3, 5]),
                ("b", Dtype::F32, &[5]),
                ("e", Dtype::I64, &[0]),
            ],
        );
        assert_eq!(bytes.len() % 8, 0);
        let mut f = bytes.clone();
        f.extend(std::iter::repeat_n(1u8, 3 * 5 * 2 + 5 * 4));
        let h = Header::parse(&f, "x").unwrap();
        assert_eq!(h.data_start, bytes.len());
        let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["w", "b", "e"], "header order is the given order");
        assert_eq!(h.tensors[1].data_offsets, (30, 50));
        assert_eq!(h.metadata, meta);
    }

    #[test]
    fn rejects_each_kind_of_damage() {
        let ok = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert!(matches!(
            Header::parse(&[1, 2, 3], "x"),
            Err(Error::Truncated { .. })
        ));
        let mut past = file(ok, 8);
        past[0] = 200;
        assert!(matches!(
            Header::parse(&past, "x"),
            Err(Error::HeaderPastEnd { .. })
        ));
        let mut huge = file(ok, 8);
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Header::parse(&huge, "x"),
            Err(Error::HeaderTooLarge { .. })
        ));
        assert!(matches!(
            Header::parse(&file("{\"a\":", 0), "x"),
            Err(Error::HeaderJson { .. })
        ));
        assert!(matches!(
            Header::parse(&file("[1,2]", 0), "x"),
            Err(Error::HeaderJson { .. })
        ));
        let dup = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(matches!(
            Header::parse(&file(dup, 8), "x"),
            Err(Error::DuplicateTensor { .. })
        ));
        let bad_dtype = r#"{"a":{"dtype":"F12","shape":[2],"data_offsets":[0,8]}}"#;
        let err = Header::parse(&file(bad_dtype, 8), "x").unwrap_err();
        assert!(
            matches!(err, Error::InvalidTensor { .. }) && err.to_string().contains("F12"),
            "{err}"
        );
        let oob = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        assert!(matches!(
            Header::parse(&file(oob, 8), "x"),
            Err(Error::OutOfBounds { .. })
        ));
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        assert!(matches!(
            Header::parse(&file(overlap, 12), "x"),
            Err(Error::Overlap { .. })
        ));
        let size = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        assert!(matches!(
            Header::parse(&file(size, 12), "x"),
            Err(Error::InvalidTensor { .. })
        ));
        let extra = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}"#;
        assert!(matches!(
            Header::parse(&file(extra, 8), "x"),
            Err(Error::InvalidTensor { .. })
        ));
        let meta = r#"{"__metadata__":{"a":1}}"#;
        assert!(matches!(
            Header::parse(&file(meta, 0), "x"),
            Err(Error::HeaderJson { .. })
        ));
    }
}
