//! Spherical linear interpolation (Shoemake 1985) between two whole tensors.
//!
//! Both tensors are flattened; the angle comes from their normalised dot product. When they are
//! nearly colinear (|cos θ| > 0.9995) the formula is ill-conditioned and plain linear
//! interpolation is used instead, as in mergekit and the widely used reference gist.

use crate::real::Real;

/// |cos θ| above which SLERP falls back to linear interpolation.
pub const DOT_THRESHOLD: f64 = 0.9995;
/// Norms below this count as 1 (the direction of a zero tensor is undefined).
pub const NORM_EPS: f64 = 1e-8;

/// Sums over the two tensors that determine the interpolation (accumulate chunk by chunk).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SlerpStats {
    /// Σ v0·v1.
    pub dot: f64,
    /// Σ v0².
    pub norm0_sq: f64,
    /// Σ v1².
    pub norm1_sq: f64,
}

impl SlerpStats {
    /// Adds a chunk.
    pub fn add<F: Real>(&mut self, v0: &[F], v1: &[F]) {
        for (&a, &b) in v0.iter().zip(v1) {
            let (a, b) = (a.to_f64(), b.to_f64());
            self.dot += a * b;
            self.norm0_sq += a * a;
            self.norm1_sq += b * b;
        }
    }

    /// Combines two partial sums.
    pub fn merge(self, o: Self) -> Self {
        Self {
            dot: self.dot + o.dot,
            norm0_sq: self.norm0_sq + o.norm0_sq,
            norm1_sq: self.norm1_sq + o.norm1_sq,
        }
    }

    /// The coefficients `(a, b)` with `slerp(t) = a·v0 + b·v1`.
    pub fn coefficients(&self, t: f64) -> (f64, f64) {
        let n0 = self.norm0_sq.sqrt();
        let n1 = self.norm1_sq.sqrt();
        let n0 = if n0 > NORM_EPS { n0 } else { 1.0 };
        let n1 = if n1 > NORM_EPS { n1 } else { 1.0 };
        let cos = (self.dot / (n0 * n1)).clamp(-1.0, 1.0);
        if cos.abs() > DOT_THRESHOLD {
            return (1.0 - t, t);
        }
        let theta = cos.acos();
        let sin = theta.sin();
        (((1.0 - t) * theta).sin() / sin, (t * theta).sin() / sin)
    }
}

/// `out = slerp(t, v0, v1)` over whole tensors.
///
/// # Panics
/// If the slices' lengths disagree.
pub fn slerp<F: Real>(t: f64, v0: &[F], v1: &[F], out: &mut [F]) {
    assert!(
        v0.len() == v1.len() && v0.len() == out.len(),
        "equal lengths"
    );
    let mut stats = SlerpStats::default();
    stats.add(v0, v1);
    let (a, b) = stats.coefficients(t);
    let (a, b) = (F::from_f64(a), F::from_f64(b));
    for ((o, &x), &y) in out.iter_mut().zip(v0).zip(v1) {
        *o = a * x + b * y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_orthogonal_midpoint() {
        let v0 = [1.0f64, 0.0];
        let v1 = [0.0f64, 1.0];
        let mut out = [0.0; 2];
        slerp(0.0, &v0, &v1, &mut out);
        assert!((out[0] - 1.0).abs() < 1e-15 && out[1].abs() < 1e-15);
        slerp(0.5, &v0, &v1, &mut out);
        let s = std::f64::consts::FRAC_1_SQRT_2;
        assert!((out[0] - s).abs() < 1e-15 && (out[1] - s).abs() < 1e-15);
        // Colinear: linear interpolation.
        slerp(0.25, &[2.0f64, 2.0], &[4.0, 4.0], &mut out);
        assert_eq!(out, [2.5, 2.5]);
    }
}
