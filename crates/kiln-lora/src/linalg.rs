//! The linear algebra kiln-lora needs, on `faer`: products of LoRA factors, thin SVDs in f32 and
//! the rank measures of a spectrum.

use faer::{Mat, MatRef};

use crate::error::{Error, Result};

/// A row-major `rows × cols` view as a faer matrix.
fn view(data: &[f32], rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(data, rows, cols)
}

/// Copies a faer matrix out row-major.
fn row_major(m: MatRef<'_, f32>) -> Vec<f32> {
    let mut out = Vec::with_capacity(m.nrows() * m.ncols());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            out.push(m[(i, j)]);
        }
    }
    out
}

/// `left [m, k] · right [k, n]`, row-major in and out.
pub fn matmul(left: &[f32], right: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let p: Mat<f32> = view(left, m, k) * view(right, k, n);
    row_major(p.as_ref())
}

/// Transposes a row-major `rows × cols` matrix.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = data[i * cols + j];
        }
    }
    out
}

/// A thin SVD `M = U · diag(S) · Vᵀ`, row-major factors, singular values descending.
#[derive(Debug, Clone)]
pub struct Svd {
    /// `[rows, k]`.
    pub u: Vec<f32>,
    /// `k` singular values, descending.
    pub s: Vec<f32>,
    /// `[k, cols]`.
    pub vt: Vec<f32>,
    /// Rows of M.
    pub rows: usize,
    /// Columns of M.
    pub cols: usize,
}

impl Svd {
    /// The thin SVD of a row-major matrix, in f32 (as `torch.linalg.svd` on f32 and
    /// mergekit-extract-lora); `name` is for the error.
    ///
    /// # Errors
    /// [`Error::Svd`] if faer's SVD does not converge.
    pub fn of(data: &[f32], rows: usize, cols: usize, name: &str) -> Result<Self> {
        let svd = view(data, rows, cols).thin_svd().map_err(|e| Error::Svd {
            tensor: name.into(),
            message: format!("{e:?}"),
        })?;
        let k = rows.min(cols);
        let s: Vec<f32> = (0..k).map(|i| svd.S()[i]).collect();
        Ok(Self {
            u: row_major(svd.U()),
            s,
            vt: row_major(svd.V().transpose()),
            rows,
            cols,
        })
    }

    /// The top-`k` singular triplets by randomized SVD (Halko, Martinsson & Tropp 2011, Alg. 4.4
    /// with the QR-stabilised power iterations scikit-learn's `randomized_svd` uses): a seeded
    /// Gaussian sketch of `k + oversample` columns, `power_iters` passes of `M·Mᵀ`, then the thin
    /// SVD of the small projected matrix. Exact (to rounding) when `M` has rank ≤ `k + oversample`;
    /// otherwise the leading singular values converge with the power iterations. Costs matrix
    /// products and the SVD of an `(k + oversample) × cols` matrix instead of a full SVD.
    ///
    /// # Errors
    /// [`Error::Svd`] if the small SVD does not converge.
    #[allow(clippy::too_many_arguments)]
    pub fn randomized(
        data: &[f32],
        rows: usize,
        cols: usize,
        k: usize,
        oversample: usize,
        power_iters: usize,
        seed: u64,
        name: &str,
    ) -> Result<Self> {
        let l = (k + oversample).min(rows.min(cols));
        if l == rows.min(cols) {
            // the sketch would be as large as the matrix: the exact SVD is cheaper
            return Self::of(data, rows, cols, name);
        }
        let m = view(data, rows, cols);
        let omega = crate::spectrum::gaussian(cols, l, ((cols * l) as f64).sqrt(), seed);
        let omega = view(&omega, cols, l);
        let orth = |y: Mat<f32>| y.qr().compute_thin_Q();
        let mut q = orth(m * omega);
        for _ in 0..power_iters {
            let z = orth(m.transpose() * &q);
            q = orth(m * &z);
        }
        let b: Mat<f32> = q.transpose() * m; // [l, cols]
        let svd = b.thin_svd().map_err(|e| Error::Svd {
            tensor: name.into(),
            message: format!("{e:?}"),
        })?;
        let u: Mat<f32> = &q * svd.U(); // [rows, l]
        let s: Vec<f32> = (0..l).map(|i| svd.S()[i]).collect();
        Ok(Self {
            u: row_major(u.as_ref()),
            s,
            vt: row_major(svd.V().transpose()),
            rows,
            cols,
        })
    }

    /// Number of singular values.
    pub fn k(&self) -> usize {
        self.s.len()
    }

    /// `U[:, :r] · diag(S[:r]) · Vᵀ[:r]`, the best rank-r approximation.
    pub fn reconstruct(&self, r: usize) -> Vec<f32> {
        let (b, a) = self.factors(r, true);
        matmul(&b, &a, self.rows, r, self.cols)
    }

    /// LoRA factors of rank `r`: with `distribute`, `B = U·√S` and `A = √S·Vᵀ`; without,
    /// `B = U` and `A = S·Vᵀ` (mergekit-extract-lora's `--no-distribute-scale`).
    /// Returns `(B [rows, r], A [r, cols])`.
    pub fn factors(&self, r: usize, distribute: bool) -> (Vec<f32>, Vec<f32>) {
        let k = self.k();
        let mut b = vec![0.0; self.rows * r];
        let mut a = vec![0.0; r * self.cols];
        for j in 0..r {
            let s = self.s[j];
            let (sb, sa) = if distribute {
                (s.sqrt(), s.sqrt())
            } else {
                (1.0, s)
            };
            for i in 0..self.rows {
                b[i * r + j] = self.u[i * k + j] * sb;
            }
            for c in 0..self.cols {
                a[j * self.cols + c] = self.vt[j * self.cols + c] * sa;
            }
        }
        (b, a)
    }
}

/// Singular values only (cheaper than [`Svd::of`]), descending.
///
/// # Errors
/// [`Error::Svd`].
pub fn singular_values(data: &[f32], rows: usize, cols: usize, name: &str) -> Result<Vec<f32>> {
    let s = view(data, rows, cols)
        .singular_values()
        .map_err(|e| Error::Svd {
            tensor: name.into(),
            message: format!("{e:?}"),
        })?;
    Ok(s)
}

/// rank@τ: the smallest k with `Σ_{i≤k} σᵢ² ≥ τ·Σσ²` (PEFT's `_find_cutoff_index`, the σ²
/// energy definition of "LoRA Learns Less and Forgets Less"). 0 for a zero matrix.
pub fn rank_at(s: &[f32], tau: f64) -> usize {
    let energy: Vec<f64> = s.iter().map(|&x| f64::from(x) * f64::from(x)).collect();
    let total: f64 = energy.iter().sum();
    if total == 0.0 {
        return 0;
    }
    let cutoff = tau * total;
    let mut acc = 0.0;
    for (i, e) in energy.iter().enumerate() {
        acc += e;
        if acc >= cutoff {
            return i + 1;
        }
    }
    s.len()
}

/// Effective rank (Roy & Vetterli 2007): `exp(H(p))` with `pᵢ = σᵢ / Σσ`. 0 for a zero matrix.
pub fn effective_rank(s: &[f32]) -> f64 {
    let total: f64 = s.iter().map(|&x| f64::from(x)).sum();
    if total == 0.0 {
        return 0.0;
    }
    let h: f64 = s
        .iter()
        .map(|&x| f64::from(x) / total)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    h.exp()
}

/// Stable rank `‖M‖_F² / ‖M‖₂² = Σσ² / σ₁²`. 0 for a zero matrix.
pub fn stable_rank(s: &[f32]) -> f64 {
    let top = s.first().map_or(0.0, |&x| f64::from(x));
    if top == 0.0 {
        return 0.0;
    }
    s.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / (top * top)
}

/// The numerical rank: singular values above `max(rows, cols) · σ₁ · ε(f32)` (numpy's
/// `matrix_rank` tolerance).
pub fn numerical_rank(s: &[f32], rows: usize, cols: usize) -> usize {
    let top = s.first().copied().unwrap_or(0.0);
    let tol = top * rows.max(cols) as f32 * f32::EPSILON;
    s.iter().filter(|&&x| x > tol).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svd_reconstructs_and_ranks_are_right() {
        // rank-2 4x3 matrix
        let b = [1.0, 0.0, 2.0, 1.0, 0.0, 3.0, -1.0, 1.0];
        let a = [1.0, 2.0, 0.5, -1.0, 0.0, 2.0];
        let m = matmul(&b, &a, 4, 2, 3);
        let svd = Svd::of(&m, 4, 3, "m").unwrap();
        assert_eq!(numerical_rank(&svd.s, 4, 3), 2);
        let back = svd.reconstruct(2);
        for (x, y) in back.iter().zip(&m) {
            assert!((x - y).abs() < 1e-5, "{x} {y}");
        }
        assert_eq!(rank_at(&svd.s, 1.0 - 1e-9), 2);
        let (bb, aa) = svd.factors(2, false);
        let again = matmul(&bb, &aa, 4, 2, 3);
        for (x, y) in again.iter().zip(&m) {
            assert!((x - y).abs() < 1e-5);
        }
    }

    #[test]
    fn randomized_svd_matches_the_exact_one() {
        // rank 6 exactly: recovered to rounding with k = 4 + oversample 4
        let (rows, cols) = (60, 40);
        let u = crate::spectrum::gaussian(rows, 6, 10.0, 1);
        let v = crate::spectrum::gaussian(6, cols, 10.0, 2);
        let low = matmul(&u, &v, rows, 6, cols);
        let exact = Svd::of(&low, rows, cols, "low").unwrap();
        let fast = Svd::randomized(&low, rows, cols, 4, 4, 2, 7, "low").unwrap();
        assert_eq!(fast.k(), 8);
        for i in 0..6 {
            assert!((fast.s[i] - exact.s[i]).abs() <= 1e-4 * exact.s[0], "σ{i}");
        }
        let (a, b) = (fast.reconstruct(6), exact.reconstruct(6));
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * scale);
        }
        // a decaying full-rank spectrum: the top singular values to 1e-3 after power iterations
        let mut m = low.clone();
        let noise = crate::spectrum::gaussian(rows, cols, 0.5, 3);
        for (x, n) in m.iter_mut().zip(&noise) {
            *x += n;
        }
        let exact = Svd::of(&m, rows, cols, "m").unwrap();
        let fast = Svd::randomized(&m, rows, cols, 6, 10, 4, 7, "m").unwrap();
        for i in 0..6 {
            assert!((fast.s[i] - exact.s[i]).abs() <= 1e-3 * exact.s[i], "σ{i}");
        }
        // seeded
        let again = Svd::randomized(&m, rows, cols, 6, 10, 4, 7, "m").unwrap();
        assert_eq!(fast.s, again.s);
    }

    #[test]
    fn rank_measures_on_known_spectra() {
        assert_eq!(rank_at(&[3.0, 4.0f32.sqrt(), 0.0], 0.5), 1); // energies 9, 4: 9 ≥ 6.5
        assert_eq!(rank_at(&[3.0, 2.0, 0.0], 0.9), 2);
        assert_eq!(rank_at(&[0.0, 0.0], 0.9), 0);
        assert!((effective_rank(&[1.0, 1.0, 1.0, 1.0]) - 4.0).abs() < 1e-12);
        assert!((effective_rank(&[5.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!((stable_rank(&[2.0, 2.0, 2.0]) - 3.0).abs() < 1e-12);
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }
}
