//! CPU fast paths for the operations burn's flex backend runs slowest in training.
//!
//! burn-flex 0.22.1 runs element-wise work (unary, binary and zip ops, `exp`, `erf`, `tanh`) on
//! the calling thread only, one libm call per element, and records every op of a composed
//! function on the autodiff tape. A profile of a tiny-BERT training step (`cargo xtask profile
//! train`) put the dropout masks' random numbers, the MLM loss's `log_softmax` and page faults
//! from freshly allocated buffers near the top, next to matmul. This module replaces the worst of
//! them on flex, for f32 tensors, and leaves every other device (CUDA, wgpu, …) and dtype on the
//! plain burn path:
//!
//! - [`nll_rows`] (used by every cross-entropy in kiln's models): the per-row negative
//!   log-likelihood and its analytic gradient `softmax − one_hot` computed together, rows in
//!   parallel, instead of six recorded ops and their backward passes.
//! - [`gelu`] / [`gelu_tanh`]: the activation and its derivative in one parallel pass; the tanh
//!   form (GPT-2's `gelu_new`) is eight recorded ops in burn.
//! - [`DropoutExt::apply`]: the keep mask drawn by a counter-based generator in parallel, the
//!   `1/(1−p)` scale folded into it, applied by one multiply (burn draws each element from a
//!   ChaCha stream on one thread and multiplies twice).
//! - [`tune_allocator`]: glibc `malloc` settings that keep freed activations in the heap instead
//!   of returning them to the kernel (which then faults them in again, zeroed, on the next step).
//!
//! How a fused op keeps burn's autodiff exact: its value `y` and local derivative `d` are
//! computed on the host, and the recorded result is `y + (x − detach(x))·d` (for the loss,
//! summed over each row). The bracket is exactly zero, so the value is `y` bit for bit, and the
//! gradient burn derives through the one multiply is `upstream·d` — the analytic backward.
//! Results do not depend on the number of threads. Tests compare values and gradients with the
//! unfused burn expressions.
//!
//! ```
//! use kiln_models::burn::tensor::{Device, Int, Tensor};
//! use kiln_models::cpu;
//!
//! cpu::tune_allocator(); // once, at start-up (glibc only; a no-op elsewhere)
//! let device = Device::flex().autodiff();
//! let logits = Tensor::<2>::from_floats([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], &device).require_grad();
//! let labels = Tensor::<1, Int>::from_ints([0, 2], &device);
//! let nll = cpu::nll_rows(cpu::gelu_tanh(logits.clone()), labels);
//! let grads = nll.mean().backward();
//! assert_eq!(logits.grad(&grads).unwrap().dims(), [2, 3]);
//! ```

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::{DType, Distribution, TensorData};
use rayon::prelude::*;

/// Elements per parallel work item: large enough that scheduling costs nothing.
const CHUNK: usize = 1 << 14;

/// Whether `device` is burn's flex CPU backend (with or without autodiff).
pub fn is_flex(device: &Device) -> bool {
    device.clone().inner() == Device::flex()
}

/// `x`'s values when the fast path applies (flex, f32), else `None`.
fn host_f32<const D: usize>(x: &Tensor<D>) -> Option<Vec<f32>> {
    if x.dtype() != DType::F32 || !is_flex(&x.device()) {
        return None;
    }
    x.clone().into_data().try_into_vec::<f32>().ok()
}

/// `value + (x − detach(x))·derivative` on an autodiff device: `value` with the gradient
/// `upstream·derivative`. On a device without autodiff, `value`.
fn with_derivative<const D: usize>(
    x: Tensor<D>,
    value: Vec<f32>,
    derivative: impl FnOnce() -> Vec<f32>,
) -> Tensor<D> {
    let device = x.device();
    let shape = x.shape();
    let y = Tensor::<D>::from_data(TensorData::new(value, shape.clone()), &device);
    if !device.is_autodiff() {
        return y;
    }
    let d = Tensor::<D>::from_data(TensorData::new(derivative(), shape), &device);
    (x.clone() - x.detach()) * d + y
}

/// √(2/π), the tanh-GELU constant.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// 1/√2.
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

fn gelu_exact_and_slope(x: f32) -> (f32, f32) {
    let cdf = 0.5 * (1.0 + libm::erff(x * FRAC_1_SQRT_2));
    let pdf = FRAC_1_SQRT_2PI * (-0.5 * x * x).exp();
    (x * cdf, cdf + x * pdf)
}

fn gelu_tanh_and_slope(x: f32) -> (f32, f32) {
    let x2 = x * x;
    let t = (SQRT_2_OVER_PI * (x + 0.044_715 * x2 * x)).tanh();
    let half = 0.5 * (1.0 + t);
    (
        x * half,
        half + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x2),
    )
}

fn map_parallel(v: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; v.len()];
    out.par_chunks_mut(CHUNK)
        .zip(v.par_chunks(CHUNK))
        .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &x)| *o = f(x)));
    out
}

fn fused_activation<const D: usize>(
    x: Tensor<D>,
    f: fn(f32) -> (f32, f32),
    fallback: fn(Tensor<D>) -> Tensor<D>,
) -> Tensor<D> {
    let Some(v) = host_f32(&x) else {
        return fallback(x);
    };
    if !x.device().is_autodiff() {
        return with_derivative(x, map_parallel(&v, |x| f(x).0), Vec::new);
    }
    // Value and slope in one pass.
    let (mut value, mut slope) = (vec![0.0f32; v.len()], vec![0.0f32; v.len()]);
    value
        .par_chunks_mut(CHUNK)
        .zip(slope.par_chunks_mut(CHUNK))
        .zip(v.par_chunks(CHUNK))
        .for_each(|((y, d), x)| {
            for ((y, d), &x) in y.iter_mut().zip(d.iter_mut()).zip(x) {
                (*y, *d) = f(x);
            }
        });
    with_derivative(x, value, || slope)
}

/// Exact GELU `x·Φ(x)`, fused with its derivative on flex (see the module docs).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    fused_activation(x, gelu_exact_and_slope, burn::tensor::activation::gelu)
}

/// tanh-approximated GELU (`gelu_new`, GPT-2's), fused with its derivative on flex.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    fused_activation(
        x,
        gelu_tanh_and_slope,
        burn::tensor::activation::gelu_approximate,
    )
}

/// Per-row negative log-likelihood `logsumexp(logits[i]) − logits[i, targets[i]]` (nats) of
/// `logits` `[N, C]` against `targets` `[N]`, as `[N]`.
///
/// To leave rows out (ignored labels), `select` the kept rows first, as kiln's weighted MLM loss
/// does. On flex with f32 logits the value and the gradient
/// `softmax − one_hot` are computed together (see the module docs); elsewhere, and whenever a
/// target lies outside `0..C`, it is `log_softmax` and `gather`.
pub fn nll_rows(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [n, c] = logits.dims();
    let fast = host_f32(&logits).and_then(|x| {
        let t = targets
            .clone()
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .ok()?;
        let in_range = c > 0 && t.len() == n && t.iter().all(|&t| (0..c as i64).contains(&t));
        in_range.then_some((x, t))
    });
    let Some((x, t)) = fast else {
        return burn::tensor::activation::log_softmax(logits, 1)
            .gather(1, targets.reshape([n, 1]))
            .reshape([n])
            .neg();
    };
    let device = logits.device();
    let autodiff = device.is_autodiff();
    let mut nll = vec![0.0f32; n];
    let mut grad = if autodiff {
        vec![0.0f32; n * c]
    } else {
        Vec::new()
    };
    // Rows per parallel work item.
    let rows = (CHUNK / c).max(1);
    let work = |i: usize, loss: &mut f32, g: &mut [f32]| {
        let row = &x[i * c..(i + 1) * c];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        if g.is_empty() {
            row.iter().for_each(|&v| sum += f64::from((v - max).exp()));
        } else {
            for (g, &v) in g.iter_mut().zip(row) {
                let e = (v - max).exp();
                *g = e;
                sum += f64::from(e);
            }
            let inv = (1.0 / sum) as f32;
            g.iter_mut().for_each(|g| *g *= inv);
            g[t[i] as usize] -= 1.0;
        }
        *loss = (f64::from(max) + sum.ln() - f64::from(row[t[i] as usize])) as f32;
    };
    if autodiff {
        nll.par_iter_mut()
            .zip(grad.par_chunks_mut(c))
            .enumerate()
            .with_min_len(rows)
            .for_each(|(i, (loss, g))| work(i, loss, g));
    } else {
        nll.par_iter_mut()
            .enumerate()
            .with_min_len(rows)
            .for_each(|(i, loss)| work(i, loss, &mut []));
    }
    let value = Tensor::<1>::from_data(TensorData::new(nll, [n]), &device);
    if !autodiff {
        return value;
    }
    let g = Tensor::<2>::from_data(TensorData::new(grad, [n, c]), &device);
    ((logits.clone() - logits.detach()) * g)
        .sum_dim(1)
        .reshape([n])
        + value
}

/// Dropout with a fast mask on flex: see [`DropoutExt::apply`].
pub trait DropoutExt {
    /// burn's [`Dropout::forward`] semantics (identity unless the layer is training on an
    /// autodiff device with `prob > 0`), with the mask made faster on flex: each element's keep
    /// decision is a hash of (a seed, its index) — SplitMix64, two 32-bit draws per hash — drawn
    /// in parallel, and `mask·1/(1−p)` is applied by one multiply. The seed is drawn from the
    /// device's random generator at each call, so `device.seed(s)` (which kiln's trainer calls
    /// every step from the run's seed and the step) makes the masks reproducible, on resume too,
    /// whatever the number of threads. On other devices the mask comes from burn's Bernoulli
    /// sampler, also folded into one multiply.
    fn apply<const D: usize>(&self, x: Tensor<D>) -> Tensor<D>;
}

impl DropoutExt for Dropout {
    fn apply<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let device = x.device();
        if !self.training.is_enabled() || !device.is_autodiff() || self.prob == 0.0 {
            return x;
        }
        let keep = 1.0 - self.prob;
        let shape = x.shape();
        if x.dtype() != DType::F32 || !is_flex(&device) {
            // Untracked (random_like makes a fresh tensor): only the one multiply is recorded.
            let mask = x
                .random_like(Distribution::Bernoulli(keep))
                .mul_scalar(1.0 / keep);
            return x * mask;
        }
        let seed = draw_seed(&device);
        let mask = dropout_mask(seed, shape.num_elements(), keep);
        x * Tensor::<D>::from_data(TensorData::new(mask, shape), &device)
    }
}

/// A 64-bit seed from the device's random generator: three uniform f32 draws (about 24 random
/// bits each) mixed by SplitMix64.
fn draw_seed(device: &Device) -> u64 {
    let draws = Tensor::<1>::random([3], Distribution::Default, &device.clone().inner())
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    draws
        .iter()
        .fold(0u64, |acc, v| splitmix64(acc ^ u64::from(v.to_bits())))
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` values, each `1/keep` with probability `keep` and 0 otherwise, as a function of
/// `(seed, index)` only.
pub(crate) fn dropout_mask(seed: u64, n: usize, keep: f64) -> Vec<f32> {
    // keep ∈ (0, 1): the threshold on a uniform u32 fits in u64 without overflow.
    let threshold = (keep * 4_294_967_296.0) as u64;
    let scale = (1.0 / keep) as f32;
    let key = splitmix64(seed);
    let mut mask = vec![0.0f32; n];
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(c, m)| {
        let base = (c * CHUNK) as u64;
        for (pair, m) in m.chunks_mut(2).enumerate() {
            let h = splitmix64(key ^ (base / 2 + pair as u64));
            for (k, m) in m.iter_mut().enumerate() {
                let u = (h >> (32 * k)) & 0xFFFF_FFFF;
                *m = if u < threshold { scale } else { 0.0 };
            }
        }
    });
    mask
}

/// Tunes glibc's `malloc` for training loops: every block comes from the heap instead of a
/// fresh `mmap` (`M_MMAP_MAX` 0, with `M_MMAP_THRESHOLD` at its 32 MiB maximum as well), and
/// freed memory stays mapped (`M_TRIM_THRESHOLD` 1 GiB, `M_TOP_PAD` 64 MiB), so a step's
/// activations, gradients and logits reuse the previous step's pages instead of faulting in new
/// zeroed ones. Cost: the process keeps freed heap memory (up to about 1 GiB at the top, and
/// whatever fragmentation leaves in the middle) instead of returning it to the system; where
/// memory is tight, compare peak RSS with `KILN_MALLOC_TUNING=0`. kiln's training and inference
/// binaries and its benchmarks call it at start-up (not `kiln merge`, which streams); a library
/// user can too. It never affects results.
///
/// Does nothing (and returns `false`) off Linux/glibc, when `KILN_MALLOC_TUNING=0`, or when the
/// user already tunes malloc through `GLIBC_TUNABLES` or a `MALLOC_*` variable.
pub fn tune_allocator() -> bool {
    let vars: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    tuning_wanted(&vars) && set_malloc_options()
}

/// Whether the environment leaves malloc to kiln (see [`tune_allocator`]).
fn tuning_wanted(vars: &[(String, String)]) -> bool {
    !vars.iter().any(|(k, v)| {
        k == "GLIBC_TUNABLES" || k.starts_with("MALLOC_") || (k == "KILN_MALLOC_TUNING" && v == "0")
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_malloc_options() -> bool {
    // SAFETY: mallopt only changes glibc's allocator parameters; it is safe to call at any time
    // (glibc takes its arena lock) and each value is within the documented range.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
            && libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
            && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_malloc_options() -> bool {
    false
}

/// `h` `[B, L, D]` times the transpose of a tied embedding `w` `[V, D]`, as `[B, L, V]`, with
/// the batch folded into rows: one `[B·L, D]×[D, V]` matmul whose weight gradient is a single
/// `[D, V]` product, where a batched `h.matmul(wᵀ.unsqueeze())` builds a `[B, D, V]` gradient
/// and sums it over the batch.
pub(crate) fn tied_projection(h: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    let [b, l, d] = h.dims();
    let v = w.dims()[0];
    h.reshape([b * l, d])
        .matmul(w.transpose())
        .reshape([b, l, v])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::DropoutConfig;
    use burn::tensor::activation;

    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let h = splitmix64(seed ^ i);
                ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let worst = a
            .iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0f32, f32::max);
        assert!(
            worst <= tol,
            "{what}: max relative difference {worst} > {tol}"
        );
    }

    fn vec1(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_into_vec().unwrap()
    }

    /// Value and gradient of `sum(f(x)·w)` for fixed random `w`, with `f` fused and unfused.
    fn check_activation(
        fused: fn(Tensor<2>) -> Tensor<2>,
        reference: fn(Tensor<2>) -> Tensor<2>,
        what: &str,
    ) {
        let device = Device::flex().autodiff();
        let (r, c) = (37, 129);
        let x = values(r * c, 1, 4.0);
        let w = values(r * c, 2, 1.0);
        let run = |f: fn(Tensor<2>) -> Tensor<2>| {
            let x =
                Tensor::<2>::from_data(TensorData::new(x.clone(), [r, c]), &device).require_grad();
            let w = Tensor::<2>::from_data(TensorData::new(w.clone(), [r, c]), &device);
            let y = f(x.clone());
            let grads = (y.clone() * w).sum().backward();
            let g = x.grad(&grads).unwrap();
            (vec1(y.inner().reshape([-1])), vec1(g.reshape([-1])))
        };
        let (y, g) = run(fused);
        let (y_ref, g_ref) = run(reference);
        close(&y, &y_ref, 1e-6, &format!("{what} values"));
        close(&g, &g_ref, 1e-5, &format!("{what} gradients"));
        // Without autodiff the value is the same.
        let plain = Tensor::<2>::from_data(TensorData::new(x.clone(), [r, c]), &Device::flex());
        close(&vec1(fused(plain).reshape([-1])), &y_ref, 1e-6, what);
    }

    #[test]
    fn fused_gelus_match_burns_values_and_gradients() {
        check_activation(gelu, activation::gelu, "exact GELU");
        check_activation(gelu_tanh, activation::gelu_approximate, "tanh GELU");
    }

    fn reference_nll(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
        let n = targets.dims()[0];
        activation::log_softmax(logits, 1)
            .gather(1, targets.reshape([n, 1]))
            .reshape([n])
            .neg()
    }

    #[test]
    fn fused_nll_matches_log_softmax_values_and_gradients() {
        let device = Device::flex().autodiff();
        let (n, c) = (23, 301);
        let x = values(n * c, 3, 8.0);
        let t: Vec<i64> = (0..n as i64).map(|i| (i * 37) % c as i64).collect();
        let weights = values(n, 4, 1.0);
        let run = |fused: bool| {
            let x =
                Tensor::<2>::from_data(TensorData::new(x.clone(), [n, c]), &device).require_grad();
            let t = Tensor::<1, Int>::from_data(TensorData::new(t.clone(), [n]), &device);
            let w = Tensor::<1>::from_data(TensorData::new(weights.clone(), [n]), &device);
            let nll = if fused {
                nll_rows(x.clone(), t)
            } else {
                reference_nll(x.clone(), t)
            };
            let grads = (nll.clone() * w).sum().backward();
            (
                vec1(nll.inner()),
                vec1(x.grad(&grads).unwrap().reshape([-1])),
            )
        };
        let (l, g) = run(true);
        let (l_ref, g_ref) = run(false);
        close(&l, &l_ref, 2e-6, "nll values");
        close(&g, &g_ref, 2e-6, "nll gradients");
        // Without autodiff, the same values.
        let plain = Tensor::<2>::from_data(TensorData::new(x.clone(), [n, c]), &Device::flex());
        let tt = Tensor::<1, Int>::from_data(TensorData::new(t.clone(), [n]), &Device::flex());
        let fused = vec1(nll_rows(plain.clone(), tt.clone()));
        let reference = vec1(reference_nll(plain, tt));
        close(&fused, &reference, 2e-6, "nll without autodiff");
    }

    #[test]
    fn out_of_range_targets_take_the_plain_path() {
        let device = Device::flex();
        let x = Tensor::<2>::from_data(TensorData::new(values(6, 5, 1.0), [2, 3]), &device);
        // The plain path's gather clamps or errors inside burn; the fused one must not index
        // out of bounds, so it hands such input over rather than reading past a row.
        let t = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &device);
        assert_eq!(vec1(nll_rows(x, t)).len(), 2);
    }

    #[test]
    fn dropout_masks_keep_the_rate_scale_and_seed() {
        let keep = 0.9;
        let a = dropout_mask(7, 100_001, keep);
        assert_eq!(a, dropout_mask(7, 100_001, keep), "same seed, same mask");
        assert_ne!(
            a,
            dropout_mask(8, 100_001, keep),
            "another seed, another mask"
        );
        let kept = a.iter().filter(|&&m| m != 0.0).count() as f64 / a.len() as f64;
        // 100k Bernoulli(0.9) draws: standard deviation 0.00095.
        assert!((kept - keep).abs() < 0.005, "kept fraction {kept}");
        assert!(a.iter().all(|&m| m == 0.0 || m == (1.0 / keep) as f32));
        // The prefix of a longer mask is the shorter mask: a pure function of the index.
        assert_eq!(&dropout_mask(7, 200_000, keep)[..100_001], &a[..]);
    }

    #[test]
    fn dropout_follows_the_device_seed_and_burns_rules() {
        let device = Device::flex().autodiff();
        let layer = DropoutConfig::new(0.25).init();
        let x = || Tensor::<2>::ones([64, 64], &device);
        let _rng = crate::TEST_RNG.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(3);
        let a = vec1(layer.apply(x()).inner().reshape([-1]));
        device.seed(3);
        let b = vec1(layer.apply(x()).inner().reshape([-1]));
        assert_eq!(a, b, "reseeding the device repeats the mask");
        assert!(a.contains(&0.0) && a.iter().any(|&v| v != 0.0));
        let c = vec1(layer.apply(x()).inner().reshape([-1]));
        assert_ne!(a, c, "the next call draws a new mask");
        // Gradient: the mask itself.
        let xg = x().require_grad();
        device.seed(3);
        let y = layer.apply(xg.clone());
        let g = vec1(xg.grad(&y.sum().backward()).unwrap().reshape([-1]));
        assert_eq!(g, a);
        // Identity without autodiff or with p = 0.
        let plain = Tensor::<2>::ones([4, 4], &Device::flex());
        assert_eq!(vec1(layer.apply(plain).reshape([-1])), vec![1.0; 16]);
        let none = DropoutConfig::new(0.0).init();
        assert_eq!(vec1(none.apply(x()).inner().reshape([-1])), vec![1.0; 4096]);
    }

    #[test]
    fn tied_projection_matches_the_batched_matmul() {
        let device = Device::flex().autodiff();
        let h = Tensor::<3>::from_data(
            TensorData::new(values(2 * 3 * 4, 6, 1.0), [2, 3, 4]),
            &device,
        )
        .require_grad();
        let w = Tensor::<2>::from_data(TensorData::new(values(5 * 4, 7, 1.0), [5, 4]), &device)
            .require_grad();
        let a = tied_projection(h.clone(), w.clone());
        let b = h.clone().matmul(w.clone().transpose().unsqueeze());
        close(
            &vec1(a.clone().inner().reshape([-1])),
            &vec1(b.clone().inner().reshape([-1])),
            1e-6,
            "values",
        );
        let ga = w.grad(&a.sum().backward()).unwrap();
        let gb = w.grad(&b.sum().backward()).unwrap();
        close(
            &vec1(ga.reshape([-1])),
            &vec1(gb.reshape([-1])),
            1e-6,
            "gradients",
        );
    }

    #[test]
    fn allocator_tuning_steps_aside_for_the_user() {
        let v = |k: &str, x: &str| (k.to_owned(), x.to_owned());
        assert!(tuning_wanted(&[
            v("PATH", "/bin"),
            v("KILN_MALLOC_TUNING", "1")
        ]));
        assert!(!tuning_wanted(&[v("KILN_MALLOC_TUNING", "0")]));
        assert!(!tuning_wanted(&[v(
            "GLIBC_TUNABLES",
            "glibc.malloc.top_pad=0"
        )]));
        assert!(!tuning_wanted(&[v("MALLOC_ARENA_MAX", "2")]));
        assert!(!tuning_wanted(&[v("MALLOC_TOP_PAD_", "0")]));
    }
}
