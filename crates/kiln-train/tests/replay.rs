//! Experience replay (`kiln_train::algorithms::Replay`): the memory is a seeded, deterministic
//! random subset (χ² tests on inclusion and on the memory batches), the shares of
//! `ExperienceBalanced`, the mixed loss in a two-task run (replay retains task 1) and a resumed
//! run equal to an uninterrupted one.

use std::collections::BTreeMap;

use kiln_schedules::Duration;
use kiln_train::algorithms::{MemoryEntry, Replay, ReplayPolicy, ReplaySource};
use kiln_train::burn::nn::{Linear, LinearConfig};
use kiln_train::burn::prelude::*;
use kiln_train::params::float_params;
use kiln_train::{
    Algorithm, BatchSize, Context, Event, OptimizerConfig, StepOutput, TrainState, TrainTask,
    Trainer, TrainerConfig,
};

struct NoSource;
impl ReplaySource<Linear> for NoSource {
    fn loss(&mut self, _: &Linear, _: &[MemoryEntry]) -> Result<Tensor<1>, String> {
        Err("not used".into())
    }
}

fn replay(mem: usize, policy: ReplayPolicy, seed: u64) -> Replay<Linear> {
    Replay::new(mem, None, policy, seed, Box::new(NoSource)).unwrap()
}

/// χ² statistic of `counts` against equal expected counts.
fn chi2(counts: &[f64]) -> f64 {
    let e = counts.iter().sum::<f64>() / counts.len() as f64;
    counts.iter().map(|c| (c - e).powi(2) / e).sum()
}

#[test]
fn the_memory_is_deterministic_per_seed() {
    for policy in [ReplayPolicy::ExperienceBalanced, ReplayPolicy::Reservoir] {
        let run = |seed| {
            let mut r = replay(12, policy, seed);
            r.end_task(0..50);
            // the order ids arrive in does not matter
            r.end_task((100..140).rev());
            r.memory()
        };
        assert_eq!(run(3), run(3), "{policy:?}");
        assert_ne!(run(3), run(4), "{policy:?}");
        assert_eq!(run(3).len(), 12);
    }
}

#[test]
fn experience_balanced_shares_the_memory_equally_and_shrinks_by_weight() {
    let mut r = replay(10, ReplayPolicy::ExperienceBalanced, 1);
    r.end_task(0..100);
    let first = r.memory();
    assert_eq!(first.len(), 10);
    r.end_task(0..100); // the same ids in another task are other examples
    r.end_task(0..3); // a task smaller than its share keeps all it has
    let mem = r.memory();
    let count = |t: u32| mem.iter().filter(|e| e.0 == t).count();
    // 10 over 3 tasks: 4 + 3 + 3, but task 2 has only 3 examples
    assert_eq!((count(0), count(1), count(2)), (4, 3, 3));
    // task 0's share is the top of what it held
    let kept: Vec<MemoryEntry> = mem.iter().filter(|e| e.0 == 0).copied().collect();
    assert_eq!(kept, first[..4]);
}

#[test]
fn reservoir_inclusion_is_uniform_over_the_stream() {
    // 2 tasks of 60 and 40 examples, memory 20: each example is kept with probability 1/5
    let seeds = 2000;
    let mut counts = vec![0.0; 100];
    for seed in 0..seeds {
        let mut r = replay(20, ReplayPolicy::Reservoir, seed);
        r.end_task(0..60);
        r.end_task(0..40);
        for (t, id) in r.memory() {
            counts[t as usize * 60 + id as usize] += 1.0;
        }
    }
    // 99 degrees of freedom: P(χ² > 148.2) = 0.001
    let x = chi2(&counts);
    assert!(x < 148.2, "χ² {x}");
    // and the tasks' shares follow their sizes (60:40), unlike ExperienceBalanced
    let share0: f64 = counts[..60].iter().sum::<f64>() / (20.0 * seeds as f64);
    assert!((share0 - 0.6).abs() < 0.01, "{share0}");
}

#[test]
fn memory_batches_are_uniform_draws_without_replacement() {
    let mut r = replay(20, ReplayPolicy::Reservoir, 9);
    r.end_task(0..20);
    let index: BTreeMap<MemoryEntry, usize> = r
        .memory()
        .into_iter()
        .enumerate()
        .map(|(i, e)| (e, i))
        .collect();
    let mut counts = vec![0.0; 20];
    for step in 0..2000 {
        for draw in 0..2 {
            let b = r.draw(step, draw, 5);
            let distinct: std::collections::BTreeSet<_> = b.iter().collect();
            assert_eq!(distinct.len(), 5, "without replacement");
            for e in b {
                counts[index[&e]] += 1.0;
            }
        }
    }
    assert_eq!(r.draw(7, 1, 5), r.draw(7, 1, 5), "seeded by step and draw");
    // 19 degrees of freedom: P(χ² > 43.82) = 0.001
    let x = chi2(&counts);
    assert!(x < 43.82, "χ² {x}");
}

#[test]
fn bad_settings_are_errors() {
    for (mem, b) in [(0, None), (5, Some(0))] {
        let e = Replay::<Linear>::new(mem, b, ReplayPolicy::Reservoir, 0, Box::new(NoSource))
            .unwrap_err()
            .to_string();
        assert!(e.contains("replay") && e.contains("at least 1"), "{e}");
    }
}

// --- in training ------------------------------------------------------------------------------

const N: u64 = 24;

fn x_of(id: u64) -> [f32; 2] {
    let k = id as f32;
    [(k * 0.37).sin(), (k * 0.91).cos()]
}

/// Task t: regress y = w_t·x on examples 0..N, 4 per step in a fixed cycle.
struct Task {
    w: [f32; 2],
}

fn task(t: usize) -> Task {
    Task {
        w: [[1.0, -2.0], [-1.5, 0.5]][t],
    }
}

fn mse(m: &Linear, w: [f32; 2], ids: &[u64]) -> Tensor<1> {
    let d = m.weight.val().device();
    let x: Vec<f32> = ids.iter().flat_map(|&i| x_of(i)).collect();
    let y: Vec<f32> = ids
        .iter()
        .map(|&i| {
            let x = x_of(i);
            w[0] * x[0] + w[1] * x[1]
        })
        .collect();
    let x = Tensor::<1>::from_floats(x.as_slice(), &d).reshape([ids.len(), 2]);
    let y = Tensor::<1>::from_floats(y.as_slice(), &d).reshape([ids.len(), 1]);
    (m.forward(x) - y).powi_scalar(2).mean()
}

impl TrainTask<Linear> for Task {
    type Batch = Vec<u64>;
    fn next_batch(
        &mut self,
        s: &TrainState,
        _: usize,
        _: usize,
    ) -> kiln_train::Result<(Vec<u64>, BatchSize)> {
        let ids = (0..4).map(|j| (s.step * 4 + j) % N).collect();
        Ok((
            ids,
            BatchSize {
                samples: 4,
                tokens: 4,
            },
        ))
    }
    fn forward(&mut self, m: &Linear, ids: Vec<u64>) -> kiln_train::Result<StepOutput> {
        Ok(StepOutput::new(mse(m, self.w, &ids)).with_example_ids(ids))
    }
    fn evaluate(
        &mut self,
        m: &Linear,
        _: &TrainState,
    ) -> kiln_train::Result<BTreeMap<String, f64>> {
        let all: Vec<u64> = (0..N).collect();
        let l = mse(&m.valid(), self.w, &all).into_scalar::<f32>() as f64;
        Ok(BTreeMap::from([("loss".into(), l)]))
    }
    fn data_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn restore_data_state(&mut self, _: &serde_json::Value) -> kiln_train::Result<()> {
        Ok(())
    }
}

/// Reads task t's examples again.
struct Source;
impl ReplaySource<Linear> for Source {
    fn loss(&mut self, m: &Linear, examples: &[MemoryEntry]) -> Result<Tensor<1>, String> {
        // every remembered example is task 0's here
        assert!(examples.iter().all(|e| e.0 == 0));
        let ids: Vec<u64> = examples.iter().map(|e| e.1).collect();
        Ok(mse(m, task(0).w, &ids))
    }
}

/// Stops the run (an error) after step `at`: a crash after a checkpoint.
struct StopAt(u64);
impl Algorithm<Linear> for StopAt {
    fn name(&self) -> &str {
        "stop"
    }
    fn on_event(&mut self, e: Event, ctx: &mut Context<'_, Linear>) -> Result<(), String> {
        if e == Event::Checkpoint && ctx.state.step == self.0 {
            return Err("stopped".into());
        }
        Ok(())
    }
}

fn start() -> Linear {
    let d = Device::flex().autodiff();
    let mut l = LinearConfig::new(2, 1).init(&d);
    l.weight = kiln_train::burn::module::Param::from_tensor(
        Tensor::<1>::from_floats([0.2, -0.1], &d).reshape([2, 1]),
    );
    l.bias = Some(kiln_train::burn::module::Param::from_tensor(
        Tensor::<1>::from_floats([0.05], &d),
    ));
    l
}

/// Two tasks of 12 steps (AdamW), replay on or off; task 2 optionally stopped at step `stop` and
/// resumed. Returns the final weights and task 1's loss at the end.
fn sequence(dir: &std::path::Path, with_replay: bool, stop: Option<u64>) -> (Vec<f32>, f64) {
    let d = Device::flex().autodiff();
    let mut config = TrainerConfig::new(Duration::batches(12), OptimizerConfig::adamw(0.05, 0.0));
    config.progress_bar = false;
    config.save_interval = Some(Duration::batches(3));
    let mut algorithms: Vec<Box<dyn Algorithm<Linear>>> = Vec::new();
    if with_replay {
        algorithms.push(Box::new(
            Replay::new(
                8,
                Some(4),
                ReplayPolicy::ExperienceBalanced,
                5,
                Box::new(Source),
            )
            .unwrap(),
        ));
    }
    let model = Trainer::new(config.clone(), dir.join("t0"))
        .fit(start(), &mut task(0), &mut algorithms, &d)
        .unwrap()
        .model;
    let mut t1 = task(1);
    let model = match stop {
        Some(at) => {
            algorithms.push(Box::new(StopAt(at)));
            let e = Trainer::new(config.clone(), dir.join("t1"))
                .fit(model.clone(), &mut t1, &mut algorithms, &d)
                .unwrap_err();
            assert!(e.to_string().contains("stopped"), "{e}");
            algorithms.pop();
            // a fresh process would rebuild the algorithms: the replay memory must come back
            // from the checkpoint, not from this object
            if with_replay {
                algorithms[0] = Box::new(
                    Replay::new(
                        8,
                        Some(4),
                        ReplayPolicy::ExperienceBalanced,
                        5,
                        Box::new(Source),
                    )
                    .unwrap(),
                );
            }
            let out = Trainer::new(config, dir.join("t1"))
                .fit(model, &mut t1, &mut algorithms, &d)
                .unwrap();
            assert_eq!(out.resumed_from, Some(at));
            out.model
        }
        None => {
            Trainer::new(config, dir.join("t1"))
                .fit(model, &mut t1, &mut algorithms, &d)
                .unwrap()
                .model
        }
    };
    let weights = float_params(&model)
        .into_iter()
        .flat_map(|(_, t)| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
        .collect();
    let first = task(0).evaluate(&model, &TrainState::default()).unwrap()["loss"];
    (weights, first)
}

#[test]
fn replay_retains_the_first_task_and_resumes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain_w, plain_forget) = sequence(&tmp.path().join("plain"), false, None);
    let (replay_w, replay_forget) = sequence(&tmp.path().join("replay"), true, None);
    assert_ne!(plain_w, replay_w);
    assert!(
        replay_forget < 0.8 * plain_forget,
        "task-1 loss after task 2: replay {replay_forget} vs plain {plain_forget}"
    );
    let (resumed_w, _) = sequence(&tmp.path().join("resumed"), true, Some(6));
    assert_eq!(
        resumed_w, replay_w,
        "the resumed run ends with the same weights"
    );
    // the log says what replay did
    let log = std::fs::read_to_string(tmp.path().join("replay/t1/metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["replay_memory"], 8.0, "{first}");
    assert!(first["replay_loss"].as_f64().unwrap() >= 0.0);
}
