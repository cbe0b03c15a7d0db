//! safetensors dtypes and conversion between the floating-point ones.
//!
//! Conversions to narrower formats round to nearest, ties to even; infinities stay infinite,
//! values beyond the target's range become infinite, and NaN stays NaN with its sign (the NaN
//! payload is not specified: numpy, ml_dtypes and torch each canonicalise it differently).

use std::fmt;
use std::str::FromStr;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The element types of the safetensors format (the byte-sized ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Dtype {
    /// Boolean, one byte.
    #[serde(rename = "BOOL")]
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float, 5 exponent bits and 2 mantissa bits.
    #[serde(rename = "F8_E5M2")]
    F8E5M2,
    /// 8-bit float, 4 exponent bits and 3 mantissa bits.
    #[serde(rename = "F8_E4M3")]
    F8E4M3,
    /// 8-bit power-of-two scale (microscaling).
    #[serde(rename = "F8_E8M0")]
    F8E8M0,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
    /// Complex number of two f32.
    C64,
}

impl Dtype {
    /// Every dtype kiln reads, in a stable order.
    pub const ALL: [Self; 17] = [
        Self::Bool,
        Self::U8,
        Self::I8,
        Self::F8E5M2,
        Self::F8E4M3,
        Self::F8E8M0,
        Self::I16,
        Self::U16,
        Self::F16,
        Self::BF16,
        Self::I32,
        Self::U32,
        Self::F32,
        Self::F64,
        Self::I64,
        Self::U64,
        Self::C64,
    ];

    /// The name used in safetensors headers (`"BF16"`, `"F8_E4M3"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::U8 => "U8",
            Self::I8 => "I8",
            Self::F8E5M2 => "F8_E5M2",
            Self::F8E4M3 => "F8_E4M3",
            Self::F8E8M0 => "F8_E8M0",
            Self::I16 => "I16",
            Self::U16 => "U16",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::I32 => "I32",
            Self::U32 => "U32",
            Self::F32 => "F32",
            Self::F64 => "F64",
            Self::I64 => "I64",
            Self::U64 => "U64",
            Self::C64 => "C64",
        }
    }

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Self::Bool | Self::U8 | Self::I8 | Self::F8E5M2 | Self::F8E4M3 | Self::F8E8M0 => 1,
            Self::I16 | Self::U16 | Self::F16 | Self::BF16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::F64 | Self::I64 | Self::U64 | Self::C64 => 8,
        }
    }

    /// Whether kiln computes with this dtype (F32, F16, BF16, F64). Other dtypes are carried
    /// through untouched.
    pub const fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16 | Self::F64)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = Error;

    /// Parses a safetensors name (`BF16`) or a torch/mergekit spelling (`bfloat16`, `float16`,
    /// `float32`, `float64`, `half`, `float`, `double`), case-insensitively.
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let alias = match lower.as_str() {
            "bfloat16" => Some(Self::BF16),
            "float16" | "half" => Some(Self::F16),
            "float32" | "float" => Some(Self::F32),
            "float64" | "double" => Some(Self::F64),
            _ => None,
        };
        alias
            .or_else(|| {
                Self::ALL
                    .into_iter()
                    .find(|d| d.name().eq_ignore_ascii_case(&lower))
            })
            .ok_or_else(|| Error::UnknownDtype {
                dtype: s.to_owned(),
                expected: Self::ALL.map(Self::name).join(", "),
            })
    }
}

fn not_float(dtype: Dtype) -> Error {
    Error::NotFloat { dtype }
}

/// Decodes little-endian `bytes` of `dtype` (F32, F16, BF16 or F64) into `out` as f32.
///
/// # Errors
/// [`Error::NotFloat`] for other dtypes; [`Error::LengthMismatch`] if the lengths disagree.
pub fn decode_f32(bytes: &[u8], dtype: Dtype, out: &mut [f32]) -> Result<()> {
    check_len(bytes.len(), dtype, out.len())?;
    match dtype {
        Dtype::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(src) => out.copy_from_slice(src),
            Err(_) => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        },
        Dtype::F16 => with_u16(bytes, |bits| {
            bytemuck::cast_slice::<u16, f16>(bits).convert_to_f32_slice(out)
        }),
        Dtype::BF16 => with_u16(bytes, |bits| {
            bytemuck::cast_slice::<u16, bf16>(bits).convert_to_f32_slice(out)
        }),
        Dtype::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(c.try_into().expect("chunks of 8")) as f32;
            }
        }
        other => return Err(not_float(other)),
    }
    Ok(())
}

/// Decodes little-endian `bytes` of a float dtype into `out` as f64 (exact for every dtype).
///
/// # Errors
/// As [`decode_f32`].
pub fn decode_f64(bytes: &[u8], dtype: Dtype, out: &mut [f64]) -> Result<()> {
    check_len(bytes.len(), dtype, out.len())?;
    if dtype == Dtype::F64 {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            *o = f64::from_le_bytes(c.try_into().expect("chunks of 8"));
        }
        return Ok(());
    }
    let mut tmp = vec![0f32; out.len()];
    decode_f32(bytes, dtype, &mut tmp)?;
    for (o, v) in out.iter_mut().zip(tmp) {
        *o = f64::from(v);
    }
    Ok(())
}

/// Encodes `src` as little-endian `dtype` (F32, F16, BF16 or F64) into `out`, rounding to
/// nearest even.
///
/// # Errors
/// [`Error::NotFloat`] for other dtypes; [`Error::LengthMismatch`] if the lengths disagree.
pub fn encode_f32(src: &[f32], dtype: Dtype, out: &mut [u8]) -> Result<()> {
    check_len(out.len(), dtype, src.len())?;
    match dtype {
        Dtype::F32 => out.copy_from_slice(bytemuck::cast_slice(src)),
        Dtype::F16 => with_u16_mut(out, |bits| {
            bytemuck::cast_slice_mut::<u16, f16>(bits).convert_from_f32_slice(src)
        }),
        Dtype::BF16 => with_u16_mut(out, |bits| {
            bytemuck::cast_slice_mut::<u16, bf16>(bits).convert_from_f32_slice(src)
        }),
        Dtype::F64 => {
            for (c, v) in out.chunks_exact_mut(8).zip(src) {
                c.copy_from_slice(&f64::from(*v).to_le_bytes());
            }
        }
        other => return Err(not_float(other)),
    }
    Ok(())
}

/// Encodes `src` as little-endian `dtype`, rounding to nearest even (f64 → f16/bf16 goes
/// through f32, which can double-round in rare halfway cases).
///
/// # Errors
/// As [`encode_f32`].
pub fn encode_f64(src: &[f64], dtype: Dtype, out: &mut [u8]) -> Result<()> {
    check_len(out.len(), dtype, src.len())?;
    if dtype == Dtype::F64 {
        for (c, v) in out.chunks_exact_mut(8).zip(src) {
            c.copy_from_slice(&v.to_le_bytes());
        }
        return Ok(());
    }
    let tmp: Vec<f32> = src.iter().map(|&v| v as f32).collect();
    encode_f32(&tmp, dtype, out)
}

/// Converts a whole buffer between float dtypes (`bytes` of `from` → a new buffer of `to`).
///
/// # Errors
/// [`Error::NotFloat`] unless both dtypes are floats (or they are equal, which copies).
pub fn convert(bytes: &[u8], from: Dtype, to: Dtype) -> Result<Vec<u8>> {
    if from == to {
        return Ok(bytes.to_vec());
    }
    if !bytes.len().is_multiple_of(from.size()) {
        return Err(Error::LengthMismatch {
            bytes: bytes.len(),
            dtype: from,
            elements: bytes.len() / from.size(),
        });
    }
    let n = bytes.len() / from.size();
    let mut out = vec![0u8; n * to.size()];
    if from == Dtype::F64 || to == Dtype::F64 {
        let mut tmp = vec![0f64; n];
        decode_f64(bytes, from, &mut tmp)?;
        encode_f64(&tmp, to, &mut out)?;
    } else {
        let mut tmp = vec![0f32; n];
        decode_f32(bytes, from, &mut tmp)?;
        encode_f32(&tmp, to, &mut out)?;
    }
    Ok(out)
}

/// Number of NaN and ±∞ values in little-endian `bytes` of a float dtype (an all-ones exponent,
/// checked on the bits without converting).
///
/// ```
/// use kiln_checkpoint::{Dtype, dtype};
/// let mut bytes = vec![0u8; 6];
/// dtype::encode_f32(&[1.0, f32::NAN, 1e6], Dtype::F16, &mut bytes)?; // 1e6 overflows f16
/// assert_eq!(dtype::count_non_finite(&bytes, Dtype::F16)?, 2);
/// # Ok::<(), kiln_checkpoint::Error>(())
/// ```
///
/// # Errors
/// [`Error::NotFloat`] for other dtypes; [`Error::LengthMismatch`] for a partial element.
pub fn count_non_finite(bytes: &[u8], dtype: Dtype) -> Result<usize> {
    let size = dtype.size();
    if !bytes.len().is_multiple_of(size) {
        return Err(Error::LengthMismatch {
            bytes: bytes.len(),
            dtype,
            elements: bytes.len() / size,
        });
    }
    let count = |mask: u64| {
        bytes
            .chunks_exact(size)
            .filter(|c| {
                let mut v = [0u8; 8];
                v[..size].copy_from_slice(c);
                u64::from_le_bytes(v) & mask == mask
            })
            .count()
    };
    Ok(match dtype {
        Dtype::F32 => count(0x7f80_0000),
        Dtype::F16 => count(0x7c00),
        Dtype::BF16 => count(0x7f80),
        Dtype::F64 => count(0x7ff0_0000_0000_0000),
        other => return Err(not_float(other)),
    })
}

fn check_len(bytes: usize, dtype: Dtype, elements: usize) -> Result<()> {
    if bytes == elements * dtype.size() {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            bytes,
            dtype,
            elements,
        })
    }
}

/// Runs `f` on `bytes` viewed as u16, copying first if the bytes are not 2-byte aligned
/// (tensors in a memory map can start at any offset).
fn with_u16(bytes: &[u8], f: impl FnOnce(&[u16])) {
    match bytemuck::try_cast_slice::<u8, u16>(bytes) {
        Ok(bits) => f(bits),
        Err(_) => {
            let bits: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            f(&bits);
        }
    }
}

fn with_u16_mut(out: &mut [u8], f: impl FnOnce(&mut [u16])) {
    match bytemuck::try_cast_slice_mut::<u8, u16>(out) {
        Ok(bits) => f(bits),
        Err(_) => {
            let mut bits = vec![0u16; out.len() / 2];
            f(&mut bits);
            for (c, b) in out.chunks_exact_mut(2).zip(bits) {
                c.copy_from_slice(&b.to_le_bytes());
            }
        }
    }
}

#[cfg(target_endian = "big")]
compile_error!(
    "kiln-checkpoint reads safetensors (little-endian) by reinterpretation; big-endian targets are not supported"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Dtype::ALL {
            assert_eq!(d.name().parse::<Dtype>().unwrap(), d);
        }
        assert_eq!("bfloat16".parse::<Dtype>().unwrap(), Dtype::BF16);
        assert_eq!("float16".parse::<Dtype>().unwrap(), Dtype::F16);
        let err = "F4".parse::<Dtype>().unwrap_err().to_string();
        assert!(err.contains("F4") && err.contains("BF16"), "{err}");
    }

    #[test]
    fn unaligned_buffers_decode_like_aligned_ones() {
        let values = [1.5f32, -2.25, 3.0e-5, 65504.0];
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
            let mut enc = vec![0u8; values.len() * dtype.size() + 1];
            encode_f32(&values, dtype, &mut enc[1..]).unwrap();
            let mut a = [0f32; 4];
            let mut b = [0f32; 4];
            decode_f32(&enc[1..], dtype, &mut a).unwrap();
            let aligned = enc[1..].to_vec();
            decode_f32(&aligned, dtype, &mut b).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn integers_are_not_converted() {
        assert!(matches!(
            convert(&[0u8; 8], Dtype::I64, Dtype::F32),
            Err(Error::NotFloat { .. })
        ));
        assert_eq!(
            convert(&[1u8, 2], Dtype::U8, Dtype::U8).unwrap(),
            vec![1, 2]
        );
        assert!(matches!(
            decode_f32(&[0u8; 3], Dtype::F16, &mut [0.0; 2]),
            Err(Error::LengthMismatch { .. })
        ));
    }
}
