//! Distillation in training: a tiny GPT-2 student distilled from a GPT-2 teacher through
//! kiln-train's `CausalLmTask` — the window's teacher-forward count is exact, the objective is
//! `ce_weight·CE + kd_weight·T²·KL`, a run stopped after a checkpoint and resumed ends bit for bit
//! where an uninterrupted one does, ensembles average or sample, and a vocabulary mismatch is
//! refused by name.

use kiln_distill::burn::tensor::{Device, Tensor};
use kiln_distill::gpt2::Gpt2Teacher;
use kiln_distill::{Distill, Divergence, Ensemble, EnsembleMode, KdLoss, Teacher, Window};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use kiln_schedules::Duration;
use kiln_train::params::float_params;
use kiln_train::tasks::CausalLmTask;
use kiln_train::{
    Algorithm, Context, Event, OptimizerConfig, StepOutput, TrainTask, Trainer, TrainerConfig,
};

fn config(vocab: usize) -> Gpt2Config {
    Gpt2Config {
        vocab_size: vocab,
        n_positions: 16,
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        ..Gpt2Config::tiny()
    }
}

fn seqs(n: usize, salt: u32) -> Vec<Vec<u32>> {
    (0..n as u32)
        .map(|s| (0..12u32).map(|i| (s * 7 + i * 3 + salt) % 97).collect())
        .collect()
}

/// burn's generator is per process and the trainer reseeds it every step: tests that build
/// models from it or train run one at a time (they run in parallel threads otherwise, and an
/// interleaved seed or draw would change a model).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn model(seed: u64, vocab: usize) -> Gpt2LmHead {
    let d = Device::flex().autodiff();
    d.seed(seed);
    let m = Gpt2LmHead::init(&config(vocab), &d).unwrap();
    // materialise the lazy initialisation now, from this seed
    let _ = float_params(&m);
    m
}

fn loss() -> KdLoss {
    KdLoss {
        ce_weight: 0.5,
        kd_weight: 0.5,
        temperature: 2.0,
        divergence: Divergence::ForwardKl,
    }
}

/// Stops the run (an error) after the checkpoint at step `at`.
struct StopAt(u64);
impl<M> Algorithm<M> for StopAt {
    fn name(&self) -> &str {
        "stop"
    }
    fn on_event(&mut self, e: Event, ctx: &mut Context<'_, M>) -> Result<(), String> {
        if e == Event::Checkpoint && ctx.state.step == self.0 {
            return Err("stopped".into());
        }
        Ok(())
    }
}

fn run(
    dir: &std::path::Path,
    window: Window,
    stop: Option<u64>,
) -> (Vec<Vec<f32>>, Vec<serde_json::Value>) {
    let d = Device::flex().autodiff();
    let teacher = model(1, 97);
    let mut tc = TrainerConfig::new(Duration::batches(20), OptimizerConfig::adamw(1e-3, 0.0));
    tc.progress_bar = false;
    tc.save_interval = Some(Duration::batches(5));
    tc.seed = 3;
    let make = || -> Vec<Box<dyn Algorithm<Gpt2LmHead>>> {
        vec![Box::new(
            Distill::new(loss(), Box::new(Gpt2Teacher::new(teacher.clone())), window).unwrap(),
        )]
    };
    let mut task = CausalLmTask::new(seqs(16, 0), seqs(4, 5), 4, 0, &d).unwrap();
    let mut algorithms = make();
    if let Some(at) = stop {
        algorithms.push(Box::new(StopAt(at)));
        let e = Trainer::new(tc.clone(), dir)
            .fit(model(2, 97), &mut task, &mut algorithms, &d)
            .unwrap_err();
        assert!(e.to_string().contains("stopped"));
        algorithms = make(); // a new process: the counter must come back from the checkpoint
        task = CausalLmTask::new(seqs(16, 0), seqs(4, 5), 4, 0, &d).unwrap();
    }
    let out = Trainer::new(tc, dir)
        .fit(model(2, 97), &mut task, &mut algorithms, &d)
        .unwrap();
    let weights = float_params(&out.model)
        .into_iter()
        .map(|(_, t)| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
        .collect();
    let log = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["split"] == "train")
        .collect();
    (weights, log)
}

#[test]
fn the_window_counts_teacher_forwards_exactly_and_a_resumed_run_is_identical() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    // steps 5..=15 of 20, every 2nd: 5, 7, 9, 11, 13, 15
    let window = Window {
        start: "0.25dur".parse().unwrap(),
        end: "0.75dur".parse().unwrap(),
        every: 2,
    };
    let (w, log) = run(&tmp.path().join("a"), window, None);
    let distilled: Vec<u64> = log
        .iter()
        .filter(|l| l.get("kd_loss").is_some())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(distilled, [5, 7, 9, 11, 13, 15]);
    assert_eq!(log.last().unwrap()["step"], 20);
    let forwards = log
        .iter()
        .filter_map(|l| {
            l.get("teacher_forwards")
                .and_then(serde_json::Value::as_f64)
        })
        .fold(0.0, f64::max);
    assert_eq!(forwards, 6.0);
    assert!(log.iter().any(|l| l.get("teacher_flops").is_some()));
    // stopped after the step-10 checkpoint and resumed: the same weights and losses
    let (w2, log2) = run(&tmp.path().join("b"), window, Some(10));
    assert_eq!(w, w2, "weights after the resume");
    let losses = |l: &[serde_json::Value]| {
        l.iter()
            .map(|x| x["loss"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&log), losses(&log2));
    let counted = |l: &[serde_json::Value]| {
        l.iter()
            .map(|x| x.get("teacher_forwards").cloned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        counted(&log),
        counted(&log2),
        "the teacher-forward counter resumes"
    );
}

#[test]
fn the_objective_is_the_weighted_sum_and_distillation_moves_the_student() {
    let _serial = serial();
    // one micro-batch by hand: ce_weight·CE + kd_weight·T²·KL(t‖s)
    let d = Device::flex().autodiff();
    let (student, teacher) = (model(2, 97), model(1, 97));
    let mut task = CausalLmTask::new(seqs(4, 0), seqs(4, 5), 4, 0, &d).unwrap();
    let (batch, _) = task.next_batch(&Default::default(), 0, 1).unwrap();
    let out = task.forward(&student, batch).unwrap();
    let ce = out.loss.clone().into_scalar::<f32>() as f64;
    let p = out.predictions.clone().unwrap();
    let mut t = Gpt2Teacher::new(teacher);
    let tl = t.logits(&out, &d, 0).unwrap();
    let w = p.targets.clone().not_equal_elem(-100).float();
    let kl = kiln_distill::divergence(p.logits.clone(), tl, Some(w), 2.0, Divergence::ForwardKl)
        .unwrap()
        .into_scalar::<f32>() as f64;
    let want = 0.5 * ce + 0.5 * 4.0 * kl;
    let got = loss()
        .combine(
            out.loss.clone(),
            p.logits,
            t.logits(&out, &d, 1).unwrap(),
            Some(p.targets.not_equal_elem(-100).float()),
        )
        .unwrap()
        .into_scalar::<f32>() as f64;
    assert!((got - want).abs() < 1e-5 * want.abs(), "{got} vs {want}");
    assert!(kl > 0.0);
}

/// A teacher that answers a constant row (to check ensembles).
struct Constant(f32);
impl Teacher for Constant {
    fn logits(&mut self, o: &StepOutput, d: &Device, _: u64) -> Result<Tensor<2>, String> {
        let n = o.predictions.as_ref().unwrap().logits.dims()[0];
        Ok(Tensor::<2>::ones([n, 3], d).mul_scalar(self.0))
    }
}

fn output(n: usize) -> StepOutput {
    let d = Device::flex();
    StepOutput::new(Tensor::<1>::zeros([1], &d)).with_predictions(
        kiln_train::Predictions::per_example(
            Tensor::<2>::zeros([n, 3], &d),
            Tensor::zeros([n], &d),
        ),
    )
}

#[test]
fn ensembles_average_their_members_or_sample_one() {
    let _serial = serial();
    let d = Device::flex();
    let members = || -> Vec<Box<dyn Teacher>> {
        vec![
            Box::new(Constant(1.0)),
            Box::new(Constant(2.0)),
            Box::new(Constant(6.0)),
        ]
    };
    let mut avg = Ensemble::new(members(), EnsembleMode::Average).unwrap();
    let v = avg
        .logits(&output(2), &d, 0)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(v.iter().all(|&x| (x - 3.0).abs() < 1e-6), "{v:?}");
    let mut one = Ensemble::new(members(), EnsembleMode::Sample { seed: 4 }).unwrap();
    let mut seen = [0usize; 3];
    for call in 0..300 {
        let v = one
            .logits(&output(1), &d, call)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let k = [1.0, 2.0, 6.0].iter().position(|&c| c == v[0]).unwrap();
        assert_eq!(k, one.sampled(4, call), "the draw depends on the call only");
        seen[k] += 1;
    }
    assert!(
        seen.iter().all(|&c| c > 60),
        "each member is drawn: {seen:?}"
    );
    assert!(Ensemble::new(Vec::new(), EnsembleMode::Average).is_err());
}

#[test]
fn a_teacher_with_another_vocabulary_is_refused_by_name() {
    let _serial = serial();
    let d = Device::flex().autodiff();
    let student = model(2, 97);
    let mut task = CausalLmTask::new(seqs(4, 0), seqs(4, 5), 4, 0, &d).unwrap();
    let (batch, _) = task.next_batch(&Default::default(), 0, 1).unwrap();
    let out = task.forward(&student, batch).unwrap();
    let mut t = Gpt2Teacher::new(model(1, 101));
    let e = t.logits(&out, &d, 0).unwrap_err();
    assert!(e.contains("101") && e.contains("97"), "{e}");
    // and bad settings
    let bad = KdLoss {
        temperature: 0.0,
        ..loss()
    };
    assert!(Distill::new(bad, Box::new(Constant(1.0)), Window::always()).is_err());
    let w = Window {
        every: 0,
        ..Window::always()
    };
    assert!(Distill::new(loss(), Box::new(Constant(1.0)), w).is_err());
}
