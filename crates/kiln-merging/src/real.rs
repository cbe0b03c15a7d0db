//! The compute precision of a merge: f32 (default) or f64.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use kiln_checkpoint::{Dtype, TensorView, dtype};

/// A float type merges compute in. Implemented for `f32` and `f64`.
pub trait Real:
    Copy
    + Debug
    + Default
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// Bits of the order-preserving key of a non-negative value ([`Real::key`]).
    const KEY_BITS: u32;

    /// Conversion from f64 (rounds for f32).
    fn from_f64(v: f64) -> Self;
    /// Conversion to f64 (exact).
    fn to_f64(self) -> f64;
    /// Absolute value.
    fn abs(self) -> Self;
    /// Neither NaN nor ±∞.
    fn is_finite(self) -> bool;
    /// For a non-negative, non-NaN value: an integer that orders like the value (its IEEE bits).
    fn key(self) -> u64;
    /// The value of a key.
    fn from_key(key: u64) -> Self;
    /// Decodes elements `start..start + out.len()` of a float tensor.
    ///
    /// # Errors
    /// The checkpoint crate's, for a non-float tensor.
    fn decode(view: &TensorView<'_>, start: usize, out: &mut [Self])
    -> kiln_checkpoint::Result<()>;
    /// Encodes values as `dtype` (rounding to nearest even).
    ///
    /// # Errors
    /// The checkpoint crate's, for a non-float dtype.
    fn encode(src: &[Self], dtype: Dtype, out: &mut [u8]) -> kiln_checkpoint::Result<()>;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const KEY_BITS: u32 = 32;

    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn abs(self) -> Self {
        f32::abs(self)
    }
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
    fn key(self) -> u64 {
        u64::from(self.to_bits())
    }
    fn from_key(key: u64) -> Self {
        f32::from_bits(key as u32)
    }
    fn decode(
        view: &TensorView<'_>,
        start: usize,
        out: &mut [Self],
    ) -> kiln_checkpoint::Result<()> {
        view.decode_range_f32(start, out)
    }
    fn encode(src: &[Self], dtype: Dtype, out: &mut [u8]) -> kiln_checkpoint::Result<()> {
        dtype::encode_f32(src, dtype, out)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const KEY_BITS: u32 = 64;

    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn abs(self) -> Self {
        f64::abs(self)
    }
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
    fn key(self) -> u64 {
        self.to_bits()
    }
    fn from_key(key: u64) -> Self {
        f64::from_bits(key)
    }
    fn decode(
        view: &TensorView<'_>,
        start: usize,
        out: &mut [Self],
    ) -> kiln_checkpoint::Result<()> {
        view.decode_range_f64(start, out)
    }
    fn encode(src: &[Self], dtype: Dtype, out: &mut [u8]) -> kiln_checkpoint::Result<()> {
        dtype::encode_f64(src, dtype, out)
    }
}
