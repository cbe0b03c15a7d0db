//! A distillation run killed with SIGKILL and restarted continues bit for bit — with a live GPT-2
//! teacher and with cached top-k logits: every logged loss, KD term and teacher-forward count, and
//! every final weight, equals an uninterrupted run's.
//!
//! Its own harness (`harness = false`): without arguments it is the test, which starts itself as
//! a child process (`child live|cached RUN_DIR SLOW_MS`) so the kill is a real SIGKILL.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration as Wall, Instant};

use kiln_checkpoint::{Checkpoint, Dtype};
use kiln_distill::gpt2::{Gpt2Teacher, capture};
use kiln_distill::{
    CacheSpec, Distill, Divergence, KdLoss, LogProbDtype, Missing, TopKCache, Window,
};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use kiln_schedules::Duration;
use kiln_train::burn::tensor::Device;
use kiln_train::tasks::CausalLmTask;
use kiln_train::{Algorithm, Context, Event, OptimizerConfig, Trainer, TrainerConfig};
use serde_json::Value;

fn seqs(n: u32) -> Vec<Vec<u32>> {
    (0..n)
        .map(|s| (0..10u32).map(|i| (s * 7 + i * 3 + 1) % 61).collect())
        .collect()
}

fn config() -> Gpt2Config {
    Gpt2Config {
        vocab_size: 61,
        n_positions: 16,
        ..Gpt2Config::tiny()
    }
}

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

fn child(mode: &str, run_dir: &Path, slow_ms: u64) {
    let device = Device::flex().autodiff();
    device.seed(1);
    let teacher = Gpt2LmHead::init(&config(), &device).unwrap();
    let data = seqs(24);
    let kd = KdLoss {
        ce_weight: 0.5,
        kd_weight: 0.5,
        temperature: 1.0,
        divergence: Divergence::ForwardKl,
    };
    let distill = if mode == "cached" {
        let cache = run_dir.join("cache");
        if !cache.exists() {
            let spec = CacheSpec {
                k: 16,
                dtype: LogProbDtype::F16,
                vocab_size: 61,
                rows_per_example: 9,
                temperature: 1.0,
                teacher: "tiny GPT-2 seed 1".into(),
                data: "test".into(),
            };
            capture(
                &mut Gpt2Teacher::new(teacher),
                &data,
                spec,
                &cache,
                8,
                false,
                &mut |_, _| {},
            )
            .unwrap();
        }
        Distill::cached(
            kd,
            TopKCache::open(&cache).unwrap(),
            Missing::Uniform,
            Window::always(),
        )
        .unwrap()
    } else {
        Distill::new(kd, Box::new(Gpt2Teacher::new(teacher)), Window::always()).unwrap()
    };
    let mut algorithms: Vec<Box<dyn Algorithm<Gpt2LmHead>>> =
        vec![Box::new(Slow(slow_ms)), Box::new(distill)];
    let mut tc = TrainerConfig::new(Duration::batches(12), OptimizerConfig::adamw(2e-3, 0.0));
    tc.save_interval = Some(Duration::batches(3));
    tc.seed = 4;
    tc.progress_bar = false;
    device.seed(9);
    let student = Gpt2LmHead::init(&config(), &device).unwrap();
    let mut task = CausalLmTask::new(data.clone(), data[..4].to_vec(), 4, 2, &device).unwrap();
    let out = Trainer::new(tc, run_dir.join("run"))
        .fit(student, &mut task, &mut algorithms, &device)
        .unwrap();
    out.model
        .save(run_dir.join("final"), Dtype::F32, true)
        .unwrap();
}

fn lines(run_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(run_dir.join("run/metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|mut l| {
            let o = l.as_object_mut().unwrap();
            for timing in ["tokens_per_s", "samples_per_s", "teacher_seconds"] {
                o.remove(timing);
            }
            l
        })
        .collect()
}

fn spawn(mode: &str, run_dir: &Path, slow_ms: u64) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "child",
        mode,
        run_dir.to_str().unwrap(),
        &slow_ms.to_string(),
    ]);
    c
}

fn check(mode: &str, tmp: &Path) {
    let reference = tmp.join(format!("{mode}-reference"));
    let out = spawn(mode, &reference, 0).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = lines(&reference);
    assert!(
        want.iter()
            .filter(|l| l["split"] == "train")
            .all(|l| l.get("kd_loss").is_some())
    );
    let killed = tmp.join(format!("{mode}-killed"));
    let mut child = spawn(mode, &killed, 150)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // counted without parsing: the child may be writing the next line while it is read
    while std::fs::read_to_string(killed.join("run/metrics.jsonl"))
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("\"split\":\"train\""))
                .count()
        })
        .unwrap_or(0)
        < 7
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{mode}: finished before the kill"
        );
        assert!(
            started.elapsed() < Wall::from_secs(600),
            "{mode}: timed out"
        );
        std::thread::sleep(Wall::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let out = spawn(mode, &killed, 0).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lines(&killed),
        want,
        "{mode}: the resumed run logs what the uninterrupted one did"
    );
    let (a, b) = (
        Checkpoint::open(reference.join("final")).unwrap(),
        Checkpoint::open(killed.join("final")).unwrap(),
    );
    for name in a.names() {
        assert_eq!(
            a.tensor(name).unwrap().data,
            b.tensor(name).unwrap().data,
            "{mode}: {name}"
        );
    }
    println!("autoresume_kd {mode}: ok");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        child(&args[2], Path::new(&args[3]), args[4].parse().unwrap());
        return;
    }
    if args.iter().any(|a| a == "--list") {
        println!("autoresume_kd: test");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    check("live", tmp.path());
    check("cached", tmp.path());
}
