//! Fitting a Chinchilla law to your own runs (Hoffmann et al. 2022, Approach 3).
//!
//! Minimises, over `θ = (alpha, beta, e, a, b)` with `A = eᵃ`, `B = eᵇ`, `E = eᵉ`,
//!
//! ```text
//! Σᵢ Huber_δ( LSE(a − alpha·ln Nᵢ, b − beta·ln Dᵢ, e) − ln Lᵢ ),   δ = 1e-3
//! ```
//!
//! with L-BFGS (argmin, More–Thuente line search) and an analytic gradient, from every point of
//! the standard initialisation grid (4,500 starts), in parallel with rayon, keeping the lowest
//! objective. The objective is the **sum** of Huber terms, not the mean: with δ = 1e-3 the mean
//! shrinks the scale so far that default tolerances stop early (Besiroglu et al. 2024).

use argmin::core::{CostFunction, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::law::ChinchillaLaw;
use crate::runs::Run;

/// The grid of initial points, one list per coordinate of `θ = (alpha, beta, e, a, b)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitGrid {
    /// Starting values of `alpha`.
    pub alpha: Vec<f64>,
    /// Starting values of `beta`.
    pub beta: Vec<f64>,
    /// Starting values of `e = ln E`.
    pub e: Vec<f64>,
    /// Starting values of `a = ln A`.
    pub a: Vec<f64>,
    /// Starting values of `b = ln B`.
    pub b: Vec<f64>,
}

impl InitGrid {
    /// The grid of Hoffmann et al. as implemented by Sardana et al. and Epoch AI:
    /// alpha, beta ∈ {0, 0.5, 1, 1.5, 2}, e ∈ {−1, −0.5, 0, 0.5, 1}, a, b ∈ {0, 5, …, 25}
    /// (4,500 points).
    pub fn hoffmann() -> Self {
        Self {
            alpha: vec![0.0, 0.5, 1.0, 1.5, 2.0],
            beta: vec![0.0, 0.5, 1.0, 1.5, 2.0],
            e: vec![-1.0, -0.5, 0.0, 0.5, 1.0],
            a: vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
            b: vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
        }
    }

    /// Number of starting points.
    pub fn len(&self) -> usize {
        self.alpha.len() * self.beta.len() * self.e.len() * self.a.len() * self.b.len()
    }

    /// Whether the grid has no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th point `[alpha, beta, e, a, b]`, in row-major order (`b` fastest).
    fn point(&self, mut i: usize) -> [f64; 5] {
        let mut out = [0.0; 5];
        let axes = [&self.alpha, &self.beta, &self.e, &self.a, &self.b];
        for (slot, axis) in out.iter_mut().zip(axes).rev() {
            *slot = axis[i % axis.len()];
            i /= axis.len();
        }
        out
    }
}

impl Default for InitGrid {
    fn default() -> Self {
        Self::hoffmann()
    }
}

/// Options of [`fit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitOptions {
    /// Huber threshold δ on log-loss residuals (default 1e-3).
    pub delta: f64,
    /// Initial points (default [`InitGrid::hoffmann`]).
    pub grid: InitGrid,
    /// L-BFGS iterations per start (default 1,000).
    pub max_iters: u64,
    /// Stop when the gradient's L2 norm falls below this times the number of runs (default
    /// 1e-13 per run). The objective is a sum over runs, so its gradient and its changes grow
    /// with the data; tolerances per run keep the iterations, and the fit's time per run, from
    /// growing with the number of runs.
    pub tol_grad: f64,
    /// Stop when an iteration lowers the objective by less than this times the number of runs
    /// (default 1e-15 per run).
    pub tol_cost: f64,
    /// Worker threads; `None` uses rayon's global pool (all cores).
    pub threads: Option<usize>,
    /// Run only this many starts, spread evenly over the grid (every `len/starts`-th point);
    /// `None` runs every point. The fit costs about `starts × rows × iterations`: fewer starts
    /// make large data sets affordable, at the risk of missing the best basin.
    pub starts: Option<usize>,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            delta: 1e-3,
            grid: InitGrid::hoffmann(),
            max_iters: 1000,
            tol_grad: 1e-13,
            tol_cost: 1e-15,
            threads: None,
            starts: None,
        }
    }
}

/// The result of [`fit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitResult {
    /// The fitted law (E, A, B themselves, not their logarithms).
    pub law: ChinchillaLaw,
    /// Summed Huber objective at [`law`](Self::law).
    pub objective: f64,
    /// Gradient L2 norm there (in `θ` coordinates).
    pub gradient_norm: f64,
    /// The initial point `[alpha, beta, e, a, b]` the best fit started from.
    pub best_start: [f64; 5],
    /// L-BFGS iterations of the best start.
    pub iterations: u64,
    /// Starts run.
    pub starts: usize,
    /// Starts whose solver failed outright (non-finite objective); excluded from the minimum.
    pub failed_starts: usize,
    /// Runs fitted.
    pub runs: usize,
}

/// The summed Huber objective over precomputed logs.
#[derive(Clone)]
struct HuberObjective {
    ln_n: Vec<f64>,
    ln_d: Vec<f64>,
    ln_l: Vec<f64>,
    delta: f64,
}

impl HuberObjective {
    fn new(runs: &[Run], delta: f64) -> Self {
        Self {
            ln_n: runs.iter().map(|r| r.n_params.ln()).collect(),
            ln_d: runs.iter().map(|r| r.tokens.ln()).collect(),
            ln_l: runs.iter().map(|r| r.loss.ln()).collect(),
            delta,
        }
    }

    /// Objective and, if asked, its gradient with respect to `[alpha, beta, e, a, b]`.
    fn eval(&self, p: &[f64], mut grad: Option<&mut [f64; 5]>) -> f64 {
        let (alpha, beta, e, a, b) = (p[0], p[1], p[2], p[3], p[4]);
        let delta = self.delta;
        let mut total = 0.0;
        if let Some(g) = grad.as_deref_mut() {
            *g = [0.0; 5];
        }
        for i in 0..self.ln_n.len() {
            let x1 = a - alpha * self.ln_n[i];
            let x2 = b - beta * self.ln_d[i];
            let m = x1.max(x2).max(e);
            let (w1, w2, w3) = ((x1 - m).exp(), (x2 - m).exp(), (e - m).exp());
            let s = w1 + w2 + w3;
            let r = m + s.ln() - self.ln_l[i];
            let (h, psi) = if r.abs() <= delta {
                (0.5 * r * r, r)
            } else {
                (delta * (r.abs() - 0.5 * delta), delta * r.signum())
            };
            total += h;
            if let Some(g) = grad.as_deref_mut() {
                let (w1, w2, w3) = (w1 / s, w2 / s, w3 / s);
                g[0] -= psi * w1 * self.ln_n[i];
                g[1] -= psi * w2 * self.ln_d[i];
                g[2] += psi * w3;
                g[3] += psi * w1;
                g[4] += psi * w2;
            }
        }
        total
    }
}

impl CostFunction for HuberObjective {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, p: &Vec<f64>) -> std::result::Result<f64, argmin::core::Error> {
        Ok(self.eval(p, None))
    }
}

impl Gradient for HuberObjective {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;

    fn gradient(&self, p: &Vec<f64>) -> std::result::Result<Vec<f64>, argmin::core::Error> {
        let mut g = [0.0; 5];
        self.eval(p, Some(&mut g));
        Ok(g.to_vec())
    }
}

/// The summed Huber objective of `law` on `runs` (what [`fit`] minimises), for comparing fits.
///
/// # Errors
/// [`Error::InvalidLaw`] for a bad law, [`Error::InvalidFitOption`] for a bad `delta`.
pub fn objective(law: &ChinchillaLaw, runs: &[Run], delta: f64) -> Result<f64> {
    law.validate()?;
    check_delta(delta)?;
    let theta = [law.alpha, law.beta, law.e.ln(), law.a.ln(), law.b.ln()];
    Ok(HuberObjective::new(runs, delta).eval(&theta, None))
}

fn check_delta(delta: f64) -> Result<()> {
    if delta.is_finite() && delta > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidFitOption {
            name: "delta",
            message: format!("must be a finite number greater than zero, got {delta}"),
        })
    }
}

struct StartResult {
    index: usize,
    theta: Vec<f64>,
    objective: f64,
    iterations: u64,
}

/// Fits a Chinchilla law to `runs`.
///
/// # Errors
/// [`Error::TooFewRuns`] with fewer than 5 runs, [`Error::NotPositive`] for a run with a
/// non-positive value, [`Error::InvalidFitOption`] for bad options, [`Error::NoConvergence`] if
/// every start failed.
///
/// # Example
/// ```
/// use kiln_scaling_laws::{ChinchillaLaw, fit::{fit, FitOptions, InitGrid}, runs::Run};
/// let truth = ChinchillaLaw::sardana();
/// let runs: Vec<Run> = [1e8, 4e8, 1.6e9, 6.4e9]
///     .iter()
///     .flat_map(|&n| [10.0, 40.0, 160.0].map(|r| Run { n_params: n, tokens: n * r, loss: truth.loss(n, n * r).unwrap() }))
///     .collect();
/// // A smaller grid than the default 4,500 points keeps the example quick.
/// let grid = InitGrid { alpha: vec![0.5], beta: vec![0.5], e: vec![0.5], a: vec![5.0, 10.0], b: vec![5.0, 10.0] };
/// let result = fit(&runs, &FitOptions { grid, ..FitOptions::default() })?;
/// assert!((result.law.alpha - truth.alpha).abs() < 1e-3);
/// # Ok::<(), kiln_scaling_laws::Error>(())
/// ```
pub fn fit(runs: &[Run], options: &FitOptions) -> Result<FitResult> {
    fit_with_progress(runs, options, &|_, _| {})
}

/// [`fit`], calling `progress(done, total)` after each start (from the worker threads), so a
/// caller can show how far a long fit is.
///
/// # Errors
/// As [`fit`].
pub fn fit_with_progress(
    runs: &[Run],
    options: &FitOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<FitResult> {
    const MIN_RUNS: usize = 5;
    if runs.len() < MIN_RUNS {
        return Err(Error::TooFewRuns {
            needed: MIN_RUNS,
            got: runs.len(),
        });
    }
    for r in runs {
        crate::error::positive("run n_params (parameters)", r.n_params)?;
        crate::error::positive("run tokens (tokens)", r.tokens)?;
        crate::error::positive("run loss (nats per token)", r.loss)?;
    }
    check_delta(options.delta)?;
    if options.grid.is_empty() {
        return Err(Error::InvalidFitOption {
            name: "grid",
            message: "the initialisation grid has no points; every axis needs at least one value"
                .into(),
        });
    }
    if options
        .grid
        .alpha
        .iter()
        .chain(&options.grid.beta)
        .chain(&options.grid.e)
        .chain(&options.grid.a)
        .chain(&options.grid.b)
        .any(|v| !v.is_finite())
    {
        return Err(Error::InvalidFitOption {
            name: "grid",
            message: "every initial value must be finite".into(),
        });
    }
    if options.max_iters == 0 {
        return Err(Error::InvalidFitOption {
            name: "max_iters",
            message: "must be at least 1".into(),
        });
    }
    let grid_len = options.grid.len();
    let starts = match options.starts {
        None => grid_len,
        Some(k) if (1..=grid_len).contains(&k) => k,
        Some(k) => {
            return Err(Error::InvalidFitOption {
                name: "starts",
                message: format!("must be between 1 and the grid's {grid_len} points, got {k}"),
            });
        }
    };
    // Evenly spread over the grid's row-major order: j·len/starts.
    let index_of = |j: usize| (j as u128 * grid_len as u128 / starts as u128) as usize;
    if options.threads == Some(0) {
        return Err(Error::InvalidFitOption {
            name: "threads",
            message: "must be at least 1 (or unset for all cores)".into(),
        });
    }

    let objective = HuberObjective::new(runs, options.delta);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let run_all = || -> (Option<StartResult>, usize) {
        (0..starts)
            .into_par_iter()
            .map(|j| {
                let r = run_start(&objective, options, index_of(j));
                progress(
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                    starts,
                );
                match r {
                    Some(r) => (Some(r), 0),
                    None => (None, 1),
                }
            })
            .reduce(|| (None, 0), |(a, fa), (b, fb)| (better(a, b), fa + fb))
    };
    let (best, failed) = match options.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| Error::InvalidFitOption {
                name: "threads",
                message: e.to_string(),
            })?
            .install(run_all),
        None => run_all(),
    };
    let best = best.ok_or_else(|| Error::NoConvergence {
        solver: "L-BFGS",
        context: format!("{} runs, {starts} starts", runs.len()),
        reason: "every start ended with a non-finite objective".into(),
    })?;

    let t = &best.theta;
    let mut grad = [0.0; 5];
    let value = objective.eval(t, Some(&mut grad));
    Ok(FitResult {
        law: ChinchillaLaw {
            e: t[2].exp(),
            a: t[3].exp(),
            b: t[4].exp(),
            alpha: t[0],
            beta: t[1],
        },
        objective: value,
        gradient_norm: grad.iter().map(|g| g * g).sum::<f64>().sqrt(),
        best_start: options.grid.point(best.index),
        iterations: best.iterations,
        starts,
        failed_starts: failed,
        runs: runs.len(),
    })
}

/// The lower objective wins; ties go to the lower start index so the result does not depend on
/// how rayon splits the work.
fn better(a: Option<StartResult>, b: Option<StartResult>) -> Option<StartResult> {
    match (a, b) {
        (Some(a), Some(b)) => {
            if (b.objective, b.index) < (a.objective, a.index) {
                Some(b)
            } else {
                Some(a)
            }
        }
        (a, b) => a.or(b),
    }
}

fn run_start(
    objective: &HuberObjective,
    options: &FitOptions,
    index: usize,
) -> Option<StartResult> {
    let init = options.grid.point(index).to_vec();
    let linesearch = MoreThuenteLineSearch::new();
    let solver = LBFGS::new(linesearch, 10)
        .with_tolerance_grad(options.tol_grad * objective.ln_n.len() as f64)
        .ok()?
        .with_tolerance_cost(options.tol_cost * objective.ln_n.len() as f64)
        .ok()?;
    let result = Executor::new(objective.clone(), solver)
        .configure(|state| state.param(init).max_iters(options.max_iters))
        .run()
        .ok()?;
    let state = result.state();
    // A line search that cannot improve ends the run with `SolverExit`; the best point so far is
    // still the answer of this start.
    let theta = state.get_best_param()?.clone();
    let value = objective.eval(&theta, None);
    value.is_finite().then_some(StartResult {
        index,
        theta,
        objective: value,
        iterations: state.get_iter(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs_from(law: &ChinchillaLaw) -> Vec<Run> {
        let mut runs = Vec::new();
        for n in [1e8, 3e8, 1e9, 3e9] {
            for ratio in [5.0, 20.0, 80.0, 320.0] {
                let tokens = n * ratio;
                runs.push(Run {
                    n_params: n,
                    tokens,
                    loss: law.loss(n, tokens).unwrap(),
                });
            }
        }
        runs
    }

    #[test]
    fn analytic_gradient_matches_finite_differences() {
        let runs = runs_from(&ChinchillaLaw::sardana());
        // A large delta keeps every residual quadratic; a small one puts some in the linear part.
        for delta in [1.0, 1e-3] {
            let obj = HuberObjective::new(&runs, delta);
            let p = [0.4, 0.3, 0.6, 6.5, 5.5];
            let mut g = [0.0; 5];
            obj.eval(&p, Some(&mut g));
            for k in 0..5 {
                let h = 1e-6;
                let (mut up, mut down) = (p, p);
                up[k] += h;
                down[k] -= h;
                let fd = (obj.eval(&up, None) - obj.eval(&down, None)) / (2.0 * h);
                assert!(
                    (fd - g[k]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "delta {delta} k {k}: {fd} vs {}",
                    g[k]
                );
            }
        }
    }

    #[test]
    fn recovers_an_exact_law_from_a_small_grid() {
        let truth = ChinchillaLaw::new(1.8, 500.0, 1500.0, 0.35, 0.33).unwrap();
        let runs = runs_from(&truth);
        let grid = InitGrid {
            alpha: vec![0.5],
            beta: vec![0.5],
            e: vec![0.0, 0.5],
            a: vec![5.0, 10.0],
            b: vec![5.0, 10.0],
        };
        let result = fit(
            &runs,
            &FitOptions {
                grid,
                threads: Some(2),
                ..FitOptions::default()
            },
        )
        .unwrap();
        assert!(result.objective < 1e-12, "{result:?}");
        assert!((result.law.alpha - truth.alpha).abs() < 1e-4, "{result:?}");
        assert!((result.law.beta - truth.beta).abs() < 1e-4, "{result:?}");
        assert!((result.law.e / truth.e - 1.0).abs() < 1e-3, "{result:?}");
        assert_eq!(result.starts, 8);
    }

    #[test]
    fn grid_points_are_row_major() {
        let grid = InitGrid::hoffmann();
        assert_eq!(grid.len(), 4500);
        assert_eq!(grid.point(0), [0.0, 0.0, -1.0, 0.0, 0.0]);
        assert_eq!(grid.point(1), [0.0, 0.0, -1.0, 0.0, 5.0]);
        assert_eq!(grid.point(4499), [2.0, 2.0, 1.0, 25.0, 25.0]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let runs = runs_from(&ChinchillaLaw::sardana());
        assert!(matches!(
            fit(&runs[..3], &FitOptions::default()),
            Err(Error::TooFewRuns { got: 3, .. })
        ));
        let bad = FitOptions {
            delta: 0.0,
            ..FitOptions::default()
        };
        assert!(matches!(
            fit(&runs, &bad),
            Err(Error::InvalidFitOption { name: "delta", .. })
        ));
        let mut bad_runs = runs.clone();
        bad_runs[2].loss = -1.0;
        assert!(matches!(
            fit(&bad_runs, &FitOptions::default()),
            Err(Error::NotPositive { .. })
        ));
        let empty = FitOptions {
            grid: InitGrid {
                a: vec![],
                ..InitGrid::hoffmann()
            },
            ..FitOptions::default()
        };
        assert!(matches!(
            fit(&runs, &empty),
            Err(Error::InvalidFitOption { name: "grid", .. })
        ));
    }
}
