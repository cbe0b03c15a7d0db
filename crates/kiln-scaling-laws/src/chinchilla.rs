//! Training-compute-optimal ("Chinchilla-style") allocation in closed form.
//!
//! Minimising `L(N, D)` subject to `6·N·D = C` gives (Hoffmann et al. 2022, eq. 4)
//! `N_opt(C) = G·(C/6)^a` and `D_opt(C) = G⁻¹·(C/6)^b` with
//! `G = (alpha·A / (beta·B))^(1/(alpha+beta))`, `a = beta/(alpha+beta)`, `b = alpha/(alpha+beta)`.
//! Along that curve `alpha·A·N^-alpha = beta·B·D^-beta`, which gives the Chinchilla-style model
//! for a target loss in closed form too.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, positive, representable};
use crate::law::ChinchillaLaw;

/// FLOPs per parameter per training token (forward + backward), the `6` of `C = 6·N·D`.
pub const TRAIN_FLOPS_PER_PARAM_TOKEN: f64 = 6.0;
/// FLOPs per parameter per inference token (forward only), the `2` of `2·N·D_inf`.
pub const INFERENCE_FLOPS_PER_PARAM_TOKEN: f64 = 2.0;

/// A model size and a training-set size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// Parameters `N`.
    pub n_params: f64,
    /// Training tokens `D_train`.
    pub train_tokens: f64,
}

impl Allocation {
    /// Training FLOPs `6·N·D`.
    pub fn train_flops(&self) -> f64 {
        TRAIN_FLOPS_PER_PARAM_TOKEN * self.n_params * self.train_tokens
    }

    /// Inference FLOPs `2·N·D_inf` for `inference_tokens` tokens (prompt and generated together).
    pub fn inference_flops(&self, inference_tokens: f64) -> f64 {
        INFERENCE_FLOPS_PER_PARAM_TOKEN * self.n_params * inference_tokens
    }

    /// Lifetime FLOPs `6·N·D_train + 2·N·D_inf`.
    pub fn lifetime_flops(&self, inference_tokens: f64) -> f64 {
        self.train_flops() + self.inference_flops(inference_tokens)
    }

    /// Training tokens per parameter.
    pub fn tokens_per_param(&self) -> f64 {
        self.train_tokens / self.n_params
    }

    /// The loss `law` predicts for this allocation (nats per token).
    pub fn loss(&self, law: &ChinchillaLaw) -> f64 {
        law.loss_unchecked(self.n_params, self.train_tokens)
    }
}

/// The constants of the compute-optimal frontier: `(G, a, b)`.
///
/// `G = (alpha·A / (beta·B))^(1/(alpha+beta))`, `a = beta/(alpha+beta)`, `b = alpha/(alpha+beta)`.
pub fn frontier_constants(law: &ChinchillaLaw) -> (f64, f64, f64) {
    let s = law.alpha + law.beta;
    let g = ((law.alpha * law.a) / (law.beta * law.b)).powf(1.0 / s);
    (g, law.beta / s, law.alpha / s)
}

/// The loss-minimising (N, D) for a training budget of `flops` FLOPs (`C = 6·N·D`).
///
/// # Errors
/// [`Error::NotPositive`] if `flops` is not a finite positive number.
///
/// # Example
/// ```
/// use kiln_scaling_laws::{ChinchillaLaw, chinchilla};
/// let best = chinchilla::compute_optimal(&ChinchillaLaw::sardana(), 1e24)?;
/// assert!((best.n_params / 5.368e10 - 1.0).abs() < 1e-3); // the reference code prints 5.368e10
/// # Ok::<(), kiln_scaling_laws::Error>(())
/// ```
pub fn compute_optimal(law: &ChinchillaLaw, flops: f64) -> Result<Allocation> {
    positive("flops (training FLOPs)", flops)?;
    let (g, a, b) = frontier_constants(law);
    let c6 = flops / TRAIN_FLOPS_PER_PARAM_TOKEN;
    let input = || format!("training FLOPs {flops:e}");
    Ok(Allocation {
        n_params: representable("n_params (parameters)", g * c6.powf(a), input)?,
        train_tokens: representable("train_tokens (tokens)", c6.powf(b) / g, input)?,
    })
}

/// The Chinchilla-style (training-compute-optimal) model that reaches `loss`:
/// `N = (A·(1 + alpha/beta)/(ℓ − E))^(1/alpha)`, `D = (B·(1 + beta/alpha)/(ℓ − E))^(1/beta)`.
///
/// # Errors
/// [`Error::LossBelowIrreducible`] if `loss <= E`; [`Error::NotPositive`] for a bad loss.
pub fn for_loss(law: &ChinchillaLaw, loss: f64) -> Result<Allocation> {
    law.check_reachable(loss)?;
    let gap = loss - law.e;
    let input = || format!("loss {loss:e}");
    Ok(Allocation {
        n_params: representable(
            "n_params (parameters)",
            (law.a * (1.0 + law.alpha / law.beta) / gap).powf(1.0 / law.alpha),
            input,
        )?,
        train_tokens: representable(
            "train_tokens (tokens)",
            (law.b * (1.0 + law.beta / law.alpha) / gap).powf(1.0 / law.beta),
            input,
        )?,
    })
}

/// The compute-optimal number of training tokens for a model of `n_params` parameters: the
/// budget at which `N` is optimal is `C/6 = (N/G)^(1/a)`, so `D = (C/6)/N`.
///
/// # Errors
/// [`Error::NotPositive`] if `n_params` is not a finite positive number.
pub fn optimal_tokens_for_params(law: &ChinchillaLaw, n_params: f64) -> Result<f64> {
    positive("n_params (parameters)", n_params)?;
    let (g, a, _) = frontier_constants(law);
    representable(
        "compute-optimal train_tokens (tokens)",
        (n_params / g).powf(1.0 / a) / n_params,
        || format!("n_params {n_params:e}"),
    )
}

/// The compute-optimal model for a training set of `train_tokens` tokens (inverse of
/// [`optimal_tokens_for_params`]): `C/6 = (D·G)^(1/b)`, `N = (C/6)/D`.
///
/// # Errors
/// [`Error::NotPositive`] if `train_tokens` is not a finite positive number.
pub fn optimal_params_for_tokens(law: &ChinchillaLaw, train_tokens: f64) -> Result<f64> {
    positive("train_tokens (tokens)", train_tokens)?;
    let (g, _, b) = frontier_constants(law);
    representable(
        "compute-optimal n_params (parameters)",
        (train_tokens * g).powf(1.0 / b) / train_tokens,
        || format!("train_tokens {train_tokens:e}"),
    )
}

/// Training tokens a model of `n_params` parameters needs to reach `loss`:
/// `D = (B / (ℓ − E − A·N^-alpha))^(1/beta)`.
///
/// # Errors
/// [`Error::UnreachableLoss`] if the model is too small to ever reach `loss`
/// (`ℓ <= E + A·N^-alpha`), plus the input checks of [`ChinchillaLaw::check_reachable`].
pub fn tokens_to_reach_loss(law: &ChinchillaLaw, n_params: f64, loss: f64) -> Result<f64> {
    positive("n_params (parameters)", n_params)?;
    law.check_reachable(loss)?;
    let floor = law.e + law.a * n_params.powf(-law.alpha);
    if loss <= floor {
        return Err(Error::UnreachableLoss {
            loss,
            given: "n_params",
            value: n_params,
            other: "tokens",
            floor,
        });
    }
    representable(
        "train_tokens (tokens)",
        (law.b / (loss - floor)).powf(1.0 / law.beta),
        || format!("n_params {n_params:e} and loss {loss:e}"),
    )
}

/// Parameters a model trained on `train_tokens` tokens needs to reach `loss`:
/// `N = (A / (ℓ − E − B·D^-beta))^(1/alpha)`.
///
/// # Errors
/// [`Error::UnreachableLoss`] if no model reaches `loss` on that much data
/// (`ℓ <= E + B·D^-beta`), plus the input checks of [`ChinchillaLaw::check_reachable`].
pub fn params_to_reach_loss(law: &ChinchillaLaw, train_tokens: f64, loss: f64) -> Result<f64> {
    positive("train_tokens (tokens)", train_tokens)?;
    law.check_reachable(loss)?;
    let floor = law.e + law.b * train_tokens.powf(-law.beta);
    if loss <= floor {
        return Err(Error::UnreachableLoss {
            loss,
            given: "train_tokens",
            value: train_tokens,
            other: "parameters",
            floor,
        });
    }
    representable(
        "n_params (parameters)",
        (law.a / (loss - floor)).powf(1.0 / law.alpha),
        || format!("train_tokens {train_tokens:e} and loss {loss:e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_loss_lies_on_the_compute_optimal_frontier() {
        for law in crate::LawPreset::ALL.map(crate::LawPreset::law) {
            for loss in [1.95, 2.1, 2.6, 3.5] {
                let ch = for_loss(&law, loss).unwrap();
                let frontier = compute_optimal(&law, ch.train_flops()).unwrap();
                assert!((frontier.n_params / ch.n_params - 1.0).abs() < 1e-10);
                assert!((ch.loss(&law) / loss - 1.0).abs() < 1e-12);
                let d = optimal_tokens_for_params(&law, ch.n_params).unwrap();
                assert!((d / ch.train_tokens - 1.0).abs() < 1e-10);
                let n = optimal_params_for_tokens(&law, ch.train_tokens).unwrap();
                assert!((n / ch.n_params - 1.0).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn reach_functions_invert_the_law() {
        let law = ChinchillaLaw::sardana();
        let loss = law.loss(7e10, 1e12).unwrap();
        let d = tokens_to_reach_loss(&law, 7e10, loss).unwrap();
        assert!((d / 1e12 - 1.0).abs() < 1e-9);
        let n = params_to_reach_loss(&law, 1e12, loss).unwrap();
        assert!((n / 7e10 - 1.0).abs() < 1e-9);
    }

    #[test]
    fn unreachable_losses_are_errors() {
        let law = ChinchillaLaw::sardana();
        // A 1M-parameter model cannot reach 2.0 however long it trains.
        let err = tokens_to_reach_loss(&law, 1e6, 2.0).unwrap_err();
        assert!(matches!(err, Error::UnreachableLoss { .. }), "{err}");
        assert!(err.to_string().contains("unreachable"));
        let err = params_to_reach_loss(&law, 1e6, 2.0).unwrap_err();
        assert!(matches!(err, Error::UnreachableLoss { .. }));
        assert!(matches!(
            for_loss(&law, 1.69),
            Err(Error::LossBelowIrreducible { .. })
        ));
        assert!(matches!(
            compute_optimal(&law, -1.0),
            Err(Error::NotPositive { .. })
        ));
    }
}
