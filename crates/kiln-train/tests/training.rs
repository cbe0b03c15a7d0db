//! The loop's contracts on a small regression task: gradient accumulation equals the full
//! batch, NaN stops the run and keeps the last good checkpoint, algorithms see and change what
//! the events promise, bad settings are errors.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};
use kiln_schedules::Duration;
use kiln_train::{
    Algorithm, BatchSize, Context, DataSize, Error, Event, OptimizerConfig, RunPlan, StepOutput,
    TrainState, TrainTask, Trainer, TrainerConfig,
};
use serde_json::Value;

/// y = x·w* + noise-free, 16 rows; each step uses all rows, split into `micros` micro-batches.
struct Regression {
    x: Vec<f32>,
    y: Vec<f32>,
    /// What the trainer handed to `prepare`.
    prepared: Option<RunPlan>,
    /// Dataset id of the next row handed out (ids keep counting across steps).
    next_id: u64,
}

impl Regression {
    fn new() -> Self {
        let x: Vec<f32> = (0..48)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let y: Vec<f32> = x
            .chunks(3)
            .map(|r| 2.0 * r[0] - r[1] + 0.5 * r[2] + 0.25)
            .collect();
        Self {
            x,
            y,
            prepared: None,
            next_id: 0,
        }
    }
}

impl TrainTask<Linear> for Regression {
    type Batch = (Tensor<2>, Tensor<2>);

    fn data_size(&self) -> DataSize {
        DataSize {
            steps_per_epoch: Some(1),
            samples_per_step: Some(16),
            tokens_per_step: None,
        }
    }

    fn next_batch(
        &mut self,
        _: &TrainState,
        micro: usize,
        micros: usize,
    ) -> kiln_train::Result<(Self::Batch, BatchSize)> {
        let d = Device::flex().autodiff();
        let rows = 16 / micros;
        let r = micro * rows..(micro + 1) * rows;
        let x = Tensor::from_data(
            TensorData::new(self.x[r.start * 3..r.end * 3].to_vec(), [rows, 3]),
            &d,
        );
        let y = Tensor::from_data(TensorData::new(self.y[r.clone()].to_vec(), [rows, 1]), &d);
        Ok((
            (x, y),
            BatchSize {
                samples: rows as u64,
                tokens: 0,
            },
        ))
    }

    fn prepare(&mut self, run: &RunPlan) -> kiln_train::Result<()> {
        self.prepared = Some(run.clone());
        Ok(())
    }

    /// The mean squared error, each row's squared error, and the rows' dataset ids.
    fn forward(&mut self, m: &Linear, (x, y): Self::Batch) -> kiln_train::Result<StepOutput> {
        let rows = x.dims()[0];
        let per_row = (m.forward(x) - y).powi_scalar(2).reshape([rows]);
        let first = self.next_id;
        self.next_id += rows as u64;
        Ok(StepOutput::new(per_row.clone().mean())
            .with_per_example_loss(per_row)
            .with_example_ids((first..first + rows as u64).collect()))
    }

    fn evaluate(
        &mut self,
        m: &Linear,
        _: &TrainState,
    ) -> kiln_train::Result<BTreeMap<String, f64>> {
        let w = m
            .valid()
            .weight
            .val()
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .unwrap();
        Ok(BTreeMap::from([("w0".into(), w[0])]))
    }

    fn data_state(&self) -> Value {
        Value::Null
    }

    fn restore_data_state(&mut self, _: &Value) -> kiln_train::Result<()> {
        Ok(())
    }
}

fn weights(m: &Linear) -> Vec<f32> {
    let mut w = m
        .weight
        .val()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    w.extend(
        m.bias
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap(),
    );
    w
}

fn fit(
    config: TrainerConfig,
    task: &mut Regression,
    algorithms: &mut [Box<dyn Algorithm<Linear>>],
) -> kiln_train::Result<(kiln_train::FitOutcome<Linear>, tempfile::TempDir)> {
    let device = Device::flex().autodiff();
    // Explicit weights: the device RNG is shared by tests running in parallel.
    let mut model = LinearConfig::new(3, 1).init(&device);
    model.weight = burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(vec![0.1f32, -0.2, 0.3], [3, 1]),
        &device,
    ));
    model.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(vec![0.0f32], [1]),
        &device,
    )));
    let dir = tempfile::tempdir().unwrap();
    let mut config = config;
    config.progress_bar = false;
    let out = Trainer::new(config, dir.path()).fit(model, task, algorithms, &device)?;
    Ok((out, dir))
}

#[test]
fn accumulating_micro_batches_equals_the_full_batch() {
    let base = TrainerConfig::new("30ba".parse().unwrap(), OptimizerConfig::adamw(0.05, 1e-4));
    let (full, _d1) = fit(base.clone(), &mut Regression::new(), &mut []).unwrap();
    let mut accum = base;
    accum.grad_accum = 4;
    let (split, _d2) = fit(accum, &mut Regression::new(), &mut []).unwrap();
    for (a, b) in weights(&full.model).iter().zip(weights(&split.model)) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    assert_eq!(full.state.samples, 480);
    let mut longer =
        TrainerConfig::new("150ba".parse().unwrap(), OptimizerConfig::adamw(0.05, 1e-4));
    longer.grad_accum = 2;
    let (out, _d3) = fit(longer, &mut Regression::new(), &mut []).unwrap();
    assert!(
        out.state.loss.unwrap() < 0.01,
        "it learns: {:?}",
        out.state.loss
    );
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    struct Poison(u64);
    impl Algorithm<Linear> for Poison {
        fn name(&self) -> &str {
            "poison"
        }
        fn on_event(&mut self, event: Event, ctx: &mut Context<'_, Linear>) -> Result<(), String> {
            if event == Event::AfterLoss && ctx.state.step + 1 == self.0 {
                let out = ctx.output.as_deref_mut().unwrap();
                out.loss = out.loss.clone().mul_scalar(f64::NAN);
            }
            Ok(())
        }
    }
    let mut config = TrainerConfig::new("10ba".parse().unwrap(), OptimizerConfig::adamw(0.01, 0.0));
    config.save_interval = Some("2ba".parse().unwrap());
    let err = fit(config, &mut Regression::new(), &mut [Box::new(Poison(5))]).unwrap_err();
    match &err {
        Error::NonFiniteLoss {
            step,
            last_checkpoint,
            ..
        } => {
            assert_eq!(*step, 5);
            assert!(
                last_checkpoint
                    .as_ref()
                    .unwrap()
                    .ends_with("step-000000004"),
                "{err}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("loss is NaN at step 5"), "{err}");
}

#[test]
fn algorithms_see_every_event_in_order_and_can_change_the_model() {
    use std::cell::RefCell;
    use std::rc::Rc;

    struct Recorder(Rc<RefCell<Vec<(Event, u64)>>>);
    impl Algorithm<Linear> for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        fn on_event(&mut self, event: Event, ctx: &mut Context<'_, Linear>) -> Result<(), String> {
            self.0.borrow_mut().push((event, ctx.state.step));
            if event == Event::AfterStep {
                ctx.metrics.insert("recorded".into(), 1.0);
            }
            Ok(())
        }
    }
    /// Zeroes the bias after every step (a stand-in for merging or re-projecting).
    struct ZeroBias;
    impl Algorithm<Linear> for ZeroBias {
        fn name(&self) -> &str {
            "zero_bias"
        }
        fn on_event(&mut self, event: Event, ctx: &mut Context<'_, Linear>) -> Result<(), String> {
            if event == Event::AfterStep {
                let mut m = ctx.model.clone();
                m.bias = m
                    .bias
                    .map(|b| b.map(|t| t.zeros_like().set_require_grad(true)));
                *ctx.model = m;
            }
            Ok(())
        }
    }
    let mut config = TrainerConfig::new("4ba".parse().unwrap(), OptimizerConfig::adamw(0.01, 0.0));
    config.grad_accum = 2;
    config.eval_interval = Some("3ba".parse().unwrap());
    config.save_interval = Some("4ba".parse().unwrap());
    let events = Rc::new(RefCell::new(Vec::new()));
    let mut algos: Vec<Box<dyn Algorithm<Linear>>> =
        vec![Box::new(Recorder(events.clone())), Box::new(ZeroBias)];
    let (out, dir) = fit(config, &mut Regression::new(), &mut algos).unwrap();
    assert_eq!(
        out.model
            .bias
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap(),
        [0.0]
    );
    let lines: Vec<Value> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["split"] == "eval")
            .map(|l| l["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 4]
    );
    assert!(
        lines
            .iter()
            .filter(|l| l["split"] == "train")
            .all(|l| l["recorded"] == 1.0)
    );
    use Event::*;
    let want_step: Vec<Event> = vec![
        BatchStart,
        AfterForward,
        AfterLoss,
        AfterForward,
        AfterLoss,
        AfterBackward,
        AfterStep,
        BatchEnd,
    ];
    let mut want = vec![(FitStart, 0)];
    for s in 0..4u64 {
        want.extend(want_step.iter().map(|&e| {
            (
                e,
                if matches!(e, AfterStep | BatchEnd) {
                    s + 1
                } else {
                    s
                },
            )
        }));
        if s + 1 == 3 || s + 1 == 4 {
            want.push((EvalStart, s + 1));
            want.push((EvalEnd, s + 1));
        }
        if s + 1 == 4 {
            want.push((Checkpoint, 4));
        }
    }
    want.push((FitEnd, 4));
    assert_eq!(*events.borrow(), want);
    assert_eq!(out.resumed_from, None);
}

/// The contract for the next crates: algorithms see the task's step output (per-example losses,
/// example ids) at `AfterForward`, may change the loss at `AfterLoss`, and everyone counts the
/// same run length, resolved once by the trainer.
#[test]
fn algorithms_see_the_step_output_and_the_run_the_task_was_prepared_with() {
    use std::cell::RefCell;
    use std::rc::Rc;

    #[derive(Default)]
    struct Seen {
        ids: Vec<u64>,
        per_example: Vec<usize>,
        totals: Vec<u64>,
    }
    /// Reads the step output at `AfterForward`; doubles the loss at `AfterLoss` (a stand-in for
    /// a penalty or a distillation term).
    struct Reader(Rc<RefCell<Seen>>);
    impl Algorithm<Linear> for Reader {
        fn name(&self) -> &str {
            "reader"
        }
        fn on_event(&mut self, event: Event, ctx: &mut Context<'_, Linear>) -> Result<(), String> {
            let mut seen = self.0.borrow_mut();
            seen.totals.push(ctx.run.total_steps);
            match event {
                Event::AfterForward => {
                    let out = ctx
                        .output
                        .as_deref()
                        .ok_or("no step output at AfterForward")?;
                    seen.ids.extend(out.example_ids.clone().unwrap_or_default());
                    seen.per_example
                        .push(out.per_example_loss.as_ref().map_or(0, |t| t.dims()[0]));
                }
                Event::AfterLoss => {
                    let out = ctx
                        .output
                        .as_deref_mut()
                        .ok_or("no step output at AfterLoss")?;
                    out.loss = out.loss.clone().mul_scalar(2.0);
                }
                _ => assert!(ctx.output.is_none(), "{event:?} has no step output"),
            }
            Ok(())
        }
    }
    // `3ep` with one step per epoch: the trainer resolves 3 steps and hands that to everyone.
    let mut config = TrainerConfig::new("3ep".parse().unwrap(), OptimizerConfig::adamw(0.01, 0.0));
    config.grad_accum = 2;
    let seen = Rc::new(RefCell::new(Seen::default()));
    let mut task = Regression::new();
    let mut algos: Vec<Box<dyn Algorithm<Linear>>> = vec![Box::new(Reader(seen.clone()))];
    let (out, dir) = fit(config, &mut task, &mut algos).unwrap();
    let plan = task.prepared.expect("the trainer prepared the task");
    assert_eq!(plan.total_steps, 3);
    assert_eq!(plan.size.steps_per_epoch, Some(1));
    let seen = seen.borrow();
    assert!(seen.totals.iter().all(|&t| t == 3));
    assert_eq!(
        seen.ids,
        (0..48).collect::<Vec<u64>>(),
        "3 steps × 2 micro-batches × 8 rows"
    );
    assert_eq!(seen.per_example, [8; 6]);
    // The logged loss is the changed one: twice the task's (checked on the first step).
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    // `fit` starts from w = (0.1, −0.2, 0.3), b = 0.
    let data = Regression::new();
    let mse = data
        .x
        .chunks(3)
        .zip(&data.y)
        .map(|(r, y)| {
            let p = 0.1 * r[0] - 0.2 * r[1] + 0.3 * r[2];
            f64::from((p - y) * (p - y))
        })
        .sum::<f64>()
        / 16.0;
    let logged = first["loss"].as_f64().unwrap();
    assert!(
        (logged / (2.0 * mse) - 1.0).abs() < 1e-5,
        "{logged} vs 2 × {mse}"
    );
    assert_eq!(out.state.step, 3);
}

#[test]
fn bad_settings_are_errors_before_training() {
    let mut c = TrainerConfig::new("10ba".parse().unwrap(), OptimizerConfig::adamw(0.01, 0.0));
    c.grad_accum = 0;
    assert!(
        fit(c, &mut Regression::new(), &mut [])
            .unwrap_err()
            .to_string()
            .contains("grad_accum")
    );
    let mut c = TrainerConfig::new("10ba".parse().unwrap(), OptimizerConfig::adamw(-1.0, 0.0));
    c.progress_bar = false;
    assert!(
        fit(c, &mut Regression::new(), &mut [])
            .unwrap_err()
            .to_string()
            .contains("lr must be positive")
    );
    let c = TrainerConfig::new(Duration::fraction(0.5), OptimizerConfig::adamw(0.01, 0.0));
    assert!(matches!(
        fit(c, &mut Regression::new(), &mut []),
        Err(Error::Schedule(_))
    ));
    let mut c = TrainerConfig::new("10ba".parse().unwrap(), OptimizerConfig::adamw(0.01, 0.0));
    c.lr_schedule =
        serde_json::from_str(r#"{"name": "cosine_with_warmup", "t_warmup": "20ba"}"#).unwrap();
    assert!(
        fit(c, &mut Regression::new(), &mut [])
            .unwrap_err()
            .to_string()
            .contains("longer than t_max")
    );
    let c: Result<TrainerConfig, _> = serde_json::from_str(
        r#"{"max_duration": "10ba", "optimizer": {"name": "adamw", "lr": 0.1}, "grad_acum": 2}"#,
    );
    assert!(c.unwrap_err().to_string().contains("grad_acum"));
}
