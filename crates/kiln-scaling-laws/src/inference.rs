//! Inference-aware optimal allocation (Sardana et al., "Beyond Chinchilla-Optimal", ICML 2024,
//! <https://arxiv.org/abs/2401.00448>).
//!
//! For a target loss `ℓ` and a lifetime inference demand of `T` tokens, find
//!
//! ```text
//! argmin_{N, D : L(N, D) = ℓ}  6·N·D + 2·N·T
//! ```
//!
//! There is no closed form for `T > 0`. kiln parametrises the iso-loss curve by `N`
//! (`D(N) = (B/(ℓ − E − A·N^-alpha))^(1/beta)`, valid for `N > N_min = (A/(ℓ − E))^(1/alpha)`)
//! and finds the root of the derivative of the objective with respect to `ln N`, divided by
//! `6·N·D`:
//!
//! ```text
//! h(ln N) = 1 − alpha·A·N^-alpha / (beta·(ℓ − E − A·N^-alpha)) + T/(3·D(N))
//! ```
//!
//! `h → −∞` as `N → N_min` and `h(ln N_ch) = T/(3·D_ch) ≥ 0` at the Chinchilla-style model of the
//! same loss, so Brent's method on that bracket always converges. The paper's code instead runs
//! Newton's method on the equivalent equation in `D`
//! (`B(beta/alpha + 1)·D^-beta + (beta·B·T/(3·alpha))·D^(-beta-1) + E − ℓ = 0`); kiln keeps that
//! form as [`newton_train_tokens`], a cross-check that starts at `D_ch` where Newton's iterates
//! rise monotonically to the root (the function is convex and decreasing).

use argmin::core::{CostFunction, Executor, State};
use argmin::solver::brent::BrentRoot;
use serde::{Deserialize, Serialize};

use crate::chinchilla::{self, Allocation};
use crate::error::{Error, Result, non_negative};
use crate::law::ChinchillaLaw;

/// The inference-aware optimum for one (loss, inference demand), with its Chinchilla-style
/// baseline of equal loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InferenceOptimum {
    /// Target loss `ℓ` (nats per token).
    pub loss: f64,
    /// Lifetime inference demand `T` (tokens, prompt and generated together).
    pub inference_tokens: f64,
    /// The (N, D_train) that minimises lifetime FLOPs at this loss.
    pub optimal: Allocation,
    /// The Chinchilla-style (training-compute-optimal) model of the same loss.
    pub chinchilla: Allocation,
}

impl InferenceOptimum {
    /// Lifetime FLOPs of the optimum: `6·N·D_train + 2·N·T`.
    pub fn flops(&self) -> f64 {
        self.optimal.lifetime_flops(self.inference_tokens)
    }

    /// Lifetime FLOPs of the Chinchilla-style model serving the same demand.
    pub fn chinchilla_flops(&self) -> f64 {
        self.chinchilla.lifetime_flops(self.inference_tokens)
    }

    /// Optimal parameters as a fraction of the Chinchilla-style model's.
    pub fn params_ratio(&self) -> f64 {
        self.optimal.n_params / self.chinchilla.n_params
    }

    /// Optimal training tokens as a fraction of the Chinchilla-style model's.
    pub fn tokens_ratio(&self) -> f64 {
        self.optimal.train_tokens / self.chinchilla.train_tokens
    }

    /// Optimal lifetime FLOPs as a fraction of the Chinchilla-style model's.
    pub fn flops_ratio(&self) -> f64 {
        self.flops() / self.chinchilla_flops()
    }

    /// Lifetime FLOPs saved against the Chinchilla-style model.
    pub fn flops_saved(&self) -> f64 {
        self.chinchilla_flops() - self.flops()
    }
}

/// The (N, D_train) that reaches `loss` with the fewest lifetime FLOPs when the model then serves
/// `inference_tokens` tokens, and the Chinchilla-style model it replaces.
///
/// With `inference_tokens = 0` the optimum is exactly the Chinchilla-style model.
///
/// # Errors
/// [`Error::LossBelowIrreducible`] for `loss <= E`, [`Error::Negative`] for a negative or
/// non-finite demand, [`Error::NoConvergence`] if the demand is so large that the optimum cannot
/// be resolved in `f64` (far beyond any real deployment).
///
/// # Example
/// ```
/// use kiln_scaling_laws::{ChinchillaLaw, inference};
/// // The README example of the paper's code: loss 1.947, 2e12 inference tokens.
/// let opt = inference::optimal_allocation(&ChinchillaLaw::sardana(), 1.947, 2e12)?;
/// assert!((opt.optimal.n_params / 2.418e10 - 1.0).abs() < 1e-3);
/// assert!((opt.params_ratio() * 100.0 - 70.96).abs() < 0.005);
/// # Ok::<(), kiln_scaling_laws::Error>(())
/// ```
pub fn optimal_allocation(
    law: &ChinchillaLaw,
    loss: f64,
    inference_tokens: f64,
) -> Result<InferenceOptimum> {
    non_negative("inference_tokens (tokens)", inference_tokens)?;
    let chinchilla = chinchilla::for_loss(law, loss)?;
    let optimal = iso_loss_optimum(law, loss, inference_tokens)?;
    Ok(InferenceOptimum {
        loss,
        inference_tokens,
        optimal,
        chinchilla,
    })
}

/// The point of the iso-loss curve `L(N, D) = loss` that minimises `6·N·D + 2·N·t`.
///
/// `t` is a token count weighting inference against training FLOPs: the demand itself for the
/// FLOP problem, an effective demand for the dollar problem (see
/// [`CostModel::effective_inference_tokens`](crate::cost::CostModel::effective_inference_tokens)).
///
/// # Errors
/// As [`optimal_allocation`].
pub fn iso_loss_optimum(law: &ChinchillaLaw, loss: f64, t: f64) -> Result<Allocation> {
    non_negative("inference_tokens (tokens)", t)?;
    let chinchilla = chinchilla::for_loss(law, loss)?;
    if t == 0.0 {
        return Ok(chinchilla);
    }
    let gap = loss - law.e;
    let problem = IsoLossStationarity { law: *law, gap, t };
    let hi = chinchilla.n_params.ln();
    // In exact arithmetic h(hi) = t / (3·D_ch) > 0. When the demand is negligible against D_ch
    // that is below the rounding error of `1 − r`, and the optimum lies within f64 resolution of
    // the Chinchilla-style model: return it rather than search a bracket that rounding broke.
    if problem.h(hi) <= 0.0 {
        return Ok(chinchilla);
    }
    let ln_n_min = (law.a / gap).ln() / law.alpha;
    let context = || format!("loss {loss}, inference tokens {t:e}, law {law}");

    // h -> -inf as N -> N_min, so halving the distance to N_min finds a negative end quickly.
    let mut step = 0.5 * (hi - ln_n_min);
    let lo = loop {
        let x = ln_n_min + step;
        let h = problem.h(x);
        if h < 0.0 && h.is_finite() {
            break x;
        }
        step *= 0.5;
        if step <= 8.0 * f64::EPSILON * ln_n_min.abs() || !h.is_finite() {
            return Err(Error::NoConvergence {
                solver: "bracketing for Brent's method",
                context: context(),
                reason:
                    "the optimum lies closer to the smallest feasible model than f64 resolves; \
                         the inference demand is implausibly large for this loss"
                        .into(),
            });
        }
    };

    let solver = BrentRoot::new(lo, hi, 1e-14);
    let result = Executor::new(problem, solver)
        .configure(|state| state.max_iters(200))
        .run()
        .map_err(|e| Error::NoConvergence {
            solver: "Brent's method",
            context: context(),
            reason: e.to_string(),
        })?;
    let state = result.state();
    let ln_n = *state.get_best_param().ok_or_else(|| Error::NoConvergence {
        solver: "Brent's method",
        context: context(),
        reason: "no iterate".into(),
    })?;
    if !state.terminated() || state.get_iter() >= 200 {
        return Err(Error::NoConvergence {
            solver: "Brent's method",
            context: context(),
            reason: format!("stopped after {} iterations", state.get_iter()),
        });
    }
    let n_params = ln_n.exp();
    let train_tokens = chinchilla::tokens_to_reach_loss(law, n_params, loss)?;
    Ok(Allocation {
        n_params,
        train_tokens,
    })
}

/// The stationarity condition of the iso-loss problem as a function of `ln N`.
#[derive(Clone, Copy)]
struct IsoLossStationarity {
    law: ChinchillaLaw,
    /// `ℓ − E`.
    gap: f64,
    /// Inference tokens (or effective tokens).
    t: f64,
}

impl IsoLossStationarity {
    fn h(&self, ln_n: f64) -> f64 {
        let law = &self.law;
        let param_term = law.a * (-law.alpha * ln_n).exp();
        let u = self.gap - param_term;
        let d = (law.b / u).powf(1.0 / law.beta);
        1.0 - law.alpha * param_term / (law.beta * u) + self.t / (3.0 * d)
    }
}

impl CostFunction for IsoLossStationarity {
    type Param = f64;
    type Output = f64;

    fn cost(&self, ln_n: &f64) -> std::result::Result<f64, argmin::core::Error> {
        Ok(self.h(*ln_n))
    }
}

/// The optimal training tokens by Newton's method on the paper's equation in `D`
/// (`B(beta/alpha + 1)·D^-beta + (beta·B·T/(3·alpha))·D^(-beta-1) + E − ℓ = 0`), started at the
/// Chinchilla-style `D_ch`. A cross-check of [`optimal_allocation`]; both agree to ~1e-14.
///
/// # Errors
/// As [`optimal_allocation`].
pub fn newton_train_tokens(law: &ChinchillaLaw, loss: f64, inference_tokens: f64) -> Result<f64> {
    non_negative("inference_tokens (tokens)", inference_tokens)?;
    let mut d = chinchilla::for_loss(law, loss)?.train_tokens;
    let c1 = law.b * (law.beta / law.alpha + 1.0);
    let c2 = law.beta * law.b * inference_tokens / (3.0 * law.alpha);
    let gap = loss - law.e;
    for _ in 0..200 {
        let f = c1 * d.powf(-law.beta) + c2 * d.powf(-law.beta - 1.0) - gap;
        let df = -law.beta * c1 * d.powf(-law.beta - 1.0)
            - (law.beta + 1.0) * c2 * d.powf(-law.beta - 2.0);
        let next = d - f / df;
        if !next.is_finite() {
            break;
        }
        let done = ((next - d) / d).abs() < 1e-15;
        d = next;
        if done {
            return Ok(d);
        }
    }
    Err(Error::NoConvergence {
        solver: "Newton's method",
        context: format!("loss {loss}, inference tokens {inference_tokens:e}"),
        reason: "no convergence in 200 iterations".into(),
    })
}

/// [`optimal_allocation`] for each demand in `inference_tokens`.
///
/// # Errors
/// The first error of [`optimal_allocation`].
pub fn sweep(
    law: &ChinchillaLaw,
    loss: f64,
    inference_tokens: &[f64],
) -> Result<Vec<InferenceOptimum>> {
    inference_tokens
        .iter()
        .map(|&t| optimal_allocation(law, loss, t))
        .collect()
}

/// `points` values spaced evenly in log space from `start` to `stop` inclusive.
///
/// # Errors
/// [`Error::NotPositive`] if `start` or `stop` is not a finite positive number.
pub fn log_space(start: f64, stop: f64, points: usize) -> Result<Vec<f64>> {
    let (a, b) = (
        crate::error::positive("start", start)?.ln(),
        crate::error::positive("stop", stop)?.ln(),
    );
    Ok(match points {
        0 => Vec::new(),
        1 => vec![start],
        _ => (0..points)
            .map(|i| (a + (b - a) * i as f64 / (points - 1) as f64).exp())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_demand_is_chinchilla_style() {
        let law = ChinchillaLaw::sardana();
        let opt = optimal_allocation(&law, 2.2, 0.0).unwrap();
        assert_eq!(opt.optimal, opt.chinchilla);
        assert_eq!(opt.flops_ratio(), 1.0);
    }

    #[test]
    fn brent_and_newton_agree() {
        for law in crate::LawPreset::ALL.map(crate::LawPreset::law) {
            for loss in [law.e + 0.1, law.e + 0.3, law.e + 1.5] {
                for t in [1e6, 1e10, 2e12, 1e15, 1e18] {
                    let opt = optimal_allocation(&law, loss, t).unwrap();
                    let d = newton_train_tokens(&law, loss, t).unwrap();
                    let rel = (opt.optimal.train_tokens / d - 1.0).abs();
                    assert!(rel < 1e-11, "{law} loss {loss} T {t}: rel {rel}");
                    assert!((opt.optimal.loss(&law) / loss - 1.0).abs() < 1e-12);
                    assert!(opt.flops_ratio() <= 1.0 + 1e-12);
                }
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let law = ChinchillaLaw::sardana();
        assert!(matches!(
            optimal_allocation(&law, 1.6, 1e12),
            Err(Error::LossBelowIrreducible { .. })
        ));
        assert!(matches!(
            optimal_allocation(&law, 2.0, -1.0),
            Err(Error::Negative { .. })
        ));
        assert!(matches!(
            optimal_allocation(&law, 2.0, f64::NAN),
            Err(Error::Negative { .. })
        ));
    }

    #[test]
    fn log_space_endpoints() {
        let v = log_space(1e9, 1e15, 7).unwrap();
        assert_eq!(v.len(), 7);
        assert!((v[0] - 1e9).abs() < 1e-3 && (v[6] / 1e15 - 1.0).abs() < 1e-12);
        assert!((v[3] / 1e12 - 1.0).abs() < 1e-12);
    }
}
