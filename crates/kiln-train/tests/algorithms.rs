//! kiln-train's continual-learning algorithms (`kiln_train::algorithms`): SFA against WiSE-FT
//! and against L2-regularised SGD, its merge schedule, and the L2 anchor's penalty. Their
//! checkpointed state is tested by the SIGKILL resume test (`tests/autoresume.rs`).

use std::collections::BTreeMap;

use kiln_train::algorithms::{L2Anchor, PenaltyScale, Sfa, SfaAnchor};
use kiln_train::burn::nn::{Linear, LinearConfig};
use kiln_train::burn::prelude::*;
use kiln_train::params::float_params;
use kiln_train::{
    Algorithm, BatchSize, Context, Event, OptimizerConfig, StepOutput, TrainState, TrainTask,
    Trainer, TrainerConfig,
};

/// Regression of y = W·x + b towards a fixed random map, batches cycling through 5 inputs.
struct Regress;

impl TrainTask<Linear> for Regress {
    type Batch = (Tensor<2>, Tensor<2>);
    fn next_batch(
        &mut self,
        s: &TrainState,
        _: usize,
        _: usize,
    ) -> kiln_train::Result<(Self::Batch, BatchSize)> {
        let d = Device::flex().autodiff();
        let k = (s.step % 5) as f32;
        let x = Tensor::<1>::from_floats([1.0 + k, -0.5, 0.25 * k, 2.0, -1.0, 0.5 - k], &d)
            .reshape([2, 3]);
        let w = Tensor::<1>::from_floats([0.3, -1.2, 0.8, 2.0, 0.1, -0.7], &d).reshape([3, 2]);
        let y = x.clone().matmul(w).add_scalar(0.4);
        Ok((
            (x, y),
            BatchSize {
                samples: 2,
                tokens: 2,
            },
        ))
    }
    fn forward(&mut self, m: &Linear, (x, y): Self::Batch) -> kiln_train::Result<StepOutput> {
        Ok((m.forward(x) - y).powi_scalar(2).mean().into())
    }
    fn evaluate(
        &mut self,
        _: &Linear,
        _: &TrainState,
    ) -> kiln_train::Result<BTreeMap<String, f64>> {
        Ok(BTreeMap::new())
    }
    fn data_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn restore_data_state(&mut self, _: &serde_json::Value) -> kiln_train::Result<()> {
        Ok(())
    }
}

fn host(model: &Linear) -> BTreeMap<String, Vec<f32>> {
    float_params(model)
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(),
            )
        })
        .collect()
}

/// Records the model's weights at the run's last `AfterStep` (placed before SFA: the endpoint
/// SFA is about to merge) and the steps at which SFA reported a merge.
#[derive(Default)]
struct Recorder {
    endpoint: BTreeMap<String, Vec<f32>>,
    merged_at: Vec<u64>,
}

/// A shared handle to a [`Recorder`] (the trainer owns the boxed algorithm).
#[derive(Clone, Default)]
struct Shared(std::rc::Rc<std::cell::RefCell<Recorder>>);

impl Algorithm<Linear> for Shared {
    fn name(&self) -> &str {
        "recorder"
    }
    fn on_event(&mut self, event: Event, ctx: &mut Context<'_, Linear>) -> Result<(), String> {
        let mut r = self.0.borrow_mut();
        match event {
            Event::AfterStep if ctx.state.step == ctx.run.total_steps => {
                r.endpoint = host(ctx.model);
            }
            Event::BatchEnd if ctx.metrics.contains_key("sfa_merges") => {
                r.merged_at.push(ctx.state.step);
            }
            _ => {}
        }
        Ok(())
    }
}

fn fit(steps: u64, algorithms: &mut [Box<dyn Algorithm<Linear>>], model: Linear) -> Linear {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TrainerConfig::new(
        format!("{steps}ba").parse().unwrap(),
        OptimizerConfig::adamw(0.05, 0.0),
    );
    c.progress_bar = false;
    Trainer::new(c, dir.path())
        .fit(model, &mut Regress, algorithms, &device)
        .unwrap()
        .model
}

fn start() -> Linear {
    // Fixed values, not the device's generator: the tests of this binary run in parallel
    // threads and burn's generator is per process, so a seeded init could interleave with
    // another test's draws and differ between two calls.
    let device = Device::flex().autodiff();
    let mut l = LinearConfig::new(3, 2).init(&device);
    let values = |n: usize, k: f32| -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + k) * 0.7).sin() * 0.6).collect()
    };
    let (w, b) = (values(6, 1.0), values(2, 11.0));
    l.weight = l.weight.map(|_| {
        Tensor::<1>::from_floats(w.as_slice(), &device)
            .reshape([3, 2])
            .require_grad()
    });
    l.bias = l
        .bias
        .map(|b0| b0.map(|_| Tensor::<1>::from_floats(b.as_slice(), &device).require_grad()));
    l
}

#[test]
fn sfa_with_p_1_is_wise_ft_of_the_endpoints_bit_for_bit() {
    let base = start();
    let theta_o = host(&base);
    let rec = Shared::default();
    let beta = 0.3;
    let mut algorithms: Vec<Box<dyn Algorithm<Linear>>> = vec![
        Box::new(rec.clone()),
        Box::new(Sfa::new(beta, 1.0, SfaAnchor::PrevTaskEnd).unwrap()),
    ];
    let merged = host(&fit(12, &mut algorithms, base));
    let rec = rec.0.borrow();
    assert_eq!(rec.merged_at, [12], "p = 1: one merge, at the end");
    for (name, end) in &rec.endpoint {
        // kiln merge's WiSE-FT with α = 1 − β, in f32
        let mut want = vec![0.0f32; end.len()];
        kiln_merging::methods::linear::wise_ft((1.0 - beta) as f32, &theta_o[name], end, &mut want);
        assert_eq!(merged[name], want, "{name}");
        assert_ne!(merged[name], *end, "{name}: the merge moved it");
    }
}

#[test]
fn sfa_merges_every_ceil_p_t_steps_and_at_the_end() {
    for (steps, p, want) in [
        (10, 0.25, vec![3, 6, 9, 10]),
        (10, 0.1, (1..=10).collect::<Vec<u64>>()),
        (8, 0.5, vec![4, 8]),
        (7, 0.05, (1..=7).collect()),
    ] {
        let rec = Shared::default();
        let sfa = Sfa::new(0.5, p, SfaAnchor::PrevTaskEnd).unwrap();
        assert_eq!(sfa.period(steps), (p * steps as f64).ceil() as u64);
        let mut algorithms: Vec<Box<dyn Algorithm<Linear>>> =
            vec![Box::new(sfa), Box::new(rec.clone())];
        fit(steps, &mut algorithms, start());
        assert_eq!(rec.0.borrow().merged_at, want, "T {steps}, p {p}");
    }
    // β = 1 returns to the anchor at every merge: the task's result is its start.
    let base = start();
    let want = host(&base);
    let mut algorithms: Vec<Box<dyn Algorithm<Linear>>> = vec![Box::new(
        Sfa::new(1.0, 0.5, SfaAnchor::PrevTaskEnd).unwrap(),
    )];
    assert_eq!(host(&fit(6, &mut algorithms, base)), want);
    // β = 0 never changes anything: the same weights as without SFA.
    let plain = host(&fit(6, &mut [], start()));
    let mut algorithms: Vec<Box<dyn Algorithm<Linear>>> = vec![Box::new(
        Sfa::new(0.0, 0.2, SfaAnchor::PrevTaskEnd).unwrap(),
    )];
    assert_eq!(host(&fit(6, &mut algorithms, start())), plain);
    // Bad settings are refused.
    assert!(Sfa::new(1.5, 0.5, SfaAnchor::PrevTaskEnd).is_err());
    assert!(Sfa::new(0.5, 0.0, SfaAnchor::PrevTaskEnd).is_err());
    assert!(Sfa::new(0.5, 1.5, SfaAnchor::LastMerge).is_err());
}

#[test]
fn the_anchor_is_the_start_of_each_task_or_the_last_merge() {
    // Two tasks with one SFA object: task 2 averages towards task 1's result.
    let mut algorithms: Vec<Box<dyn Algorithm<Linear>>> = vec![Box::new(
        Sfa::new(1.0, 1.0, SfaAnchor::PrevTaskEnd).unwrap(),
    )];
    let first = fit(5, &mut algorithms, start());
    // β = 1: each task's result is its start; task 2 starts from task 1's result
    assert_eq!(host(&fit(5, &mut algorithms, first.clone())), host(&first));
    // A rolling anchor differs from the fixed one once there are several merges.
    let run = |anchor| {
        let mut a: Vec<Box<dyn Algorithm<Linear>>> =
            vec![Box::new(Sfa::new(0.5, 0.25, anchor).unwrap())];
        host(&fit(12, &mut a, start()))
    };
    assert_ne!(run(SfaAnchor::PrevTaskEnd), run(SfaAnchor::LastMerge));
}

/// The paper's motivation: averaging every step with β = ηλ is, to first order in η, one SGD step
/// on the loss plus (λ/2)‖θ − θ_o‖². On a quadratic, ½‖θ − c‖², the two trajectories differ by
/// O(η²) per step, so over a fixed time t = kη by O(η): halving η halves the gap.
#[test]
fn sfa_every_step_tracks_l2_regularised_sgd() {
    let device = Device::flex();
    let theta_o = [0.5f32, -1.0, 2.0, 0.0, 1.5, -0.5];
    let c = [2.0f32, 1.0, -1.0, 3.0, 0.0, 0.5];
    let lambda = 0.8;
    let gap = |eta: f64| {
        let layer = |v: &[f32]| {
            let mut l = LinearConfig::new(3, 2).with_bias(false).init(&device);
            l.weight = l
                .weight
                .map(|_| Tensor::<1>::from_floats(v, &device).reshape([3, 2]));
            l
        };
        let anchor: BTreeMap<String, Tensor<1>> = BTreeMap::from([(
            "weight".to_owned(),
            Tensor::<1>::from_floats(theta_o.as_slice(), &device),
        )]);
        let (mut sfa, mut l2) = (theta_o.to_vec(), theta_o.to_vec());
        let steps = (1.0 / eta).round() as usize;
        let mut worst = 0.0f64;
        for _ in 0..steps {
            // SFA: an SGD step on the task loss, then θ ← β·θ_o + (1 − β)·θ with β = ηλ
            let stepped: Vec<f32> = sfa
                .iter()
                .zip(&c)
                .map(|(t, c)| t - eta as f32 * (t - c))
                .collect();
            let merged = Sfa::average(layer(&stepped), &anchor, eta * lambda);
            sfa = host(&merged)["weight"].clone();
            // L2 SGD: one step on ½‖θ − c‖² + (λ/2)‖θ − θ_o‖²
            l2 = l2
                .iter()
                .zip(&c)
                .zip(&theta_o)
                .map(|((t, c), o)| t - eta as f32 * ((t - c) + lambda as f32 * (t - o)))
                .collect();
            let d = sfa
                .iter()
                .zip(&l2)
                .map(|(a, b)| f64::from((a - b).abs()))
                .fold(0.0, f64::max);
            worst = worst.max(d);
        }
        worst
    };
    let (g1, g2) = (gap(0.02), gap(0.01));
    assert!(g1 < 0.05, "the trajectories stay close: {g1}");
    let ratio = g1 / g2;
    assert!(
        (1.6..2.5).contains(&ratio),
        "the gap is O(η) over a fixed time: {g1} at η = 0.02, {g2} at η = 0.01 (ratio {ratio})"
    );
}

#[test]
fn the_l2_anchor_adds_its_penalty_and_pulls_towards_the_start() {
    // The penalty's value, computed by hand on the host.
    let base = start();
    let moved = kiln_train::params::map_float_params(base.clone(), |_, t| t.add_scalar(0.5));
    for (scale, c) in [(PenaltyScale::Half, 0.5), (PenaltyScale::Full, 1.0)] {
        let mut l2 = L2Anchor::new(0.2, scale).unwrap();
        // the anchor is the model at FitStart
        let state = TrainState::default();
        let run = kiln_train::RunPlan {
            size: kiln_schedules::RunSize::new(kiln_schedules::Duration::batches(1)),
            total_steps: 1,
        };
        let mut metrics = BTreeMap::new();
        let mut model = base.clone();
        <L2Anchor as Algorithm<Linear>>::on_event(
            &mut l2,
            Event::FitStart,
            &mut Context {
                state: &state,
                run: &run,
                model: &mut model,
                output: None,
                metrics: &mut metrics,
            },
        )
        .unwrap();
        let n: usize = host(&base).values().map(Vec::len).sum();
        let want = c * 0.2 * n as f64 * 0.25;
        let got = f64::from(l2.penalty(&moved).unwrap().into_scalar::<f32>());
        assert!((got - want).abs() < 1e-5, "{scale:?}: {got} vs {want}");
        assert_eq!(l2.penalty(&base).unwrap().into_scalar::<f32>(), 0.0);
    }
    // A strong pull keeps the trained weights nearer the start than plain training does.
    let distance = |m: &Linear| {
        let (a, b) = (host(m), host(&start()));
        a.iter()
            .map(|(k, v)| {
                v.iter()
                    .zip(&b[k])
                    .map(|(x, y)| f64::from(x - y).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt()
    };
    let plain = distance(&fit(30, &mut [], start()));
    let mut algorithms: Vec<Box<dyn Algorithm<Linear>>> =
        vec![Box::new(L2Anchor::new(50.0, PenaltyScale::Half).unwrap())];
    let pulled = distance(&fit(30, &mut algorithms, start()));
    assert!(pulled < 0.5 * plain, "{pulled} vs {plain}");
    assert!(L2Anchor::new(-1.0, PenaltyScale::Half).is_err());
    assert!(L2Anchor::new(f64::NAN, PenaltyScale::Full).is_err());
}

fn ema_fixture() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn ema_decay_is_diffusers_get_decay_and_composer_smoothing() {
    use kiln_train::algorithms::{DiffusersDecay, EmaDecay};
    let f = ema_fixture();
    let cases = f["diffusers_decay"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let warmup = case["use_warmup"].as_bool().unwrap();
        let after = case["update_after_step"].as_u64().unwrap();
        let decay = EmaDecay::Diffusers(DiffusersDecay {
            use_warmup: warmup,
            update_after_step: after,
            ..Default::default()
        });
        let bits = case["decay_bits"].as_array().unwrap();
        assert_eq!(bits.len(), 2001);
        for (step, want) in bits
            .iter()
            .map(|b| f64::from_bits(b.as_u64().unwrap()))
            .enumerate()
        {
            assert_eq!(
                decay.decay(step as u64),
                want,
                "warmup {warmup}, update_after_step {after}, step {step}"
            );
        }
    }
    assert_eq!(
        EmaDecay::composer_half_life(50.0, 1.0).decay(1),
        f64::from_bits(f["composer_smoothing_50ba_bits"].as_u64().unwrap())
    );
}

/// Drives an `Ema` over fixed weight snapshots (a Linear without bias holding them), as the
/// trainer would after each step.
fn ema_trajectory(
    ema: &mut kiln_train::algorithms::Ema<Linear>,
    snapshots: &[Vec<f64>],
) -> Vec<Vec<f32>> {
    let device = Device::flex().autodiff();
    let layer = |v: &[f64]| {
        let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
        let mut l = LinearConfig::new(3, 2).with_bias(false).init(&device);
        l.weight = l.weight.map(|_| {
            Tensor::<1>::from_floats(v.as_slice(), &device)
                .reshape([3, 2])
                .require_grad()
        });
        l
    };
    let run = kiln_train::RunPlan {
        size: kiln_schedules::RunSize::new(kiln_schedules::Duration::batches(100)),
        total_steps: 100,
    };
    let mut out = Vec::new();
    for (i, s) in snapshots.iter().enumerate() {
        let mut model = layer(s);
        let state = TrainState {
            step: i as u64,
            ..TrainState::default()
        };
        let mut metrics = BTreeMap::new();
        let event = if i == 0 {
            Event::FitStart
        } else {
            Event::AfterStep
        };
        ema.on_event(
            event,
            &mut Context {
                state: &state,
                run: &run,
                model: &mut model,
                output: None,
                metrics: &mut metrics,
            },
        )
        .unwrap();
        if i > 0 {
            out.push(
                ema.shadow()["weight"]
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap(),
            );
        }
    }
    out
}

#[test]
fn ema_updates_are_diffusers_and_composer_bit_for_bit() {
    use kiln_train::algorithms::{DiffusersDecay, Ema, EmaDecay};
    let f = ema_fixture();
    for (key, decay) in [
        (
            "diffusers_trajectory",
            EmaDecay::Diffusers(DiffusersDecay {
                decay: 0.9,
                update_after_step: 2,
                use_warmup: true,
                ..Default::default()
            }),
        ),
        ("composer_trajectory", EmaDecay::Composer { smoothing: 0.8 }),
    ] {
        let t = &f[key];
        let snapshots: Vec<Vec<f64>> = t["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        let mut ema =
            Ema::<Linear>::new(decay, kiln_schedules::Duration::batches(0), 1, false).unwrap();
        let got = ema_trajectory(&mut ema, &snapshots);
        let want: Vec<Vec<f32>> = t["shadows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| floats(s).into_iter().map(|x| x as f32).collect())
            .collect();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{key}: shadow after update {}", i + 1);
        }
        assert_eq!(ema.updates(), snapshots.len() as u64 - 1);
    }
}

type Weights = BTreeMap<String, Vec<f32>>;

/// Records the weights each evaluation sees.
struct Seen(std::rc::Rc<std::cell::RefCell<Vec<Weights>>>);

impl TrainTask<Linear> for Seen {
    type Batch = (Tensor<2>, Tensor<2>);
    fn next_batch(
        &mut self,
        s: &TrainState,
        m: usize,
        n: usize,
    ) -> kiln_train::Result<(Self::Batch, BatchSize)> {
        Regress.next_batch(s, m, n)
    }
    fn forward(&mut self, m: &Linear, b: Self::Batch) -> kiln_train::Result<StepOutput> {
        Regress.forward(m, b)
    }
    fn evaluate(
        &mut self,
        m: &Linear,
        _: &TrainState,
    ) -> kiln_train::Result<BTreeMap<String, f64>> {
        self.0.borrow_mut().push(host(m));
        Ok(BTreeMap::new())
    }
    fn data_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn restore_data_state(&mut self, _: &serde_json::Value) -> kiln_train::Result<()> {
        Ok(())
    }
}

/// The shadow must move (diffusers#5783: a training script never called `step()`), evaluations
/// see the averaged weights, and training goes on with the raw ones.
#[test]
fn the_ema_shadow_moves_and_is_swapped_in_for_evaluation_only() {
    use kiln_train::algorithms::{DiffusersDecay, Ema, EmaDecay};
    let device = Device::flex().autodiff();
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut task = Seen(seen.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut c = TrainerConfig::new("10ba".parse().unwrap(), OptimizerConfig::adamw(0.05, 0.0));
    c.progress_bar = false;
    c.eval_interval = Some("5ba".parse().unwrap());
    let initial = start();
    let plain = host(
        &Trainer::new(c.clone(), dir.path().join("plain"))
            .fit(start(), &mut Regress, &mut [], &device)
            .unwrap()
            .model,
    );
    let ema = Ema::<Linear>::new(
        EmaDecay::Composer { smoothing: 0.6 },
        "0ba".parse().unwrap(),
        1,
        true,
    )
    .unwrap();
    let mut algorithms: Vec<Box<dyn Algorithm<Linear>>> = vec![Box::new(ema)];
    let out = Trainer::new(c, dir.path().join("ema"))
        .fit(initial.clone(), &mut task, &mut algorithms, &device)
        .unwrap();
    // the raw weights trained as without the EMA
    assert_eq!(host(&out.model), plain);
    let seen = seen.borrow();
    assert_eq!(seen.len(), 2, "evaluations at steps 5 and 10");
    let last = &seen[1];
    assert_ne!(
        *last, plain,
        "the evaluation saw the averaged weights, not the raw ones"
    );
    assert_ne!(*last, host(&initial), "the shadow moved");
    // Bad settings are refused.
    assert!(
        Ema::<Linear>::new(
            EmaDecay::Composer { smoothing: 1.0 },
            "0ba".parse().unwrap(),
            1,
            false
        )
        .is_err()
    );
    assert!(
        Ema::<Linear>::new(
            EmaDecay::Diffusers(DiffusersDecay::default()),
            "0ba".parse().unwrap(),
            0,
            false
        )
        .is_err()
    );
}

/// Records the weights after every step (placed before the algorithm under test).
#[derive(Clone, Default)]
struct Steps(std::rc::Rc<std::cell::RefCell<Vec<Weights>>>);

impl Algorithm<Linear> for Steps {
    fn name(&self) -> &str {
        "steps"
    }
    fn on_event(&mut self, event: Event, ctx: &mut Context<'_, Linear>) -> Result<(), String> {
        if event == Event::AfterStep {
            self.0.borrow_mut().push(host(ctx.model));
        }
        Ok(())
    }
}

#[test]
fn swa_averages_every_interval_from_start_and_replaces_the_model_at_the_end() {
    use kiln_train::algorithms::Swa;
    let steps = Steps::default();
    let swa = Swa::<Linear>::new(
        "0.5dur".parse().unwrap(),
        "1.0dur".parse().unwrap(),
        "3ba".parse().unwrap(),
    )
    .unwrap();
    let mut algorithms: Vec<Box<dyn Algorithm<Linear>>> =
        vec![Box::new(steps.clone()), Box::new(swa)];
    let out = host(&fit(20, &mut algorithms, start()));
    // from step 10, every 3rd step: 10, 13, 16, 19 (Composer's step counter)
    let seen = steps.0.borrow();
    let picked = [10usize, 13, 16, 19];
    for (name, v) in &out {
        for (i, x) in v.iter().enumerate() {
            let mean = picked
                .iter()
                .map(|&s| f64::from(seen[s - 1][name][i]))
                .sum::<f64>()
                / picked.len() as f64;
            assert!(
                (f64::from(*x) - mean).abs() < 1e-6,
                "{name}[{i}]: {x} vs the mean of steps {picked:?}, {mean}"
            );
        }
    }
    assert_ne!(out, seen[19], "the model was replaced by the average");
    // Composer's defaults, and bad settings
    let _ = Swa::<Linear>::composer();
    assert!(
        Swa::<Linear>::new(
            "0.9dur".parse().unwrap(),
            "0.5dur".parse().unwrap(),
            "1ba".parse().unwrap()
        )
        .is_err()
    );
    assert!(
        Swa::<Linear>::new(
            "0.5dur".parse().unwrap(),
            "9ep".parse().unwrap(),
            "1ba".parse().unwrap()
        )
        .is_err()
    );
}

#[test]
fn in_a_task_sequence_swa_averages_each_task_and_ema_goes_on() {
    use kiln_train::algorithms::{Ema, EmaDecay, Swa};
    let steps = Steps::default();
    let swa = Swa::<Linear>::new(
        "0.5dur".parse().unwrap(),
        "1.0dur".parse().unwrap(),
        "3ba".parse().unwrap(),
    )
    .unwrap();
    // an EMA updated every 3 steps from step 2 of task 1: task 2's steps count from 1 again
    let ema = Ema::<Linear>::new(
        EmaDecay::Composer { smoothing: 0.5 },
        "2ba".parse().unwrap(),
        3,
        true,
    )
    .unwrap();
    let mut algorithms: Vec<Box<dyn Algorithm<Linear>>> =
        vec![Box::new(steps.clone()), Box::new(swa), Box::new(ema)];
    let task1 = fit(10, &mut algorithms, start());
    let out = host(&fit(10, &mut algorithms, task1));
    // task 2 alone: from its step 5, every 3rd: 5 and 8 (the 15th and 18th steps recorded)
    let seen = steps.0.borrow();
    assert_eq!(seen.len(), 20);
    for (name, v) in &out {
        for (i, x) in v.iter().enumerate() {
            let mean = (f64::from(seen[14][name][i]) + f64::from(seen[17][name][i])) / 2.0;
            assert!(
                (f64::from(*x) - mean).abs() < 1e-6,
                "{name}[{i}]: {x} vs the mean of task 2's steps 5 and 8, {mean}"
            );
        }
    }
}
