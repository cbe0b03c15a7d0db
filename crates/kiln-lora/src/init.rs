//! LoRA initialisations (PEFT's `init_lora_weights`): the default, gaussian, PiSSA and OLoRA.
//! PiSSA and OLoRA move the principal part of W into the adapter and leave a residual base.

use faer::MatRef;

use crate::error::{Error, Result};
use crate::linalg::{Svd, matmul};

/// PEFT's `init_lora_weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// `true`: A Kaiming-uniform (a = √5, i.e. U(±1/√in)), B = 0; ΔW starts at 0.
    Default,
    /// `"gaussian"`: A ~ N(0, (1/r)²), B = 0.
    Gaussian,
    /// `"pissa"`: the top-r singular triplets of W: `A = √(S/s)·Vᵀ`, `B = U·√(S/s)`; the base
    /// becomes `W − s·B·A` (Meng et al. 2024).
    Pissa,
    /// `"olora"`: thin QR of W: `B = Q[:, :r]`, `A = R[:r]`; the base becomes `W − s·B·A`
    /// (Büyükakyüz 2024).
    Olora,
}

impl std::str::FromStr for Init {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "true" | "default" => Ok(Self::Default),
            "gaussian" => Ok(Self::Gaussian),
            "pissa" => Ok(Self::Pissa),
            "olora" => Ok(Self::Olora),
            other => Err(Error::Invalid(format!(
                "init `{other}` is not implemented; kiln has default (true), gaussian, pissa and olora"
            ))),
        }
    }
}

/// Initial factors of one module.
#[derive(Debug, Clone, PartialEq)]
pub struct InitFactors {
    /// `[r, in]`.
    pub a: Vec<f32>,
    /// `[out, r]`.
    pub b: Vec<f32>,
    /// The new base weight `[out, in]` for PiSSA and OLoRA (`None`: the base is unchanged).
    pub residual: Option<Vec<f32>>,
}

/// Uniform draws in [0, 1) from a seeded SplitMix64 stream.
fn uniform(seed: u64, n: usize) -> Vec<f64> {
    let mut state = seed ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

/// Initialises the factors of a module with base weight `w` (shape `[out, in]`, row-major), rank `r`
/// and LoRA scale `scaling` (α/r or α/√r). Random inits draw from `seed` (kiln's generator,
/// not torch's: the distribution is PEFT's, the values are not).
///
/// # Errors
/// [`Error::Invalid`] for r = 0 or r larger than the matrix, [`Error::Svd`].
pub fn init_factors(
    init: Init,
    w: &[f32],
    [out, inp]: [usize; 2],
    r: usize,
    scaling: f64,
    seed: u64,
    name: &str,
) -> Result<InitFactors> {
    if r == 0 || r > out.min(inp) {
        return Err(Error::Invalid(format!(
            "rank {r} for `{name}` ({out} × {inp}): a LoRA rank must be between 1 and the smaller dimension"
        )));
    }
    Ok(match init {
        Init::Default => {
            let bound = 1.0 / (inp as f64).sqrt();
            let a = uniform(seed, r * inp)
                .into_iter()
                .map(|u| ((2.0 * u - 1.0) * bound) as f32)
                .collect();
            InitFactors {
                a,
                b: vec![0.0; out * r],
                residual: None,
            }
        }
        Init::Gaussian => {
            let std = 1.0 / r as f64;
            let u = uniform(seed, 2 * r * inp);
            let a = u
                .chunks(2)
                .map(|p| {
                    let (u1, u2) = (p[0].max(f64::MIN_POSITIVE), p[1]);
                    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
                })
                .collect();
            InitFactors {
                a,
                b: vec![0.0; out * r],
                residual: None,
            }
        }
        Init::Pissa => {
            let svd = Svd::of(w, out, inp, name)?;
            let k = svd.k();
            let mut a = vec![0.0f32; r * inp];
            let mut b = vec![0.0f32; out * r];
            for j in 0..r {
                let s = (f64::from(svd.s[j]) / scaling).sqrt() as f32;
                for i in 0..out {
                    b[i * r + j] = svd.u[i * k + j] * s;
                }
                for c in 0..inp {
                    a[j * inp + c] = svd.vt[j * inp + c] * s;
                }
            }
            let residual = residual(w, &b, &a, out, r, inp, scaling);
            InitFactors {
                a,
                b,
                residual: Some(residual),
            }
        }
        Init::Olora => {
            let qr = MatRef::from_row_major_slice(w, out, inp).qr();
            let q = qr.compute_thin_Q();
            let rr = qr.thin_R();
            let mut a = vec![0.0f32; r * inp];
            let mut b = vec![0.0f32; out * r];
            for j in 0..r {
                for i in 0..out {
                    b[i * r + j] = q[(i, j)];
                }
                for c in 0..inp {
                    a[j * inp + c] = rr[(j, c)];
                }
            }
            let residual = residual(w, &b, &a, out, r, inp, scaling);
            InitFactors {
                a,
                b,
                residual: Some(residual),
            }
        }
    })
}

fn residual(w: &[f32], b: &[f32], a: &[f32], out: usize, r: usize, inp: usize, s: f64) -> Vec<f32> {
    let ba = matmul(b, a, out, r, inp);
    w.iter().zip(&ba).map(|(x, y)| x - (s as f32) * y).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_gaussian_have_peft_distributions_and_zero_b() {
        let w = vec![0.0; 64 * 100];
        let f = init_factors(Init::Default, &w, [64, 100], 8, 2.0, 1, "m").unwrap();
        assert!(f.b.iter().all(|x| *x == 0.0) && f.residual.is_none());
        let bound = 0.1f32; // 1/√100
        assert!(f.a.iter().all(|x| x.abs() <= bound));
        let mean_sq = f.a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / f.a.len() as f64;
        assert!((mean_sq - 0.01 / 3.0).abs() < 0.0005, "{mean_sq}"); // U(±b) has variance b²/3
        let g = init_factors(Init::Gaussian, &w, [64, 100], 8, 2.0, 1, "m").unwrap();
        let var = g.a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / g.a.len() as f64;
        assert!((var - 1.0 / 64.0).abs() < 0.002, "{var}");
        assert_ne!(
            g.a,
            init_factors(Init::Gaussian, &w, [64, 100], 8, 2.0, 2, "m")
                .unwrap()
                .a
        );
        assert!(init_factors(Init::Pissa, &w, [4, 3], 4, 1.0, 0, "m").is_err());
    }
}
