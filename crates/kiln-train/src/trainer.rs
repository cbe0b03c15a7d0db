//! The training loop.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use kiln_schedules::{Duration, LrSchedule, RunSize};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::{ALGORITHMS_FILE, Checkpoints, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE};
use crate::error::{Error, Result, io_err};
use crate::optim::{OptimizerConfig, clip_grad_norm};
use crate::step::{RunPlan, StepOutput, TensorState, read_states, write_states};

/// The points of a step at which algorithms run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Before the first step (also after a resume).
    FitStart,
    /// Before a step's first micro-batch is drawn.
    BatchStart,
    /// After a micro-batch's forward pass: `Context::output` holds the task's [`StepOutput`]
    /// (loss, per-example losses, logits, inputs, example ids).
    AfterForward,
    /// After the algorithms saw the forward pass: they may change the loss
    /// (`Context::output`'s `loss`: penalties, distillation terms).
    AfterLoss,
    /// After the step's gradients are accumulated (and clipped).
    AfterBackward,
    /// After the optimiser step: algorithms may replace the model (`Context::model`).
    AfterStep,
    /// After the step's metrics are logged.
    BatchEnd,
    /// Before an evaluation: algorithms may swap the model evaluated (an EMA's averaged
    /// weights), and must swap it back at `EvalEnd`.
    EvalStart,
    /// After an evaluation (`Context::metrics` holds its results).
    EvalEnd,
    /// After a checkpoint is written.
    Checkpoint,
    /// After the last step.
    FitEnd,
}

/// Where training is.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps completed.
    pub step: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// Training samples seen.
    pub samples: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Epochs of the training data completed (fractional; from the task).
    pub epoch: f64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Loss of the last step (mean over its micro-batches).
    pub loss: Option<f64>,
    /// Gradient norm of the last step (before clipping).
    pub grad_norm: Option<f64>,
}

impl TrainState {
    /// Fraction of the run completed.
    pub fn progress(&self) -> f64 {
        if self.total_steps == 0 {
            1.0
        } else {
            self.step as f64 / self.total_steps as f64
        }
    }
}

/// Size of a (micro-)batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchSize {
    /// Samples (sequences).
    pub samples: u64,
    /// Tokens (non-padding).
    pub tokens: u64,
}

/// What the task knows about the data's size, to resolve `ep`, `sp` and `tok` durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataSize {
    /// Optimiser steps per epoch.
    pub steps_per_epoch: Option<u64>,
    /// Samples per optimiser step.
    pub samples_per_step: Option<u64>,
    /// Tokens per optimiser step.
    pub tokens_per_step: Option<u64>,
}

/// The model-and-data side of training: batches, loss, evaluation and data state.
pub trait TrainTask<M: Module> {
    /// A micro-batch.
    type Batch;

    /// Sizes for duration resolution.
    fn data_size(&self) -> DataSize {
        DataSize::default()
    }

    /// Receives the run's length, resolved once by the trainer from `max_duration` and
    /// [`data_size`](Self::data_size), before the first batch (and before a checkpointed data
    /// position is restored): resolve the task's own schedules (masking rate, data mix) here, so
    /// they count the same steps as the LR schedule.
    ///
    /// # Errors
    /// Schedules that do not fit the run.
    fn prepare(&mut self, _run: &RunPlan) -> Result<()> {
        Ok(())
    }

    /// Micro-batch `micro` of `micros` of the step after `state.step`.
    ///
    /// # Errors
    /// Data errors.
    fn next_batch(
        &mut self,
        state: &TrainState,
        micro: usize,
        micros: usize,
    ) -> Result<(Self::Batch, BatchSize)>;

    /// The forward pass of `batch`: its loss (a `[1]` tensor on the model's autodiff device) and
    /// whatever else the task can hand to algorithms ([`StepOutput`]). A task with only a loss
    /// returns `Ok(loss.into())`.
    ///
    /// # Errors
    /// Model errors.
    fn forward(&mut self, model: &M, batch: Self::Batch) -> Result<StepOutput>;

    /// Evaluates `model` (the task switches it to `valid()`); returns named metrics.
    ///
    /// # Errors
    /// Data or model errors.
    fn evaluate(&mut self, model: &M, state: &TrainState) -> Result<BTreeMap<String, f64>>;

    /// Epochs of training data completed (fractional).
    fn epoch(&self) -> f64 {
        0.0
    }

    /// Extra metrics for the step's log line (e.g. the masking rate, tokens per domain).
    fn metrics(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    /// The data position to checkpoint.
    fn data_state(&self) -> Value;

    /// Restores a checkpointed data position.
    ///
    /// # Errors
    /// If the state does not fit this task's data.
    fn restore_data_state(&mut self, state: &Value) -> Result<()>;
}

/// What an algorithm sees and may change at an event.
pub struct Context<'a, M> {
    /// Where training is.
    pub state: &'a TrainState,
    /// The run's resolved length (the same the LR schedule and the task use).
    pub run: &'a RunPlan,
    /// The model (replace it at `AfterStep` to merge, average, re-project…).
    pub model: &'a mut M,
    /// The micro-batch's step output, at `AfterForward` and `AfterLoss` (change its `loss` at
    /// `AfterLoss`: penalties, distillation terms…).
    pub output: Option<&'a mut StepOutput>,
    /// Metrics logged with this step (or the evaluation's, at `EvalEnd`).
    pub metrics: &'a mut BTreeMap<String, f64>,
}

/// Something that runs at training events (SFA, EMA, KD, scoring, penalties…).
pub trait Algorithm<M> {
    /// A short name for logs and checkpoints.
    fn name(&self) -> &str;

    /// Handles `event`.
    ///
    /// # Errors
    /// A message; training stops with [`Error::Algorithm`].
    fn on_event(&mut self, event: Event, ctx: &mut Context<'_, M>) -> Result<(), String>;

    /// State to checkpoint (counters, settings: JSON in `state.json`).
    fn state(&self) -> Value {
        Value::Null
    }

    /// Restores checkpointed state.
    ///
    /// # Errors
    /// A message if the state does not fit.
    fn load_state(&mut self, _state: &Value) -> Result<(), String> {
        Ok(())
    }

    /// Tensors to checkpoint (an EMA copy, an anchor, a Fisher diagonal): written into the
    /// checkpoint's `algorithms.safetensors` with the rest of the checkpoint, atomically.
    fn tensor_state(&self) -> TensorState {
        TensorState::default()
    }

    /// Restores checkpointed tensors onto `device` (the training device). Called on resume,
    /// before `FitStart`, with what [`tensor_state`](Self::tensor_state) returned.
    ///
    /// # Errors
    /// A message if the tensors do not fit.
    fn load_tensor_state(&mut self, _state: TensorState, _device: &Device) -> Result<(), String> {
        Ok(())
    }
}

fn steps_1() -> usize {
    1
}
fn keep_3() -> usize {
    3
}
fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn constant() -> LrSchedule {
    serde_json::from_str(r#"{"name": "constant"}"#).expect("constant schedule")
}

/// Settings of a run (serde: the `trainer` block of a recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    /// Length of the run (`1000ba`, `3ep`, `2e9tok`; not `dur`).
    pub max_duration: Duration,
    /// The optimiser and its peak LR.
    pub optimizer: OptimizerConfig,
    /// LR multiplier schedule (`constant`).
    #[serde(default = "constant")]
    pub lr_schedule: LrSchedule,
    /// Composer's scale-schedule ratio for the schedule's times (1).
    #[serde(default = "one")]
    pub scale_schedule_ratio: f64,
    /// Micro-batches per optimiser step (1); each one's loss is weighted 1/n.
    #[serde(default = "steps_1")]
    pub grad_accum: usize,
    /// Clip the global gradient norm to this value (none).
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// Evaluate every … (and always at the end); none: only at the end.
    #[serde(default)]
    pub eval_interval: Option<Duration>,
    /// Checkpoint every … (and at the end); none: no checkpoints.
    #[serde(default)]
    pub save_interval: Option<Duration>,
    /// Checkpoints to keep (3).
    #[serde(default = "keep_3")]
    pub keep_last_n: usize,
    /// Continue from the newest complete checkpoint in the run directory (true).
    #[serde(default = "yes")]
    pub autoresume: bool,
    /// Seed of the per-step RNG (dropout).
    #[serde(default)]
    pub seed: u64,
    /// Show a progress bar on a terminal (true).
    #[serde(default = "yes")]
    pub progress_bar: bool,
}

impl TrainerConfig {
    /// A config with defaults for everything but the length and optimiser.
    pub fn new(max_duration: Duration, optimizer: OptimizerConfig) -> Self {
        Self {
            max_duration,
            optimizer,
            lr_schedule: constant(),
            scale_schedule_ratio: 1.0,
            grad_accum: 1,
            clip_grad_norm: None,
            eval_interval: None,
            save_interval: None,
            keep_last_n: 3,
            autoresume: true,
            seed: 0,
            progress_bar: true,
        }
    }
}

/// What a finished run returns.
#[derive(Debug)]
pub struct FitOutcome<M> {
    /// The trained model.
    pub model: M,
    /// The final state.
    pub state: TrainState,
    /// The last evaluation.
    pub eval: BTreeMap<String, f64>,
    /// The step a run resumed from (none: started fresh).
    pub resumed_from: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct SavedState {
    trainer: TrainState,
    data: Value,
    algorithms: BTreeMap<String, Value>,
    seed: u64,
}

/// The trainer: a config and a run directory (checkpoints, `metrics.jsonl`).
#[derive(Debug, Clone)]
pub struct Trainer {
    config: TrainerConfig,
    run_dir: PathBuf,
}

/// The first value of a `[1]` tensor (a loss, a penalty) as f64 for a log line; NaN if it cannot
/// be read. Waits for the device.
pub fn scalar(t: &Tensor<1>) -> f64 {
    t.clone()
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_or(f64::NAN, |v| v[0])
}

/// Whether a multiple of `every` lies in (step − 1, step].
fn due(step: u64, every: Option<f64>) -> bool {
    every.is_some_and(|e| (step as f64 / e).floor() > ((step - 1) as f64 / e).floor())
}

fn step_seed(seed: u64, step: u64) -> u64 {
    // SplitMix64 of (seed, step): independent dropout masks per step, reproducible on resume.
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Trainer {
    /// A trainer writing to `run_dir`.
    pub fn new(config: TrainerConfig, run_dir: impl AsRef<Path>) -> Self {
        Self {
            config,
            run_dir: run_dir.as_ref().to_owned(),
        }
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The config.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// Trains `model` (on an autodiff device) on `task` with `algorithms`, resuming from the run
    /// directory's newest complete checkpoint when `autoresume` is on.
    ///
    /// # Errors
    /// [`Error::Config`] for settings that do not fit the data; [`Error::NonFiniteLoss`];
    /// task, algorithm, checkpoint and I/O errors.
    pub fn fit<M: Module, T: TrainTask<M>>(
        &self,
        mut model: M,
        task: &mut T,
        algorithms: &mut [Box<dyn Algorithm<M>>],
        device: &Device,
    ) -> Result<FitOutcome<M>> {
        let c = &self.config;
        let bad = |message: String| Error::Config { message };
        if c.grad_accum == 0 {
            return Err(bad("grad_accum must be at least 1".into()));
        }
        if let Some(n) = c.clip_grad_norm
            && !(n.is_finite() && n > 0.0)
        {
            return Err(bad(format!("clip_grad_norm must be positive, got {n}")));
        }
        let size = task.data_size();
        let mut run = RunSize::new(c.max_duration);
        run.steps_per_epoch = size.steps_per_epoch;
        run.samples_per_step = size.samples_per_step;
        run.tokens_per_step = size.tokens_per_step;
        let total = run.total_steps()?.ceil() as u64;
        if total == 0 {
            return Err(bad(format!(
                "max_duration {} is zero steps",
                c.max_duration
            )));
        }
        let plan = RunPlan {
            size: run,
            total_steps: total,
        };
        task.prepare(&plan)?;
        let lr = c.lr_schedule.resolve(&run, c.scale_schedule_ratio)?;
        let every = |d: &Option<Duration>, what: &str| -> Result<Option<f64>> {
            match d {
                None => Ok(None),
                Some(d) => {
                    let s = run.steps(d)?;
                    if s <= 0.0 {
                        return Err(bad(format!("{what} {d} is zero steps")));
                    }
                    Ok(Some(s))
                }
            }
        };
        let eval_every = every(&c.eval_interval, "eval_interval")?;
        let save_every = every(&c.save_interval, "save_interval")?;
        let mut optim = c.optimizer.build()?;
        let checkpoints = Checkpoints::new(&self.run_dir);
        std::fs::create_dir_all(&self.run_dir).map_err(io_err(&self.run_dir))?;
        let mut state = TrainState {
            total_steps: total,
            ..TrainState::default()
        };
        let mut resumed_from = None;
        let mut last_checkpoint = None;
        if c.autoresume
            && let Some((step, path)) =
                checkpoints.latest_valid(|e| eprintln!("warning: skipping checkpoint: {e}"))
        {
            let ck = |message: String| Error::Checkpoint {
                path: path.clone(),
                message,
            };
            model = model
                .try_load_file(path.join(MODEL_FILE))
                .map_err(|e| ck(format!("model: {e}")))?;
            optim = optim
                .load(path.join(OPTIMIZER_FILE))
                .map_err(|e| ck(format!("optimizer: {e}")))?;
            let text =
                std::fs::read(path.join(STATE_FILE)).map_err(io_err(path.join(STATE_FILE)))?;
            let saved: SavedState =
                serde_json::from_slice(&text).map_err(|e| ck(format!("state.json: {e}")))?;
            if saved.trainer.total_steps != total || saved.seed != c.seed {
                return Err(ck(format!(
                    "it belongs to a run of {} steps with seed {}, this run has {total} steps and seed {}; use another run directory or turn autoresume off",
                    saved.trainer.total_steps, saved.seed, c.seed
                )));
            }
            task.restore_data_state(&saved.data)?;
            let tensor_path = path.join(ALGORITHMS_FILE);
            let mut tensors = if tensor_path.is_file() {
                read_states(&tensor_path)?
            } else {
                BTreeMap::new()
            };
            for a in algorithms.iter_mut() {
                let name = a.name().to_owned();
                let fail = |message: String| Error::Algorithm {
                    name: name.clone(),
                    event: Event::FitStart,
                    message,
                };
                if let Some(s) = saved.algorithms.get(&name) {
                    a.load_state(s).map_err(fail)?;
                }
                if let Some(t) = tensors.remove(&name) {
                    a.load_tensor_state(t, device).map_err(fail)?;
                }
            }
            state = saved.trainer;
            resumed_from = Some(step);
            last_checkpoint = Some(path);
        }
        let metrics_path = self.run_dir.join("metrics.jsonl");
        let mut log = MetricsLog::open(&metrics_path, state.step)?;
        let mut eval = BTreeMap::new();
        // Runs every algorithm at an event, with the step output where there is one.
        macro_rules! emit {
            ($event:expr, $metrics:ident) => {
                fire(
                    $event,
                    algorithms,
                    &mut Context {
                        state: &state,
                        run: &plan,
                        model: &mut model,
                        output: None,
                        metrics: &mut $metrics,
                    },
                )
            };
            ($event:expr, $metrics:ident, $output:ident) => {
                fire(
                    $event,
                    algorithms,
                    &mut Context {
                        state: &state,
                        run: &plan,
                        model: &mut model,
                        output: Some(&mut $output),
                        metrics: &mut $metrics,
                    },
                )
            };
        }
        let mut scratch = BTreeMap::new();
        // burn initialises parameters lazily, at their first read, from the device's generator:
        // an algorithm that reads the weights at FitStart (an SFA or L2 anchor) materialises them
        // here, so seed first — the same values in every run, as the first step's forward gets.
        device.seed(step_seed(c.seed, state.step));
        emit!(Event::FitStart, scratch)?;
        let bar = Progress::new(total, state.step, c.progress_bar);
        let started = Instant::now();
        let (start_tokens, start_samples) = (state.tokens, state.samples);
        while state.step < total {
            let step_started = Instant::now();
            device.seed(step_seed(c.seed, state.step));
            let mut metrics = BTreeMap::new();
            emit!(Event::BatchStart, metrics)?;
            let mut accumulator = GradientsAccumulator::<M>::new();
            let (mut loss_sum, mut size) = (0.0, BatchSize::default());
            for micro in 0..c.grad_accum {
                let (batch, bs) = task.next_batch(&state, micro, c.grad_accum)?;
                size.samples += bs.samples;
                size.tokens += bs.tokens;
                let mut output = task.forward(&model, batch)?;
                emit!(Event::AfterForward, metrics, output)?;
                emit!(Event::AfterLoss, metrics, output)?;
                let loss = output.loss;
                let value = scalar(&loss);
                if !value.is_finite() {
                    bar.finish();
                    return Err(Error::NonFiniteLoss {
                        step: state.step + 1,
                        loss: value,
                        last_checkpoint,
                    });
                }
                loss_sum += value;
                let loss = if c.grad_accum > 1 {
                    loss.div_scalar(c.grad_accum as f64)
                } else {
                    loss
                };
                accumulator
                    .accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
            }
            let mut grads = accumulator.grads();
            let norm = match c.clip_grad_norm {
                Some(max) => clip_grad_norm(&model, &mut grads, max),
                None => crate::optim::grad_norm(&model, &grads),
            };
            emit!(Event::AfterBackward, metrics)?;
            let lr_now = c.optimizer.lr() * lr.multiplier(state.step as f64);
            model = step(&mut optim, lr_now, model, grads);
            state.step += 1;
            state.samples += size.samples;
            state.tokens += size.tokens;
            state.epoch = task.epoch();
            state.lr = lr_now;
            state.loss = Some(loss_sum / c.grad_accum as f64);
            state.grad_norm = Some(norm);
            emit!(Event::AfterStep, metrics)?;
            let secs = step_started.elapsed().as_secs_f64();
            let mut line = serde_json::json!({
                "split": "train", "step": state.step, "loss": state.loss, "lr": lr_now, "grad_norm": norm,
                "samples": state.samples, "tokens": state.tokens, "epoch": state.epoch,
                "tokens_per_s": size.tokens as f64 / secs, "samples_per_s": size.samples as f64 / secs,
            });
            for (k, v) in task.metrics().iter().chain(&metrics) {
                line[k] = serde_json::json!(v);
            }
            log.write(&line)?;
            emit!(Event::BatchEnd, metrics)?;
            let elapsed = started.elapsed().as_secs_f64();
            bar.update(
                &state,
                (state.tokens - start_tokens) as f64 / elapsed,
                (state.samples - start_samples) as f64 / elapsed,
            );
            if due(state.step, eval_every) || state.step == total {
                let mut scratch = BTreeMap::new();
                emit!(Event::EvalStart, scratch)?;
                eval = task.evaluate(&model, &state)?;
                emit!(Event::EvalEnd, eval)?;
                let mut line = serde_json::json!({"split": "eval", "step": state.step, "samples": state.samples, "tokens": state.tokens});
                for (k, v) in &eval {
                    line[k] = serde_json::json!(v);
                }
                log.write(&line)?;
                bar.println(&format!(
                    "step {}: {}",
                    state.step,
                    eval.iter()
                        .map(|(k, v)| format!("{k} {v:.4}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if save_every.is_some() && (due(state.step, save_every) || state.step == total) {
                let saved = SavedState {
                    trainer: state.clone(),
                    data: task.data_state(),
                    algorithms: algorithms
                        .iter()
                        .map(|a| (a.name().to_owned(), a.state()))
                        .collect(),
                    seed: c.seed,
                };
                let tensor_states: BTreeMap<String, TensorState> = algorithms
                    .iter()
                    .map(|a| (a.name().to_owned(), a.tensor_state()))
                    .filter(|(_, t)| !t.is_empty())
                    .collect();
                let path = checkpoints.save(state.step, |dir| {
                    let ck = |message: String| Error::Checkpoint {
                        path: dir.to_owned(),
                        message,
                    };
                    model
                        .clone()
                        .save_file(dir.join(MODEL_FILE))
                        .map_err(|e| ck(format!("model: {e}")))?;
                    optim
                        .save(dir.join(OPTIMIZER_FILE))
                        .map_err(|e| ck(format!("optimizer: {e}")))?;
                    if !tensor_states.is_empty() {
                        write_states(&dir.join(ALGORITHMS_FILE), &tensor_states)?;
                    }
                    std::fs::write(
                        dir.join(STATE_FILE),
                        serde_json::to_vec_pretty(&saved).expect("state serialises"),
                    )
                    .map_err(io_err(dir.join(STATE_FILE)))
                })?;
                checkpoints.prune(c.keep_last_n)?;
                last_checkpoint = Some(path);
                emit!(Event::Checkpoint, metrics)?;
            }
        }
        emit!(Event::FitEnd, scratch)?;
        bar.finish();
        Ok(FitOutcome {
            model,
            state,
            eval,
            resumed_from,
        })
    }
}

fn fire<M>(
    event: Event,
    algorithms: &mut [Box<dyn Algorithm<M>>],
    ctx: &mut Context<'_, M>,
) -> Result<()> {
    for a in algorithms.iter_mut() {
        a.on_event(event, ctx).map_err(|message| Error::Algorithm {
            name: a.name().to_owned(),
            event,
            message,
        })?;
    }
    Ok(())
}

fn step<M: Module>(optim: &mut ModuleOptimizer, lr: f64, model: M, grads: GradientsParams) -> M {
    optim.step(lr, model, grads)
}

/// `metrics.jsonl`: one JSON object per line. On resume, lines after the resumed step are
/// dropped first, so the file reads like an uninterrupted run.
struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    fn open(path: &Path, resume_step: u64) -> Result<Self> {
        let kept: Vec<String> = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s <= resume_step)
                })
                .map(str::to_owned)
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut body = kept.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        kiln_checkpoint::write_atomic(path, body.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// One `write` per line: a process killed mid-step leaves whole lines behind, not a
    /// half-written one for a reader polling the file (`writeln!` on a `File` issues a write
    /// per formatted piece).
    fn write(&mut self, line: &Value) -> Result<()> {
        use std::io::Write;
        let mut text = line.to_string();
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .map_err(io_err(&self.path))
    }
}

/// A progress bar on a terminal; plain lines every 10% otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
}

impl Progress {
    fn new(total: u64, at: u64, enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total).with_position(at);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps · {msg} · ETA {eta}",
                )
                .expect("template"),
            );
            b
        });
        Self { bar, total }
    }

    fn update(&self, s: &TrainState, tokens_per_s: f64, samples_per_s: f64) {
        let msg = format!(
            "loss {:.4} · lr {:.2e} · {:.0} tok/s · {:.1} samples/s",
            s.loss.unwrap_or(f64::NAN),
            s.lr,
            tokens_per_s,
            samples_per_s
        );
        match &self.bar {
            Some(b) => {
                b.set_position(s.step);
                b.set_message(msg);
            }
            None => {
                if s.step == self.total
                    || (self.total >= 10 && s.step.is_multiple_of(self.total / 10))
                {
                    eprintln!("step {}/{} · {msg}", s.step, self.total);
                }
            }
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_fire_at_multiples_even_fractional_ones() {
        let at = |every: f64| {
            (1..=20u64)
                .filter(|&s| due(s, Some(every)))
                .collect::<Vec<_>>()
        };
        assert_eq!(at(5.0), [5, 10, 15, 20]);
        assert_eq!(at(7.5), [8, 15]);
        assert!(!due(3, None));
        assert_ne!(step_seed(0, 1), step_seed(0, 2));
        assert_ne!(step_seed(0, 1), step_seed(1, 1));
    }
}
