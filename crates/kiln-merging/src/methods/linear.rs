//! Linear merging: weighted averages (model soups) and WiSE-FT.

use crate::real::Real;

/// `out = Σ wᵢ·xᵢ`, divided by `Σ wᵢ` when `normalize` (Wortsman et al., "Model soups",
/// arXiv 2203.05482). A zero weight sum under `normalize` leaves the unnormalised sum.
///
/// # Panics
/// If the slices' lengths disagree (a programming error, not input).
pub fn linear<F: Real>(inputs: &[&[F]], weights: &[F], normalize: bool, out: &mut [F]) {
    assert_eq!(inputs.len(), weights.len(), "one weight per input");
    let total = weights.iter().fold(F::ZERO, |a, &w| a + w);
    let scale = if normalize && total != F::ZERO {
        F::ONE / total
    } else {
        F::ONE
    };
    out.fill(F::ZERO);
    for (x, &w) in inputs.iter().zip(weights) {
        assert_eq!(x.len(), out.len(), "inputs and output have the same length");
        for (o, &v) in out.iter_mut().zip(x.iter()) {
            *o += w * v;
        }
    }
    if scale != F::ONE {
        for o in out.iter_mut() {
            *o = *o * scale;
        }
    }
}

/// WiSE-FT (Wortsman et al., arXiv 2109.01903): `out = (1 − α)·θ₀ + α·θ_ft`.
///
/// # Panics
/// If the slices' lengths disagree.
pub fn wise_ft<F: Real>(alpha: F, base: &[F], fine_tuned: &[F], out: &mut [F]) {
    linear(&[base, fine_tuned], &[F::ONE - alpha, alpha], false, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_one_zero_return_the_first() {
        let a = [1.0f32, -2.0, 3.5];
        let b = [7.0f32, 8.0, 9.0];
        let mut out = [0.0; 3];
        linear(&[&a, &b], &[1.0, 0.0], true, &mut out);
        assert_eq!(out, a);
        linear(&[&a, &b], &[1.0, 1.0], true, &mut out);
        assert_eq!(out, [4.0, 3.0, 6.25]);
        wise_ft(0.25, &a, &b, &mut out);
        assert_eq!(out, [2.5, 0.5, 4.875]);
    }
}
