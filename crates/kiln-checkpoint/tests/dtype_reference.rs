//! f32/f16/bf16/f64 conversions bit for bit against numpy and ml_dtypes.
//!
//! `fixtures/dtype_reference.safetensors` is written by `fixtures/make_dtype_fixture.py` with the
//! reference `safetensors` package; reading it also checks kiln against a file it did not write.

use std::path::PathBuf;

use kiln_checkpoint::{Checkpoint, Dtype, dtype};

fn fixture() -> Checkpoint {
    Checkpoint::open(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dtype_reference.safetensors"),
    )
    .unwrap()
}

fn u16s(c: &Checkpoint, name: &str) -> Vec<u16> {
    let t = c.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::U16);
    t.data
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn u32s(c: &Checkpoint, name: &str) -> Vec<u32> {
    let t = c.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::U32);
    t.data
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn u64s(c: &Checkpoint, name: &str) -> Vec<u64> {
    let t = c.tensor(name).unwrap();
    t.data
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn bytes_of<T: Copy>(v: &[T], f: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
    v.iter().flat_map(|x| f(*x)).collect()
}

/// Bit-exact, except that NaN only has to stay NaN with its sign: numpy, ml_dtypes and torch
/// each canonicalise NaN payloads differently.
#[track_caller]
fn same_16(got: &[u16], want: &[u16], input: &[u64], what: &str, exp_mask: u16, man_mask: u16) {
    assert_eq!(got.len(), want.len());
    let is_nan = |b: u16| b & exp_mask == exp_mask && b & man_mask != 0;
    for i in 0..got.len() {
        if is_nan(want[i]) {
            assert!(
                is_nan(got[i]) && got[i] & 0x8000 == want[i] & 0x8000,
                "{what}[{i}] input {:#x}: NaN {:#06x} vs {:#06x}",
                input[i],
                got[i],
                want[i]
            );
        } else {
            assert_eq!(got[i], want[i], "{what}[{i}]: input {:#x}", input[i]);
        }
    }
}

#[track_caller]
fn same_32(got: &[u32], want: &[u32], what: &str) {
    let is_nan = |b: u32| b & 0x7F80_0000 == 0x7F80_0000 && b & 0x007F_FFFF != 0;
    for i in 0..got.len() {
        if is_nan(want[i]) {
            assert!(
                is_nan(got[i]) && got[i] >> 31 == want[i] >> 31,
                "{what}[{i}]: NaN {:#x} vs {:#x}",
                got[i],
                want[i]
            );
        } else {
            assert_eq!(got[i], want[i], "{what}[{i}]");
        }
    }
}

fn to_u16(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn to_u32(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn f32_to_f16_and_bf16_match_numpy_and_ml_dtypes() {
    let c = fixture();
    let input = u32s(&c, "f32_in");
    let raw = bytes_of(&input, |x| x.to_le_bytes().to_vec());
    let wide: Vec<u64> = input.iter().map(|&x| u64::from(x)).collect();
    let f16 = dtype::convert(&raw, Dtype::F32, Dtype::F16).unwrap();
    same_16(
        &to_u16(&f16),
        &u16s(&c, "f32_to_f16"),
        &wide,
        "f32→f16",
        0x7C00,
        0x03FF,
    );
    let bf16 = dtype::convert(&raw, Dtype::F32, Dtype::BF16).unwrap();
    same_16(
        &to_u16(&bf16),
        &u16s(&c, "f32_to_bf16"),
        &wide,
        "f32→bf16",
        0x7F80,
        0x007F,
    );
}

#[test]
fn half_formats_widen_and_cross_convert_like_the_reference() {
    let c = fixture();
    for (src, dt, to_f32, to_other, other, exp, man) in [
        (
            "f16_in",
            Dtype::F16,
            "f16_to_f32",
            "f16_to_bf16",
            Dtype::BF16,
            0x7F80u16,
            0x007Fu16,
        ),
        (
            "bf16_in",
            Dtype::BF16,
            "bf16_to_f32",
            "bf16_to_f16",
            Dtype::F16,
            0x7C00,
            0x03FF,
        ),
    ] {
        let input = u16s(&c, src);
        let raw = bytes_of(&input, |x| x.to_le_bytes().to_vec());
        let wide: Vec<u64> = input.iter().map(|&x| u64::from(x)).collect();
        let f32 = dtype::convert(&raw, dt, Dtype::F32).unwrap();
        same_32(&to_u32(&f32), &u32s(&c, to_f32), &format!("{dt}→F32"));
        let o = dtype::convert(&raw, dt, other).unwrap();
        same_16(
            &to_u16(&o),
            &u16s(&c, to_other),
            &wide,
            &format!("{dt}→{other}"),
            exp,
            man,
        );
    }
}

#[test]
fn f64_to_f32_matches_numpy() {
    let c = fixture();
    let input = u64s(&c, "f64_in");
    let raw = bytes_of(&input, |x| x.to_le_bytes().to_vec());
    let f32 = dtype::convert(&raw, Dtype::F64, Dtype::F32).unwrap();
    same_32(&to_u32(&f32), &u32s(&c, "f64_to_f32"), "f64→f32");
}

#[test]
fn reads_metadata_written_by_the_reference_package() {
    let c = fixture();
    assert_eq!(c.metadata()["generated_by"], "make_dtype_fixture.py");
    assert_eq!(c.len(), 11);
}
