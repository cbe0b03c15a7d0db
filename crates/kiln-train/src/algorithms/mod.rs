//! Training-time merging and anchoring for continual learning, as burn tensor ops on the
//! training device (nothing is copied to the host but checkpoints):
//!
//! - [`Sfa`]: Sequential Fine-tuning with Averaging (Kleiman, Dziugaite, Frankle, Kakade, Paul;
//!   "Soup to go", arXiv 2501.05559): every ⌈p·T⌉ steps of a task of T steps, and at its last
//!   step, θ ← β·θ_o + (1 − β)·θ, where θ_o is the model at the start of the task (the previous
//!   task's end) or, with [`SfaAnchor::LastMerge`], the model after the last merge.
//! - [`L2Anchor`]: the penalty `c·λ·Σ(θ − θ_o)²` pulling every trainable parameter towards the
//!   model at the start of the task (c = ½ or 1, [`PenaltyScale`]); SFA is its periodic, larger-
//!   step form (averaging every step with β = ηλ is one SGD step on it, to first order in η).
//!
//! - [`Ema`]: an exponential moving average of the weights with Composer's or diffusers'
//!   decay ([`EmaDecay`]), evaluated in place of the raw weights if asked.
//! - [`Swa`]: Composer's stochastic weight averaging (a running mean from `start` to `end`, then
//!   the model replaced by it).
//! - [`Ewc`]: Elastic Weight Consolidation with the five Fisher estimators of van de Ven
//!   ([`FisherEstimator`]), separate or online ([`EwcMode`]), avalanche's penalty convention
//!   selectable ([`PenaltyScale`]).
//! - [`Replay`]: experience replay of earlier tasks' examples by id, avalanche's
//!   experience-balanced or reservoir memory ([`ReplayPolicy`]).
//!
//! SFA, L2, EMA and SWA keep one copy of the trainable weights (anchor, shadow or average) on
//! the device, nothing per step; EWC keeps a Fisher and an anchor per earlier task (one pair in
//! online mode); replay keeps ids. All of it is checkpointed (`algorithms.safetensors`,
//! `state.json`), so a resumed run continues bit for bit.
//!
//! ```
//! use kiln_train::algorithms::{L2Anchor, PenaltyScale, Sfa, SfaAnchor};
//! use kiln_train::{Algorithm, Trainer};
//! # use kiln_train::burn::nn::Linear;
//!
//! // θ ← 0.25·θ_o + 0.75·θ every 10% of the task and at its end
//! let sfa = Sfa::new(0.25, 0.1, SfaAnchor::PrevTaskEnd)?;
//! let l2 = L2Anchor::new(1e-3, PenaltyScale::Half)?;
//! let algorithms: Vec<Box<dyn Algorithm<Linear>>> = vec![Box::new(sfa), Box::new(l2)];
//! // Trainer::new(config, run_dir).fit(model, &mut task, &mut algorithms, &device)?
//! # let _ = algorithms;
//! # Ok::<(), kiln_train::Error>(())
//! ```
//!
//! **Task sequences.** Use one algorithm object for the whole sequence and call
//! [`Trainer::fit`](crate::Trainer::fit) once per task: at each fit's start (not a resume) the
//! SFA and L2 anchors become the model as it is then — the previous task's result; an EMA goes
//! on averaging across tasks; SWA averages each task's own run; at each fit's end EWC computes
//! the task's Fisher (on the data given with [`Ewc::push_task_data`]) and replay adds the
//! examples the task trained on to its memory.
//!
//! **What is averaged.** Trainable parameters only (`require_grad`): frozen ones and buffers do
//! not move during a task, so averaging would leave them as they are. The optimiser's state is
//! not touched by a merge (the paper does not say otherwise; AdamW's moments go on from the
//! unmerged trajectory).

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::params::{map_float_params, trainable_params};
use crate::step::TensorState;
use crate::trainer::{Algorithm, Context, Event};

mod ewc;
pub use ewc::{Ewc, EwcMode, FisherData, FisherEstimator, fisher_diagonal};
mod replay;
pub use replay::{MemoryEntry, Replay, ReplayPolicy, ReplaySource};

/// The model's trainable float parameters, detached (an anchor).
fn trainable_snapshot<M: Module>(model: &M) -> BTreeMap<String, Tensor<1>> {
    trainable_params(model)
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect()
}

/// The weights an algorithm pulls towards: taken at a task's start (`FitStart`), or restored
/// from the checkpoint on resume (then `FitStart` only checks that it fits the model).
#[derive(Debug)]
struct Anchor {
    tensors: BTreeMap<String, Tensor<1>>,
    /// Restored from a checkpoint: the next `FitStart` is a resume, not a new task.
    resumed: bool,
    /// The tensors' name prefix in the checkpoint (`anchor`, `shadow`, `average`).
    prefix: &'static str,
}

impl Default for Anchor {
    fn default() -> Self {
        Self::named("anchor")
    }
}

impl Anchor {
    fn named(prefix: &'static str) -> Self {
        Self {
            tensors: BTreeMap::new(),
            resumed: false,
            prefix,
        }
    }

    fn fit_start<M: Module>(&mut self, model: &M) -> std::result::Result<(), String> {
        if std::mem::take(&mut self.resumed) {
            check_anchor(&self.tensors, model)
        } else {
            self.tensors = trainable_snapshot(model);
            Ok(())
        }
    }

    /// `model` with the parameters this holds put in place of its own (the rest unchanged).
    fn apply<M: Module>(&self, model: M) -> M {
        map_float_params(model, |name, t| {
            self.tensors.get(name).cloned().unwrap_or(t)
        })
    }

    fn state(&self) -> TensorState {
        let mut s = TensorState::new();
        for (name, t) in &self.tensors {
            s.insert(format!("{}.{name}", self.prefix), t.clone());
        }
        s
    }

    fn load(&mut self, state: &TensorState, device: &Device) -> std::result::Result<(), String> {
        let mut tensors = BTreeMap::new();
        for (name, _) in state.iter() {
            if let Some(param) = name
                .strip_prefix(self.prefix)
                .and_then(|n| n.strip_prefix('.'))
            {
                tensors.insert(param.to_owned(), state.tensor::<1>(name, device)?);
            }
        }
        self.tensors = tensors;
        self.resumed = true;
        Ok(())
    }
}

/// Checks that an anchor and a model hold the same trainable parameters (a resumed anchor of
/// another model, or a model whose frozen set changed between tasks).
fn check_anchor<M: Module>(
    anchor: &BTreeMap<String, Tensor<1>>,
    model: &M,
) -> std::result::Result<(), String> {
    let now = trainable_snapshot(model);
    if let Some(name) = anchor.keys().find(|k| !now.contains_key(*k)) {
        return Err(format!(
            "the anchor has parameter `{name}`, which the model does not train; the anchor belongs to another model (or the frozen parameters changed)"
        ));
    }
    for (name, t) in &now {
        match anchor.get(name) {
            None => {
                return Err(format!(
                    "the model trains `{name}`, which the anchor lacks; the anchor belongs to another model (or the frozen parameters changed)"
                ));
            }
            Some(a) if a.dims() != t.dims() => {
                return Err(format!(
                    "parameter `{name}` has {} values in the anchor and {} in the model",
                    a.dims()[0],
                    t.dims()[0]
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Which model SFA averages towards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SfaAnchor {
    /// The model at the start of the task (the previous task's end): the paper's θ_o.
    PrevTaskEnd,
    /// The model after the last merge (a rolling anchor, as some re-implementations do).
    LastMerge,
}

/// Sequential Fine-tuning with Averaging. See the [module docs](self).
#[derive(Debug)]
pub struct Sfa {
    beta: f64,
    p: f64,
    anchor_kind: SfaAnchor,
    anchor: Anchor,
    merges: u64,
}

impl Sfa {
    /// θ ← β·θ_o + (1 − β)·θ every ⌈p·T⌉ steps of a task of T steps and at its end.
    ///
    /// # Errors
    /// [`Error::Config`] for β outside [0, 1] or p outside (0, 1].
    pub fn new(beta: f64, p: f64, anchor: SfaAnchor) -> Result<Self> {
        if !(0.0..=1.0).contains(&beta) {
            return Err(Error::Config {
                message: format!(
                    "SFA: beta {beta} is not in [0, 1] (the anchor's share of each merge)"
                ),
            });
        }
        if !(p > 0.0 && p <= 1.0) {
            return Err(Error::Config {
                message: format!(
                    "SFA: p {p} is not in (0, 1] (the averaging period as a fraction of the task; 1 = only at the end)"
                ),
            });
        }
        Ok(Self {
            beta,
            p,
            anchor_kind: anchor,
            anchor: Anchor::default(),
            merges: 0,
        })
    }

    /// Steps between merges in a task of `total` steps: ⌈p·T⌉ (at least 1).
    pub fn period(&self, total: u64) -> u64 {
        ((self.p * total as f64).ceil() as u64).max(1)
    }

    /// Merges done so far (over all tasks).
    pub fn merges(&self) -> u64 {
        self.merges
    }

    /// `beta·anchor + (1 − beta)·model` for every parameter the anchor holds, in f32 with
    /// WiSE-FT's operation order (`kiln merge`'s `wise_ft` with α = 1 − β: the same bits).
    pub fn average<M: Module>(model: M, anchor: &BTreeMap<String, Tensor<1>>, beta: f64) -> M {
        let alpha = (1.0 - beta) as f32;
        let keep = 1.0f32 - alpha;
        map_float_params(model, |name, t| match anchor.get(name) {
            Some(a) => a.clone().mul_scalar(keep) + t.mul_scalar(alpha),
            None => t,
        })
    }
}

impl<M: Module> Algorithm<M> for Sfa {
    fn name(&self) -> &str {
        "sfa"
    }

    fn on_event(
        &mut self,
        event: Event,
        ctx: &mut Context<'_, M>,
    ) -> std::result::Result<(), String> {
        match event {
            Event::FitStart => self.anchor.fit_start(ctx.model)?,
            Event::AfterStep => {
                let (step, total) = (ctx.state.step, ctx.run.total_steps);
                if step % self.period(total) == 0 || step == total {
                    let model = ctx.model.clone();
                    *ctx.model = Self::average(model, &self.anchor.tensors, self.beta);
                    self.merges += 1;
                    if self.anchor_kind == SfaAnchor::LastMerge {
                        self.anchor.tensors = trainable_snapshot(ctx.model);
                    }
                    ctx.metrics.insert("sfa_merges".into(), self.merges as f64);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn state(&self) -> Value {
        json!({"merges": self.merges, "beta": self.beta, "p": self.p})
    }

    fn load_state(&mut self, state: &Value) -> std::result::Result<(), String> {
        self.merges = state["merges"]
            .as_u64()
            .ok_or("SFA state without `merges`")?;
        Ok(())
    }

    fn tensor_state(&self) -> TensorState {
        self.anchor.state()
    }

    fn load_tensor_state(
        &mut self,
        state: TensorState,
        device: &Device,
    ) -> std::result::Result<(), String> {
        self.anchor.load(&state, device)
    }
}

/// The factor in front of a quadratic penalty λ·Σ(θ − θ_o)²: the papers' ½ (EWC, Kirkpatrick
/// et al.) or 1 (avalanche's `EWCPlugin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PenaltyScale {
    /// `(λ/2)·Σ(θ − θ_o)²`: the gradient is λ·(θ − θ_o).
    Half,
    /// `λ·Σ(θ − θ_o)²`.
    Full,
}

impl PenaltyScale {
    fn factor(self) -> f64 {
        match self {
            Self::Half => 0.5,
            Self::Full => 1.0,
        }
    }
}

/// An L2 pull towards the model at the start of the task, added to the loss at `AfterLoss`.
/// The penalty's value is logged as `l2_penalty`.
#[derive(Debug)]
pub struct L2Anchor {
    lambda: f64,
    scale: PenaltyScale,
    anchor: Anchor,
}

impl L2Anchor {
    /// `c·λ·Σ(θ − θ_o)²` over the trainable parameters (c from `scale`).
    ///
    /// # Errors
    /// [`Error::Config`] for a negative or non-finite λ.
    pub fn new(lambda: f64, scale: PenaltyScale) -> Result<Self> {
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(Error::Config {
                message: format!("L2 anchor: lambda {lambda} must be finite and ≥ 0"),
            });
        }
        Ok(Self {
            lambda,
            scale,
            anchor: Anchor::default(),
        })
    }

    /// The penalty of `model` (a `[1]` tensor on its device, in the autodiff graph).
    ///
    /// # Errors
    /// A message when the model's trainable parameters are not the anchor's.
    pub fn penalty<M: Module>(&self, model: &M) -> std::result::Result<Tensor<1>, String> {
        let mut sum: Option<Tensor<1>> = None;
        for (name, t) in trainable_params(model) {
            let a =
                self.anchor.tensors.get(&name).ok_or_else(|| {
                    format!("the model trains `{name}`, which the L2 anchor lacks")
                })?;
            let d = t - a.clone();
            let s = (d.clone() * d).sum();
            sum = Some(match sum {
                Some(acc) => acc + s,
                None => s,
            });
        }
        let sum = sum.ok_or("the model has no trainable parameter")?;
        Ok(sum.mul_scalar(self.scale.factor() * self.lambda))
    }
}

impl<M: Module> Algorithm<M> for L2Anchor {
    fn name(&self) -> &str {
        "l2_anchor"
    }

    fn on_event(
        &mut self,
        event: Event,
        ctx: &mut Context<'_, M>,
    ) -> std::result::Result<(), String> {
        match event {
            Event::FitStart => self.anchor.fit_start(ctx.model)?,
            Event::AfterLoss => {
                let penalty = self.penalty(ctx.model)?;
                let value = crate::trainer::scalar(&penalty);
                if let Some(out) = ctx.output.as_deref_mut() {
                    out.loss = out.loss.clone() + penalty;
                }
                ctx.metrics.insert("l2_penalty".into(), value);
            }
            _ => {}
        }
        Ok(())
    }

    fn tensor_state(&self) -> TensorState {
        self.anchor.state()
    }

    fn load_tensor_state(
        &mut self,
        state: TensorState,
        device: &Device,
    ) -> std::result::Result<(), String> {
        self.anchor.load(&state, device)
    }
}

/// How an [`Ema`]'s decay is chosen at each update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EmaDecay {
    /// Composer's `EMA`: a constant smoothing s, `W_ema ← s·W_ema + (1 − s)·W`.
    Composer {
        /// s, in [0, 1).
        smoothing: f64,
    },
    /// diffusers' `EMAModel`: [`DiffusersDecay`], `W_ema ← W_ema − (1 − d)·(W_ema − W)`.
    Diffusers(DiffusersDecay),
}

/// diffusers' `EMAModel.get_decay(n)` for the n-th update: 0 (a copy) while
/// `k = n − update_after_step − 1 ≤ 0`, then `1 − (1 + k/inv_gamma)^−power` with warmup or
/// `(1 + k)/(10 + k)` without, capped at `decay` and floored at `min_decay`. `Default` is
/// diffusers' defaults (`decay=0.9999, min_decay=0, update_after_step=0, use_ema_warmup=False,
/// inv_gamma=1, power=2/3`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiffusersDecay {
    /// The largest decay.
    pub decay: f64,
    /// The smallest decay after the first copies.
    pub min_decay: f64,
    /// Updates that only copy the weights.
    pub update_after_step: u64,
    /// The warmup form.
    pub use_warmup: bool,
    /// Warmup's γ⁻¹.
    pub inv_gamma: f64,
    /// Warmup's power.
    pub power: f64,
}

impl Default for DiffusersDecay {
    fn default() -> Self {
        Self {
            decay: 0.9999,
            min_decay: 0.0,
            update_after_step: 0,
            use_warmup: false,
            inv_gamma: 1.0,
            power: 2.0 / 3.0,
        }
    }
}

impl EmaDecay {
    /// Composer's smoothing for a half-life and an update interval in the same unit:
    /// `s = 2^(−interval/half_life)` (so `t½ = −ln 2 / ln s` updates' worth of time).
    pub fn composer_half_life(half_life: f64, interval: f64) -> Self {
        Self::Composer {
            // as Composer computes it: 2 ** (-(interval / half_life))
            smoothing: 2f64.powf(-(interval / half_life)),
        }
    }

    /// The decay of the `n`-th update (1-based).
    pub fn decay(&self, n: u64) -> f64 {
        match *self {
            Self::Composer { smoothing } => smoothing,
            Self::Diffusers(DiffusersDecay {
                decay,
                min_decay,
                update_after_step,
                use_warmup,
                inv_gamma,
                power,
            }) => {
                let k = n.saturating_sub(update_after_step).saturating_sub(1) as f64;
                if k <= 0.0 {
                    return 0.0;
                }
                let d = if use_warmup {
                    1.0 - (1.0 + k / inv_gamma).powf(-power)
                } else {
                    (1.0 + k) / (10.0 + k)
                };
                d.min(decay).max(min_decay)
            }
        }
    }
}

/// An exponential moving average of the trainable weights ("shadow" weights), on the device,
/// with Composer's or diffusers' decay ([`EmaDecay`], [`DiffusersDecay`]), started at `start` and updated every
/// `interval` steps after each optimiser step. With `swap_for_eval`, evaluations run on the
/// averaged weights (Composer's swap) and training goes on with the raw ones; the shadow is
/// checkpointed beside them, and [`averaged`](Self::averaged) gives the averaged model.
///
/// Frozen parameters do not move, so the shadow holds only trainable ones (diffusers copies
/// the others; Composer averages everything, buffers included — burn's buffers are not float
/// parameters and are taken from the raw model).
///
/// ```
/// use kiln_train::algorithms::{DiffusersDecay, Ema, EmaDecay};
/// use kiln_train::burn::nn::Linear;
/// use kiln_schedules::Duration;
///
/// // Composer's recommended `EMA(half_life="50ba")`: s = 2^(−1/50), from the first step.
/// let ema = Ema::<Linear>::new(EmaDecay::composer_half_life(50.0, 1.0), Duration::batches(0), 1, true)?;
/// // diffusers' EMAModel with warmup
/// let warm = EmaDecay::Diffusers(DiffusersDecay { use_warmup: true, ..Default::default() });
/// assert_eq!(warm.decay(1), 0.0); // the first update copies
/// # let _ = ema;
/// # Ok::<(), kiln_train::Error>(())
/// ```
#[derive(Debug)]
pub struct Ema<M> {
    decay: EmaDecay,
    start: kiln_schedules::Duration,
    interval: u64,
    swap_for_eval: bool,
    shadow: Anchor,
    started: bool,
    /// Step at which averaging started.
    started_at: u64,
    updates: u64,
    /// The raw model while the averaged one is swapped in for an evaluation.
    raw: Option<M>,
}

impl<M: Module> Ema<M> {
    /// An EMA with `decay`, starting at `start` (Composer's `ema_start`; `0ba` for diffusers),
    /// updated every `interval` optimiser steps.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero interval, a Composer smoothing outside [0, 1), diffusers
    /// settings outside their ranges.
    pub fn new(
        decay: EmaDecay,
        start: kiln_schedules::Duration,
        interval: u64,
        swap_for_eval: bool,
    ) -> Result<Self> {
        let bad = |message: String| Err(Error::Config { message });
        if interval == 0 {
            return bad("EMA: the update interval must be at least 1 step".into());
        }
        match decay {
            EmaDecay::Composer { smoothing } if !(0.0..1.0).contains(&smoothing) => {
                return bad(format!("EMA: smoothing {smoothing} is not in [0, 1)"));
            }
            EmaDecay::Diffusers(DiffusersDecay {
                decay,
                min_decay,
                inv_gamma,
                power,
                ..
            }) if !((0.0..=1.0).contains(&decay)
                && (0.0..=decay).contains(&min_decay)
                && inv_gamma > 0.0
                && power > 0.0) =>
            {
                return bad(format!(
                    "EMA: diffusers settings out of range (decay {decay} in [0, 1], min_decay {min_decay} in [0, decay], inv_gamma {inv_gamma} > 0, power {power} > 0)"
                ));
            }
            _ => {}
        }
        Ok(Self {
            decay,
            start,
            interval,
            swap_for_eval,
            shadow: Anchor::named("shadow"),
            started: false,
            started_at: 0,
            updates: 0,
            raw: None,
        })
    }

    /// Updates done so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The shadow weights by parameter path (empty before the start).
    pub fn shadow(&self) -> &BTreeMap<String, Tensor<1>> {
        &self.shadow.tensors
    }

    /// `model` with its trainable weights replaced by the averages (unchanged before the start).
    pub fn averaged(&self, model: M) -> M {
        self.shadow.apply(model)
    }

    fn update(&mut self, model: &M) {
        self.updates += 1;
        let d = self.decay.decay(self.updates);
        let now = trainable_snapshot(model);
        for (name, w) in now {
            if let Some(s) = self.shadow.tensors.get_mut(&name) {
                *s = match self.decay {
                    // composer: ema * s + (1 - s) * param
                    EmaDecay::Composer { .. } => {
                        s.clone().mul_scalar(d as f32) + w.mul_scalar((1.0 - d) as f32)
                    }
                    // diffusers: s_param.sub_(one_minus_decay * (s_param - param))
                    EmaDecay::Diffusers(_) => {
                        s.clone() - (s.clone() - w).mul_scalar((1.0 - d) as f32)
                    }
                };
            }
        }
    }
}

impl<M: Module> Algorithm<M> for Ema<M> {
    fn name(&self) -> &str {
        "ema"
    }

    fn on_event(
        &mut self,
        event: Event,
        ctx: &mut Context<'_, M>,
    ) -> std::result::Result<(), String> {
        let start = ctx
            .run
            .steps(&self.start)
            .map_err(|e| format!("EMA start {}: {e}", self.start))?
            .ceil() as u64;
        match event {
            Event::FitStart => {
                if self.shadow.resumed {
                    self.shadow.fit_start(ctx.model)?;
                } else if self.started {
                    // the next task of a sequence: the average goes on, the update interval
                    // counts from this task's first step (the step counter starts again)
                    check_anchor(&self.shadow.tensors, ctx.model)?;
                    self.started_at = ctx.state.step;
                } else if ctx.state.step >= start {
                    self.shadow.fit_start(ctx.model)?;
                    self.started = true;
                    self.started_at = ctx.state.step;
                }
            }
            Event::AfterStep => {
                let step = ctx.state.step;
                if !self.started {
                    if step >= start {
                        self.shadow.tensors = trainable_snapshot(ctx.model);
                        self.started = true;
                        self.started_at = step;
                    }
                } else if (step - self.started_at).is_multiple_of(self.interval) {
                    self.update(ctx.model);
                    ctx.metrics
                        .insert("ema_decay".into(), self.decay.decay(self.updates));
                }
            }
            Event::EvalStart if self.swap_for_eval && self.started => {
                let raw = ctx.model.clone();
                *ctx.model = self.averaged(raw.clone());
                self.raw = Some(raw);
            }
            Event::EvalEnd => {
                if let Some(raw) = self.raw.take() {
                    *ctx.model = raw;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn state(&self) -> Value {
        json!({"updates": self.updates, "started": self.started, "started_at": self.started_at})
    }

    fn load_state(&mut self, state: &Value) -> std::result::Result<(), String> {
        self.updates = state["updates"]
            .as_u64()
            .ok_or("EMA state without `updates`")?;
        self.started = state["started"]
            .as_bool()
            .ok_or("EMA state without `started`")?;
        self.started_at = state["started_at"]
            .as_u64()
            .ok_or("EMA state without `started_at`")?;
        Ok(())
    }

    fn tensor_state(&self) -> TensorState {
        self.shadow.state()
    }

    fn load_tensor_state(
        &mut self,
        state: TensorState,
        device: &Device,
    ) -> std::result::Result<(), String> {
        self.shadow.load(&state, device)
    }
}

/// Stochastic Weight Averaging as Composer's `SWA` (Izmailov et al. 2018): from `start` (0.7 of
/// the run) every `interval` (1 epoch), the running mean of the trainable weights
/// (`avg ← avg + (w − avg)/(n + 1)`, the first sample copied, as PyTorch's `AveragedModel`); at
/// `end` (0.97 of the run) the model's weights are replaced by the average and averaging stops —
/// the steps after `end` let normalisation statistics catch up, as Composer's docs ask. Composer
/// counts an `ep` interval in epochs at `EPOCH_END`; kiln resolves every duration to steps with
/// the run's data size, which is the same when `start` falls on an epoch boundary. Composer's
/// optional SWA learning-rate schedule (`schedule_swa_lr`) is not offered: use the LR schedule.
/// In a task sequence (one object, one fit per task) each task averages its own run: the
/// average starts again at every fit that is not a resume.
///
/// ```
/// use kiln_train::algorithms::Swa;
/// use kiln_train::burn::nn::Linear;
///
/// let composer_defaults = Swa::<Linear>::composer();
/// let every_10_steps = Swa::<Linear>::new("0.5dur".parse()?, "0.9dur".parse()?, "10ba".parse()?)?;
/// # let _ = (composer_defaults, every_10_steps);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Swa<M> {
    start: kiln_schedules::Duration,
    end: kiln_schedules::Duration,
    interval: kiln_schedules::Duration,
    average: Anchor,
    /// Samples averaged.
    n: u64,
    /// Matched steps since the start (Composer's `step_counter`).
    counter: u64,
    completed: bool,
    _model: std::marker::PhantomData<fn() -> M>,
}

impl<M: Module> Swa<M> {
    /// Composer's defaults: `SWA(swa_start="0.7dur", swa_end="0.97dur", update_interval="1ep")`.
    pub fn composer() -> Self {
        Self::new(
            kiln_schedules::Duration::fraction(0.7),
            kiln_schedules::Duration::fraction(0.97),
            kiln_schedules::Duration {
                value: 1.0,
                unit: kiln_schedules::Unit::Epoch,
            },
        )
        .expect("Composer's defaults are valid")
    }

    /// Averages every `interval` from `start` to `end`.
    ///
    /// # Errors
    /// [`Error::Config`] when `end` is not after `start` in the same unit, or the interval is not
    /// positive.
    pub fn new(
        start: kiln_schedules::Duration,
        end: kiln_schedules::Duration,
        interval: kiln_schedules::Duration,
    ) -> Result<Self> {
        if start.unit != end.unit || end.value <= start.value {
            return Err(Error::Config {
                message: format!(
                    "SWA: end {end} must come after start {start}, in the same unit (Composer: both `dur` or both `ep`)"
                ),
            });
        }
        if interval.value <= 0.0 {
            return Err(Error::Config {
                message: format!("SWA: the update interval {interval} must be positive"),
            });
        }
        Ok(Self {
            start,
            end,
            interval,
            average: Anchor::named("average"),
            n: 0,
            counter: 0,
            completed: false,
            _model: std::marker::PhantomData,
        })
    }

    /// Weights averaged so far.
    pub fn samples(&self) -> u64 {
        self.n
    }

    /// Whether the model has been replaced by the average.
    pub fn completed(&self) -> bool {
        self.completed
    }
}

impl<M: Module> Algorithm<M> for Swa<M> {
    fn name(&self) -> &str {
        "swa"
    }

    fn on_event(
        &mut self,
        event: Event,
        ctx: &mut Context<'_, M>,
    ) -> std::result::Result<(), String> {
        let steps = |d: &kiln_schedules::Duration| {
            ctx.run
                .steps(d)
                .map(|s| s.ceil() as u64)
                .map_err(|e| format!("SWA {d}: {e}"))
        };
        match event {
            Event::FitStart if self.average.resumed => self.average.fit_start(ctx.model)?,
            Event::FitStart => {
                // a new task of a sequence averages its own run (durations are the fit's)
                self.average.tensors.clear();
                (self.n, self.counter, self.completed) = (0, 0, false);
            }
            Event::AfterStep if !self.completed => {
                let step = ctx.state.step;
                if step < steps(&self.start)? {
                    return Ok(());
                }
                let every = steps(&self.interval)?.max(1);
                if self.counter.is_multiple_of(every) {
                    let now = trainable_snapshot(ctx.model);
                    if self.n == 0 {
                        self.average.tensors = now;
                    } else {
                        let k = (self.n + 1) as f32;
                        for (name, w) in now {
                            if let Some(a) = self.average.tensors.get_mut(&name) {
                                *a = a.clone() + (w - a.clone()).div_scalar(k);
                            }
                        }
                    }
                    self.n += 1;
                }
                self.counter += 1;
                if step >= steps(&self.end)? {
                    let model = ctx.model.clone();
                    *ctx.model = self.average.apply(model);
                    self.completed = true;
                }
                ctx.metrics.insert("swa_samples".into(), self.n as f64);
            }
            _ => {}
        }
        Ok(())
    }

    fn state(&self) -> Value {
        json!({"n": self.n, "counter": self.counter, "completed": self.completed})
    }

    fn load_state(&mut self, state: &Value) -> std::result::Result<(), String> {
        let get = |k: &str| state[k].as_u64().ok_or(format!("SWA state without `{k}`"));
        self.n = get("n")?;
        self.counter = get("counter")?;
        self.completed = state["completed"]
            .as_bool()
            .ok_or("SWA state without `completed`")?;
        Ok(())
    }

    fn tensor_state(&self) -> TensorState {
        self.average.state()
    }

    fn load_tensor_state(
        &mut self,
        state: TensorState,
        device: &Device,
    ) -> std::result::Result<(), String> {
        self.average.load(&state, device)
    }
}
