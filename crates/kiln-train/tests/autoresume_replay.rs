//! Experience replay survives a SIGKILL: a tiny GPT-2 trained through a two-task sequence
//! (`CausalLmTask`, replay of task 1's sequences during task 2) is killed in the middle of task 2,
//! restarted, and must log exactly the losses and end with exactly the weights of an
//! uninterrupted run — the memory, the ids seen and the draws come back from the checkpoint.
//!
//! Its own harness (`harness = false`): without arguments it is the test, which starts itself as
//! a child process (`child RUN_DIR SLOW_MS`) so the kill is a real SIGKILL of a real process.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration as Wall, Instant};

use kiln_checkpoint::{Checkpoint, Dtype};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use kiln_schedules::Duration;
use kiln_train::algorithms::{MemoryEntry, Replay, ReplayPolicy, ReplaySource};
use kiln_train::burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_train::tasks::CausalLmTask;
use kiln_train::{Algorithm, Context, Event, OptimizerConfig, Trainer, TrainerConfig};
use serde_json::Value;

const STEPS: u64 = 12;

fn seqs(n: u32, salt: u32) -> Vec<Vec<u32>> {
    (0..n)
        .map(|s| {
            (0..10u32)
                .map(|i| (s * 5 + i * (3 + salt) + salt) % 61)
                .collect()
        })
        .collect()
}

/// Task k's sequences, re-read by id.
struct Source(Vec<Vec<Vec<u32>>>, Device);

impl ReplaySource<Gpt2LmHead> for Source {
    fn loss(&mut self, m: &Gpt2LmHead, ex: &[MemoryEntry]) -> Result<Tensor<1>, String> {
        let rows: Vec<i64> = ex
            .iter()
            .flat_map(|&(t, id)| {
                self.0[t as usize][id as usize]
                    .iter()
                    .map(|&x| i64::from(x))
            })
            .collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(rows, [ex.len(), 10]), &self.1);
        Ok(m.loss(ids, None))
    }
}

/// Sleeps after each step, so the parent can kill the process between checkpoints.
struct Slow(u64);

impl<M> Algorithm<M> for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn on_event(&mut self, e: Event, _: &mut Context<'_, M>) -> Result<(), String> {
        if e == Event::BatchEnd {
            std::thread::sleep(Wall::from_millis(self.0));
        }
        Ok(())
    }
}

fn child(run_dir: &Path, slow_ms: u64) {
    let device = Device::flex().autodiff();
    let config = Gpt2Config {
        vocab_size: 61,
        n_positions: 16,
        ..Gpt2Config::tiny()
    };
    let data = [seqs(24, 0), seqs(24, 1)];
    let mut algorithms: Vec<Box<dyn Algorithm<Gpt2LmHead>>> = vec![
        Box::new(Slow(slow_ms)),
        Box::new(
            Replay::new(
                6,
                Some(2),
                ReplayPolicy::Reservoir,
                3,
                Box::new(Source(data.to_vec(), device.clone())),
            )
            .unwrap(),
        ),
    ];
    let mut trainer =
        TrainerConfig::new(Duration::batches(STEPS), OptimizerConfig::adamw(2e-3, 0.0));
    trainer.save_interval = Some(Duration::batches(3));
    trainer.seed = 4;
    trainer.progress_bar = false;
    device.seed(9);
    let mut model = Gpt2LmHead::init(&config, &device).unwrap();
    for (k, set) in data.iter().enumerate() {
        let mut task =
            CausalLmTask::new(set.clone(), set[..4].to_vec(), 4, k as u64, &device).unwrap();
        // task 1 in its own directory; task 2 (the one killed) in the run directory
        let dir = if k == 0 {
            run_dir.join("task1")
        } else {
            run_dir.to_owned()
        };
        model = Trainer::new(trainer.clone(), dir)
            .fit(model, &mut task, &mut algorithms, &device)
            .unwrap()
            .model;
    }
    model.save(run_dir.join("final"), Dtype::F32, true).unwrap();
}

fn train_lines(run_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|mut l| {
            let o = l.as_object_mut().unwrap();
            o.remove("tokens_per_s");
            o.remove("samples_per_s");
            l
        })
        .collect()
}

/// Training lines logged so far by a running child, counted without parsing (the child may be
/// writing the next line while it is read).
fn logged_train_steps(run_dir: &Path) -> usize {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("\"split\":\"train\""))
                .count()
        })
        .unwrap_or(0)
}

fn spawn(run_dir: &Path, slow_ms: u64) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["child", run_dir.to_str().unwrap(), &slow_ms.to_string()]);
    c
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        child(Path::new(&args[2]), args[3].parse().unwrap());
        return;
    }
    if args.iter().any(|a| a == "--list") {
        println!("autoresume_replay: test");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    let out = spawn(&reference, 0).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = train_lines(&reference);
    assert!(
        want.iter()
            .filter(|l| l["split"] == "train")
            .all(|l| l["replay_memory"] == 6.0),
        "task 2 replays a memory of 6 sequences from task 1"
    );

    let killed = tmp.path().join("killed");
    let mut child = spawn(&killed, 150)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if logged_train_steps(&killed) >= 7 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        assert!(started.elapsed() < Wall::from_secs(600), "timed out");
        std::thread::sleep(Wall::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL, in the middle of task 2
    child.wait().unwrap();
    let out = spawn(&killed, 0).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        train_lines(&killed),
        want,
        "the resumed run logs what the uninterrupted one did"
    );
    let (a, b) = (
        Checkpoint::open(reference.join("final")).unwrap(),
        Checkpoint::open(killed.join("final")).unwrap(),
    );
    let mut n = 0;
    for name in a.names() {
        assert_eq!(
            a.tensor(name).unwrap().data,
            b.tensor(name).unwrap().data,
            "{name}"
        );
        n += 1;
    }
    assert!(n > 5);
    println!("autoresume_replay: ok (killed in task 2, {n} final weights identical)");
}
