//! Elastic Weight Consolidation (Kirkpatrick et al. 2017): a diagonal-Fisher-weighted pull
//! towards each earlier task's result, with the five Fisher estimators compared by van de Ven
//! ("On the Computation of the Fisher Information in Continual Learning", arXiv 2502.11756).

use std::collections::BTreeMap;
use std::ops::Range;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::{PenaltyScale, trainable_snapshot};
use crate::error::{Error, Result};
use crate::params::trainable_params;
use crate::step::{IGNORE_INDEX, TensorState};
use crate::trainer::{Algorithm, Context, Event};

/// How the diagonal Fisher `F = E_x E_{y∼q}[(∇ log p_θ(y|x))²]` is estimated (van de Ven,
/// arXiv 2502.11756), over the N examples of a [`FisherData`]. "Per example" below means the
/// gradient of the example's summed log-likelihood over its rows (one row for a classifier,
/// one per predicted token for a language model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FisherEstimator {
    /// `1/N Σ_n Σ_c p(c|x_n)·(∇ log p(c|x_n))²`: the expectation over every class, one backward
    /// pass per class and example. Needs one row per example (a classifier); for a language
    /// model the sum over the vocabulary at every token is out of reach — use `Sample` or
    /// `Empirical` there.
    Exact,
    /// `Exact` over the first n examples of the data (in its order; shuffle it to subsample).
    ExactN(usize),
    /// `1/N Σ_n (∇ log p(ŷ_n|x_n))²` with ŷ drawn from the model's own p(·|x_n) (per row, from
    /// the [`Ewc`]'s seed): an unbiased one-sample estimate of `Exact`; feasible per token.
    Sample,
    /// `1/N Σ_n (∇ log p(y_n|x_n))²` with the true labels (the "empirical Fisher");
    /// feasible per token.
    Empirical,
    /// avalanche's `EWCPlugin`: the mean over mini-batches of `b` examples of the squared
    /// gradient of the mini-batch's mean cross-entropy (over its rows). Cheapest (one backward
    /// per batch) and biased low by up to b; with `b = 1` (one row per example) it is `Empirical`.
    Batched {
        /// Examples per mini-batch.
        batch_size: usize,
    },
}

/// How the penalties of several earlier tasks combine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EwcMode {
    /// One term per earlier task, each with its own Fisher and anchor (memory grows with the
    /// number of tasks): `Σ_k Σ F_k·(θ − θ*_k)²`.
    Separate,
    /// Huszár's online EWC (avalanche's `mode="online"`): one Fisher `F ← γ·F + F_new` and the
    /// latest anchor.
    Online {
        /// γ, the old Fisher's decay, in [0, 1].
        gamma: f64,
    },
}

/// Where a Fisher estimate reads its examples: the rows of logits the model gives for a range of
/// examples (in the autodiff graph) and each row's label ([`IGNORE_INDEX`] for rows that do not
/// count: padding, prompt tokens).
///
/// ```
/// use kiln_train::algorithms::FisherData;
/// use kiln_train::burn::{nn::Linear, tensor::Tensor};
///
/// // a classifier over a fixed set of inputs, one row per example
/// struct Examples { x: Tensor<2>, y: Vec<i64> }
/// impl FisherData<Linear> for Examples {
///     fn len(&self) -> usize { self.y.len() }
///     fn forward(&mut self, model: &Linear, r: std::ops::Range<usize>)
///         -> Result<(Tensor<2>, Vec<i64>), String> {
///         Ok((model.forward(self.x.clone().slice(r.clone())), self.y[r].to_vec()))
///     }
/// }
/// ```
pub trait FisherData<M> {
    /// Examples available.
    fn len(&self) -> usize;

    /// Whether there is no example.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[rows, classes]` logits of `examples` under `model` (on its autodiff device, so they
    /// have a gradient) and one label per row.
    ///
    /// # Errors
    /// A message (data or model errors).
    fn forward(
        &mut self,
        model: &M,
        examples: Range<usize>,
    ) -> Result<(Tensor<2>, Vec<i64>), String>;
}

/// Squared gradients of every trainable parameter, by name, moved to the parameter's device.
struct SquaredGrads<'a> {
    path: Vec<String>,
    grads: &'a Gradients,
    weight: f32,
    out: &'a mut BTreeMap<String, Tensor<1>>,
}

impl ModuleVisitor for SquaredGrads<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        if !t.is_require_grad() {
            return;
        }
        let n = t.dims().iter().product::<usize>();
        let g2 = match t.grad(self.grads) {
            Some(g) => g.reshape([n]).powi_scalar(2).mul_scalar(self.weight),
            None => return,
        };
        // on the parameter's (autodiff) device, as a constant
        let g2 = if t.is_autodiff() { g2.autodiff() } else { g2 }.set_require_grad(false);
        let name = self.path.join(".");
        let acc = self.out.remove(&name);
        self.out.insert(name, acc.map_or(g2.clone(), |a| a + g2));
    }
}

fn add_squared_grads<M: Module>(
    model: &M,
    loss: Tensor<1>,
    weight: f32,
    out: &mut BTreeMap<String, Tensor<1>>,
) {
    let grads = loss.backward();
    model.visit(&mut SquaredGrads {
        path: Vec::new(),
        grads: &grads,
        weight,
        out,
    });
}

fn to_f64(t: Tensor<2>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .unwrap_or_default()
}

/// The sum over `rows` of `log_probs[row, label[row]]` (rows with [`IGNORE_INDEX`] left out).
fn picked_sum(log_probs: Tensor<2>, labels: &[i64]) -> std::result::Result<Tensor<1>, String> {
    let [rows, classes] = log_probs.dims();
    if labels.len() != rows {
        return Err(format!(
            "the data gave {rows} rows of logits and {} labels",
            labels.len()
        ));
    }
    let device = log_probs.device();
    let mut mask = vec![0f32; rows * classes];
    for (r, &l) in labels.iter().enumerate() {
        if l == IGNORE_INDEX {
            continue;
        }
        if l < 0 || l as usize >= classes {
            return Err(format!(
                "label {l} at row {r} is outside the {classes} classes (use {IGNORE_INDEX} for rows that do not count)"
            ));
        }
        mask[r * classes + l as usize] = 1.0;
    }
    let mask = Tensor::<2>::from_data(TensorData::new(mask, [rows, classes]), &device);
    Ok((log_probs * mask).sum())
}

/// Draws one label per row from the rows' softmax (labels marked [`IGNORE_INDEX`] stay so).
fn sample_labels(probs: &[f64], classes: usize, given: &[i64], rng: &mut ChaCha8Rng) -> Vec<i64> {
    given
        .iter()
        .enumerate()
        .map(|(r, &l)| {
            if l == IGNORE_INDEX {
                return l;
            }
            let row = &probs[r * classes..(r + 1) * classes];
            let u: f64 = rng.random::<f64>() * row.iter().sum::<f64>();
            let mut acc = 0.0;
            for (c, p) in row.iter().enumerate() {
                acc += p;
                if u < acc {
                    return c as i64;
                }
            }
            (classes - 1) as i64
        })
        .collect()
}

/// The diagonal Fisher of `model`'s trainable parameters on `data` with `estimator`, by
/// parameter name (flat tensors on the parameters' device). `seed` drives
/// [`FisherEstimator::Sample`].
///
/// # Errors
/// [`Error::Config`] for empty data, a zero batch size, `Exact` on several rows per example,
/// labels outside the classes; the data's own errors.
pub fn fisher_diagonal<M: Module>(
    model: &M,
    data: &mut dyn FisherData<M>,
    estimator: FisherEstimator,
    seed: u64,
) -> Result<BTreeMap<String, Tensor<1>>> {
    let bad = |message: String| Error::Config {
        message: format!("EWC Fisher ({estimator:?}): {message}"),
    };
    let n_all = data.len();
    let n = match estimator {
        FisherEstimator::ExactN(k) => k.min(n_all),
        _ => n_all,
    };
    if n == 0 {
        return Err(bad("no example to estimate it on".into()));
    }
    let mut out = BTreeMap::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    match estimator {
        FisherEstimator::Batched { batch_size } => {
            if batch_size == 0 {
                return Err(bad("the batch size must be at least 1".into()));
            }
            let batches = n.div_ceil(batch_size);
            for b in 0..batches {
                let range = b * batch_size..((b + 1) * batch_size).min(n);
                let (logits, labels) = data.forward(model, range).map_err(&bad)?;
                let counted = labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
                if counted == 0 {
                    continue;
                }
                let ll = picked_sum(log_softmax(logits, 1), &labels).map_err(&bad)?;
                // the mini-batch's mean cross-entropy; its square is the same for ±
                let loss = ll.mul_scalar(-1.0 / counted as f64);
                add_squared_grads(model, loss, 1.0 / batches as f32, &mut out);
            }
        }
        FisherEstimator::Empirical | FisherEstimator::Sample => {
            for i in 0..n {
                let (logits, mut labels) = data.forward(model, i..i + 1).map_err(&bad)?;
                if estimator == FisherEstimator::Sample {
                    let classes = logits.dims()[1];
                    let probs = to_f64(softmax(logits.clone().detach(), 1));
                    labels = sample_labels(&probs, classes, &labels, &mut rng);
                }
                let ll = picked_sum(log_softmax(logits, 1), &labels).map_err(&bad)?;
                add_squared_grads(model, ll, 1.0 / n as f32, &mut out);
            }
        }
        FisherEstimator::Exact | FisherEstimator::ExactN(_) => {
            for i in 0..n {
                let (logits, labels) = data.forward(model, i..i + 1).map_err(&bad)?;
                let [rows, classes] = logits.dims();
                if rows != 1 {
                    return Err(bad(format!(
                        "example {i} has {rows} rows; the exact Fisher sums over every class of one row per example (a classifier) — for a language model use Sample or Empirical"
                    )));
                }
                if labels.first() == Some(&IGNORE_INDEX) {
                    continue;
                }
                let probs = to_f64(softmax(logits.detach(), 1));
                // burn has no retain_graph: one forward per class
                for (c, &p) in probs.iter().enumerate().take(classes) {
                    let (logits, _) = data.forward(model, i..i + 1).map_err(&bad)?;
                    let ll = picked_sum(log_softmax(logits, 1), &[c as i64]).map_err(&bad)?;
                    add_squared_grads(model, ll, (p / n as f64) as f32, &mut out);
                }
            }
        }
    }
    // parameters that got no gradient (unused) have zero importance
    for (name, t) in trainable_params(model) {
        out.entry(name).or_insert_with(|| {
            Tensor::<1>::zeros(t.dims(), &t.device())
                .detach()
                .set_require_grad(false)
        });
    }
    Ok(out)
}

/// One consolidated task: the weights at its end and their Fisher.
#[derive(Debug, Clone)]
struct Term {
    anchor: BTreeMap<String, Tensor<1>>,
    fisher: BTreeMap<String, Tensor<1>>,
}

/// Elastic Weight Consolidation: after each task, the diagonal Fisher F of the trainable
/// parameters on that task's data ([`FisherEstimator`]) and the weights θ* are kept; while
/// training later tasks, `c·λ·Σ F·(θ − θ*)²` is added to the loss at `AfterLoss` (c = ½ for the
/// paper's form, 1 for avalanche's: [`PenaltyScale`]) and logged as `ewc_penalty`.
///
/// The Fisher is computed at `FitEnd` on the data given to
/// [`push_task_data`](Self::push_task_data) for that task (or by calling
/// [`consolidate`](Self::consolidate) yourself). Fisher and anchors are checkpointed, so a
/// resumed run goes on with them bit for bit.
///
/// ```
/// use kiln_train::algorithms::{Ewc, EwcMode, FisherData, FisherEstimator, PenaltyScale};
/// use kiln_train::burn::{nn::{Linear, LinearConfig}, tensor::{Device, Tensor}};
///
/// // task 1's data: 8 inputs of 3 features, labels of 2 classes
/// struct Task1 { x: Tensor<2>, y: Vec<i64> }
/// impl FisherData<Linear> for Task1 {
///     fn len(&self) -> usize { self.y.len() }
///     fn forward(&mut self, m: &Linear, r: std::ops::Range<usize>)
///         -> Result<(Tensor<2>, Vec<i64>), String> {
///         Ok((m.forward(self.x.clone().slice(r.clone())), self.y[r].to_vec()))
///     }
/// }
/// let d = Device::flex().autodiff();
/// d.seed(0);
/// let model = LinearConfig::new(3, 2).init(&d);
/// let x = Tensor::<1>::from_floats([0.5f32; 24].as_slice(), &d).reshape([8, 3]);
/// let mut data = Task1 { x, y: vec![0, 1, 1, 0, 1, 0, 0, 1] };
///
/// let mut ewc = Ewc::<Linear>::new(100.0, PenaltyScale::Half, FisherEstimator::Exact, EwcMode::Separate, 0)?;
/// ewc.consolidate(&model, &mut data)?; // what `FitEnd` does with `push_task_data`
/// assert_eq!(ewc.tasks(), 1);
/// // at θ* the penalty is 0; it grows as training on task 2 moves the weights
/// let at_anchor = ewc.penalty(&model).unwrap().unwrap().into_scalar::<f32>();
/// assert_eq!(at_anchor, 0.0);
/// # Ok::<(), kiln_train::Error>(())
/// ```
pub struct Ewc<M> {
    lambda: f64,
    scale: PenaltyScale,
    estimator: FisherEstimator,
    mode: EwcMode,
    seed: u64,
    terms: Vec<Term>,
    /// Tasks consolidated so far.
    consolidated: u64,
    data: std::collections::VecDeque<Box<dyn FisherData<M>>>,
}

impl<M> std::fmt::Debug for Ewc<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ewc")
            .field("lambda", &self.lambda)
            .field("scale", &self.scale)
            .field("estimator", &self.estimator)
            .field("mode", &self.mode)
            .field("tasks", &self.consolidated)
            .finish_non_exhaustive()
    }
}

impl<M: Module> Ewc<M> {
    /// EWC with strength λ, the penalty's factor, a Fisher estimator, a mode and the seed of
    /// [`FisherEstimator::Sample`].
    ///
    /// # Errors
    /// [`Error::Config`] for a negative or non-finite λ, γ outside [0, 1], `ExactN(0)` or a zero
    /// batch size.
    pub fn new(
        lambda: f64,
        scale: PenaltyScale,
        estimator: FisherEstimator,
        mode: EwcMode,
        seed: u64,
    ) -> Result<Self> {
        let bad = |message: String| Err(Error::Config { message });
        if !(lambda.is_finite() && lambda >= 0.0) {
            return bad(format!("EWC: lambda {lambda} must be finite and ≥ 0"));
        }
        if let EwcMode::Online { gamma } = mode
            && !(0.0..=1.0).contains(&gamma)
        {
            return bad(format!(
                "EWC: online gamma {gamma} is not in [0, 1] (the old Fisher's decay)"
            ));
        }
        if matches!(
            estimator,
            FisherEstimator::ExactN(0) | FisherEstimator::Batched { batch_size: 0 }
        ) {
            return bad(format!(
                "EWC: {estimator:?} uses no example; give at least 1"
            ));
        }
        Ok(Self {
            lambda,
            scale,
            estimator,
            mode,
            seed,
            terms: Vec::new(),
            consolidated: 0,
            data: std::collections::VecDeque::new(),
        })
    }

    /// Queues the data of a task: each fit's end takes the next one in the queue and computes
    /// that task's Fisher on it (push one per task, in the sequence's order, before or between
    /// fits). A fit that ends with the queue empty consolidates nothing.
    pub fn push_task_data(&mut self, data: Box<dyn FisherData<M>>) {
        self.data.push_back(data);
    }

    /// Tasks consolidated so far.
    pub fn tasks(&self) -> u64 {
        self.consolidated
    }

    /// The Fisher the penalty uses for task `k` (0-based; in online mode only the combined one,
    /// index 0), by parameter name.
    pub fn fisher(&self, k: usize) -> Option<&BTreeMap<String, Tensor<1>>> {
        self.terms.get(k).map(|t| &t.fisher)
    }

    /// Ends a task: estimates the Fisher of `model` on `data` and keeps it with the weights.
    /// The Sample estimator draws from the seed and the task's index, and the model's device is
    /// seeded from them first (dropout in the data's forward draws the same masks every time).
    ///
    /// # Errors
    /// See [`fisher_diagonal`].
    pub fn consolidate(&mut self, model: &M, data: &mut dyn FisherData<M>) -> Result<()> {
        let seed = self.seed ^ self.consolidated.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // dropout in the data's forward draws from the device: the same draws on every run
        if let Some((_, t)) = trainable_params(model).first() {
            t.device().seed(seed);
        }
        let fisher = fisher_diagonal(model, data, self.estimator, seed)?;
        let anchor = trainable_snapshot(model)
            .into_iter()
            .map(|(n, t)| (n, t.set_require_grad(false)))
            .collect();
        match (self.mode, self.terms.pop()) {
            (EwcMode::Online { gamma }, Some(old)) => {
                let fisher = fisher
                    .into_iter()
                    .map(|(n, f)| {
                        let f = match old.fisher.get(&n) {
                            Some(o) => o.clone().mul_scalar(gamma) + f,
                            None => f,
                        };
                        (n, f)
                    })
                    .collect();
                self.terms.push(Term { anchor, fisher });
            }
            (EwcMode::Online { .. }, None) => self.terms.push(Term { anchor, fisher }),
            (EwcMode::Separate, last) => {
                self.terms.extend(last);
                self.terms.push(Term { anchor, fisher });
            }
        }
        self.consolidated += 1;
        Ok(())
    }

    /// `c·λ·Σ_k Σ F_k·(θ − θ*_k)²` of `model` (a `[1]` tensor in its autodiff graph); none before
    /// the first consolidated task.
    ///
    /// # Errors
    /// A message when the model trains a parameter the terms lack.
    pub fn penalty(&self, model: &M) -> std::result::Result<Option<Tensor<1>>, String> {
        if self.terms.is_empty() {
            return Ok(None);
        }
        let params = trainable_params(model);
        let mut sum: Option<Tensor<1>> = None;
        for term in &self.terms {
            for (name, t) in &params {
                let (Some(a), Some(f)) = (term.anchor.get(name), term.fisher.get(name)) else {
                    return Err(format!(
                        "the model trains `{name}`, which EWC's consolidated tasks lack (another model, or the frozen parameters changed)"
                    ));
                };
                let d = t.clone() - a.clone();
                let s = (f.clone() * d.clone() * d).sum();
                sum = Some(match sum {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
        Ok(sum.map(|s| s.mul_scalar(self.scale.factor() * self.lambda)))
    }
}

impl<M: Module> Algorithm<M> for Ewc<M> {
    fn name(&self) -> &str {
        "ewc"
    }

    fn on_event(
        &mut self,
        event: Event,
        ctx: &mut Context<'_, M>,
    ) -> std::result::Result<(), String> {
        match event {
            Event::AfterLoss => {
                if let Some(penalty) = self.penalty(ctx.model)? {
                    let value = crate::trainer::scalar(&penalty);
                    if let Some(out) = ctx.output.as_deref_mut() {
                        out.loss = out.loss.clone() + penalty;
                    }
                    ctx.metrics.insert("ewc_penalty".into(), value);
                }
            }
            Event::FitEnd => {
                if let Some(mut data) = self.data.pop_front() {
                    let model = ctx.model.clone();
                    self.consolidate(&model, data.as_mut())
                        .map_err(|e| e.to_string())?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn state(&self) -> Value {
        json!({"tasks": self.consolidated, "terms": self.terms.len()})
    }

    fn load_state(&mut self, state: &Value) -> std::result::Result<(), String> {
        self.consolidated = state["tasks"].as_u64().ok_or("EWC state without `tasks`")?;
        Ok(())
    }

    fn tensor_state(&self) -> TensorState {
        let mut s = TensorState::new();
        for (k, term) in self.terms.iter().enumerate() {
            for (name, t) in &term.anchor {
                s.insert(format!("{k}.anchor.{name}"), t.clone());
            }
            for (name, t) in &term.fisher {
                s.insert(format!("{k}.fisher.{name}"), t.clone());
            }
        }
        s
    }

    fn load_tensor_state(
        &mut self,
        state: TensorState,
        device: &Device,
    ) -> std::result::Result<(), String> {
        let mut terms: BTreeMap<usize, Term> = BTreeMap::new();
        for (key, _) in state.iter() {
            let mut parts = key.splitn(3, '.');
            let (Some(k), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!(
                    "EWC checkpoint tensor `{key}` is not `k.anchor|fisher.name`"
                ));
            };
            let k: usize = k
                .parse()
                .map_err(|_| format!("EWC checkpoint tensor `{key}`: `{k}` is not a task index"))?;
            let t = state.tensor::<1>(key, device)?.set_require_grad(false);
            let term = terms.entry(k).or_insert_with(|| Term {
                anchor: BTreeMap::new(),
                fisher: BTreeMap::new(),
            });
            match kind {
                "anchor" => term.anchor.insert(name.to_owned(), t),
                "fisher" => term.fisher.insert(name.to_owned(), t),
                _ => {
                    return Err(format!(
                        "EWC checkpoint tensor `{key}`: unknown kind `{kind}`"
                    ));
                }
            };
        }
        self.terms = terms.into_values().collect();
        Ok(())
    }
}
