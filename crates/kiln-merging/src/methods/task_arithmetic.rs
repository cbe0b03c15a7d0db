//! The task-arithmetic family: Task Arithmetic, TIES, DARE (see the [module docs](super)).

use crate::real::Real;
use crate::sparsify::{RandomDrop, TopK};

/// How task vectors are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Combine<F> {
    /// TIES sign election: per entry, the sign of `Σ wᵢ·δᵢ` (positive on a tie) wins, and only
    /// task vectors with that sign take part.
    pub consensus: bool,
    /// Divide by the sum of the weights that took part (zero sums count as 1).
    pub normalize: bool,
    /// Scale of the merged task vector.
    pub lambda: F,
}

/// `out = base + λ·merge(wᵢ·δᵢ)` for already-sparsified task vectors `deltas`.
///
/// Without consensus the divisor is `Σ wᵢ` (a sum below 1e-8 in magnitude counts as 1); with
/// consensus it is the sum of the weights whose weighted delta has the elected sign (0 → 1),
/// as in mergekit's generalized task arithmetic and the TIES authors' disjoint mean.
///
/// # Panics
/// If the slices' lengths disagree.
pub fn combine<F: Real>(
    base: &[F],
    deltas: &[&[F]],
    weights: &[F],
    how: &Combine<F>,
    out: &mut [F],
) {
    assert_eq!(deltas.len(), weights.len(), "one weight per task vector");
    assert!(
        base.len() == out.len() && deltas.iter().all(|d| d.len() == out.len()),
        "equal lengths"
    );
    // Column-wise loops (one task vector at a time) so the compiler vectorises them.
    if how.consensus {
        // `out` first holds Σ wᵢ·δᵢ, whose sign is the elected one.
        out.fill(F::ZERO);
        for (d, &w) in deltas.iter().zip(weights) {
            for (o, &x) in out.iter_mut().zip(d.iter()) {
                *o += w * x;
            }
        }
        let mut mixed = vec![F::ZERO; out.len()];
        let mut divisor = vec![F::ZERO; out.len()];
        for (d, &w) in deltas.iter().zip(weights) {
            for (((m, v), &t), &x) in mixed
                .iter_mut()
                .zip(divisor.iter_mut())
                .zip(out.iter())
                .zip(d.iter())
            {
                let wd = w * x;
                // Branch-free (signs are unpredictable): non-short-circuit `&`/`|` and selects.
                let agrees = (wd > F::ZERO) & (t >= F::ZERO) | (wd < F::ZERO) & (t < F::ZERO);
                *m += if agrees { wd } else { F::ZERO };
                *v += if agrees { w } else { F::ZERO };
            }
        }
        for (((o, &b), &m), &v) in out.iter_mut().zip(base).zip(&mixed).zip(&divisor) {
            let merged = if how.normalize {
                m / if v == F::ZERO { F::ONE } else { v }
            } else {
                m
            };
            *o = b + how.lambda * merged;
        }
    } else {
        let weight_sum = weights.iter().fold(F::ZERO, |a, &w| a + w);
        let divisor = if weight_sum.abs() < F::from_f64(1e-8) {
            F::ONE
        } else {
            weight_sum
        };
        let scale = if how.normalize {
            how.lambda / divisor
        } else {
            how.lambda
        };
        out.fill(F::ZERO);
        for (d, &w) in deltas.iter().zip(weights) {
            for (o, &x) in out.iter_mut().zip(d.iter()) {
                *o += w * x;
            }
        }
        for (o, &b) in out.iter_mut().zip(base) {
            *o = b + scale * *o;
        }
    }
}

/// Task Arithmetic (Ilharco et al., arXiv 2212.04089): `θ_base + λ·Σ wᵢ·(θᵢ − θ_base)`.
///
/// # Panics
/// If the slices' lengths disagree.
pub fn task_arithmetic<F: Real>(
    base: &[F],
    models: &[&[F]],
    weights: &[F],
    lambda: F,
    out: &mut [F],
) {
    let deltas: Vec<Vec<F>> = models.iter().map(|m| delta(base, m)).collect();
    let refs: Vec<&[F]> = deltas.iter().map(Vec::as_slice).collect();
    combine(
        base,
        &refs,
        weights,
        &Combine {
            consensus: false,
            normalize: false,
            lambda,
        },
        out,
    );
}

/// TIES-Merging (Yadav et al., arXiv 2306.01708) of whole tensors: keep each task vector's top
/// `densities[i]` by magnitude, elect signs by mass, take the (weighted) disjoint mean, scale by λ.
///
/// # Panics
/// If the slices' lengths disagree.
pub fn ties<F: Real>(
    base: &[F],
    models: &[&[F]],
    weights: &[F],
    densities: &[f64],
    lambda: F,
    out: &mut [F],
) {
    let deltas: Vec<Vec<F>> = models
        .iter()
        .zip(densities)
        .map(|(m, &density)| {
            let mut d = delta(base, m);
            TopK::of(&d, density).apply(&mut d, 0);
            d
        })
        .collect();
    let refs: Vec<&[F]> = deltas.iter().map(Vec::as_slice).collect();
    combine(
        base,
        &refs,
        weights,
        &Combine {
            consensus: true,
            normalize: true,
            lambda,
        },
        out,
    );
}

/// Options of [`dare`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dare<F> {
    /// Keep probability of each entry.
    pub density: f64,
    /// Seed of the random drop.
    pub seed: u64,
    /// Sign-elect after dropping (`dare_ties`) rather than sum (`dare_linear`).
    pub consensus: bool,
    /// Scale of the merged task vector.
    pub lambda: F,
}

/// DARE (Yu et al., arXiv 2311.03099) of whole tensors: drop each task vector's entries with
/// probability `1 − density`, rescale survivors by `1/density`, then sum (`dare_linear`) or
/// sign-elect (`dare_ties`; not normalised, as mergekit).
///
/// # Panics
/// If the slices' lengths disagree.
pub fn dare<F: Real>(base: &[F], models: &[&[F]], weights: &[F], how: &Dare<F>, out: &mut [F]) {
    let deltas: Vec<Vec<F>> = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut d = delta(base, m);
            let drop = RandomDrop {
                density: how.density,
                seed: how.seed,
                stream: crate::sparsify::stream_id("", i),
            };
            drop.apply(&mut d, 0, F::from_f64(1.0 / how.density));
            d
        })
        .collect();
    let refs: Vec<&[F]> = deltas.iter().map(Vec::as_slice).collect();
    combine(
        base,
        &refs,
        weights,
        &Combine {
            consensus: how.consensus,
            normalize: false,
            lambda: how.lambda,
        },
        out,
    );
}

fn delta<F: Real>(base: &[F], model: &[F]) -> Vec<F> {
    assert_eq!(
        base.len(),
        model.len(),
        "base and model have the same length"
    );
    model.iter().zip(base).map(|(&m, &b)| m - b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_election_and_disjoint_mean() {
        let base = [0.0f32; 4];
        let a = [1.0f32, -1.0, 2.0, 0.0];
        let b = [3.0f32, 2.0, -1.0, 0.0];
        let mut out = [0.0; 4];
        ties(&base, &[&a, &b], &[1.0, 1.0], &[1.0, 1.0], 1.0, &mut out);
        // entry 0: both +, mean 2; entry 1: sum +1 → only b (2); entry 2: sum +1 → only a (2);
        // entry 3: nothing takes part, divisor 1 → 0.
        assert_eq!(out, [2.0, 2.0, 2.0, 0.0]);
    }

    #[test]
    fn ties_with_full_density_and_one_model_is_task_arithmetic() {
        let base = [0.5f64, 1.0, -2.0];
        let m = [1.5f64, -1.0, -2.5];
        let (mut a, mut b) = ([0.0; 3], [0.0; 3]);
        ties(&base, &[&m], &[1.0], &[1.0], 0.7, &mut a);
        task_arithmetic(&base, &[&m], &[1.0], 0.7, &mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-15);
        }
    }
}

/// How PEFT's TIES elects the sign of each entry (`majority_sign_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MajoritySign {
    /// The sign of `Σ δᵢ` (mass; PEFT's default `"total"`).
    #[default]
    Total,
    /// The sign held by more task vectors (`"frequency"`).
    Frequency,
}

/// PEFT's disjoint merge (`peft.utils.merge_utils.ties`/`dare_ties` after pruning), used by
/// `add_weighted_adapter`: the sign is elected on the *unweighted* (already sparsified) task
/// vectors — positive on a tie —, entries whose sign agrees contribute `wᵢ·δᵢ`, and the sum is
/// divided by how many agreed (at least 1). mergekit's TIES ([`combine`] with consensus) elects
/// on the weighted vectors and divides by the agreeing weights instead; the two agree only for
/// unit weights.
///
/// # Panics
/// If the slices' lengths disagree.
pub fn peft_disjoint_merge<F: Real>(
    deltas: &[&[F]],
    weights: &[F],
    sign: MajoritySign,
    out: &mut [F],
) {
    assert_eq!(deltas.len(), weights.len(), "one weight per task vector");
    assert!(deltas.iter().all(|d| d.len() == out.len()), "equal lengths");
    let mut elected = vec![F::ZERO; out.len()];
    for d in deltas {
        for (e, &x) in elected.iter_mut().zip(d.iter()) {
            *e += match sign {
                MajoritySign::Total => x,
                // torch.sign: −1, 0 or +1
                MajoritySign::Frequency => {
                    if x > F::ZERO {
                        F::ONE
                    } else if x < F::ZERO {
                        -F::ONE
                    } else {
                        F::ZERO
                    }
                }
            };
        }
    }
    let mut count = vec![F::ZERO; out.len()];
    out.fill(F::ZERO);
    for (d, &w) in deltas.iter().zip(weights) {
        for (((o, c), &e), &x) in out
            .iter_mut()
            .zip(count.iter_mut())
            .zip(&elected)
            .zip(d.iter())
        {
            // torch's sign(0) = 0 never equals the elected ±1, so zeros do not count
            let agrees = (x > F::ZERO) & (e >= F::ZERO) | (x < F::ZERO) & (e < F::ZERO);
            *o += if agrees { w * x } else { F::ZERO };
            *c += if agrees { F::ONE } else { F::ZERO };
        }
    }
    for (o, &c) in out.iter_mut().zip(&count) {
        *o = *o / if c < F::ONE { F::ONE } else { c };
    }
}

#[cfg(test)]
mod peft_tests {
    use super::*;

    #[test]
    fn peft_disjoint_merge_elects_unweighted_and_divides_by_count() {
        // weights 0.5, 10, 1
        // entry 0: 2, 1, 0 → elected +; a and b agree (0 never does): (0.5·2 + 10·1) / 2 = 5.5
        // entry 1: 3, −1, 0 → the unweighted sum 2 elects +, although the weighted mass
        //          0.5·3 − 10·1 is negative (mergekit would elect −); only a agrees: 0.5·3 / 1
        // entry 2: 1, −0.5, −0.5 → total 0 elects + (a: 0.5·1), frequency elects − (b and c:
        //          (10·−0.5 + 1·−0.5) / 2)
        let a = [2.0f64, 3.0, 1.0];
        let b = [1.0f64, -1.0, -0.5];
        let c = [0.0f64, 0.0, -0.5];
        let mut out = [0.0; 3];
        peft_disjoint_merge(
            &[&a, &b, &c],
            &[0.5, 10.0, 1.0],
            MajoritySign::Total,
            &mut out,
        );
        assert!((out[0] - 5.5).abs() < 1e-12, "{out:?}");
        assert!((out[1] - 1.5).abs() < 1e-12, "{out:?}");
        assert!((out[2] - 0.5).abs() < 1e-12, "{out:?}");
        peft_disjoint_merge(
            &[&a, &b, &c],
            &[0.5, 10.0, 1.0],
            MajoritySign::Frequency,
            &mut out,
        );
        assert!((out[2] - -2.75).abs() < 1e-12, "{out:?}");
    }
}
