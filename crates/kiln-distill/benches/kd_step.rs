//! One training step of a GPT-2-small-layout student on burn's flex CPU backend, through the
//! trainer as a user runs it: plain, distilled from a live GPT-2-small teacher (equal size), or
//! from the teacher's cached top-32 / top-128 (captured before the timed steps). One mode per
//! process, so the peak resident memory is its own.
//!
//! `cargo bench -p kiln-distill --bench kd_step -- plain|live|cached32|cached128` prints one JSON
//! object (step times from `BatchStart` to `BatchEnd`, peak RSS, cache bytes per token, capture
//! seconds); `cargo xtask bench distill` runs them all and records them in docs/BENCHMARKS.md.

use std::time::Instant;

use kiln_distill::gpt2::{Gpt2Teacher, capture};
use kiln_distill::{
    CacheSpec, Distill, Divergence, KdLoss, LogProbDtype, Missing, TopKCache, Window,
};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use kiln_schedules::Duration;
use kiln_train::burn::tensor::Device;
use kiln_train::tasks::CausalLmTask;
use kiln_train::timing::StepClock;
use kiln_train::{Algorithm, OptimizerConfig, Trainer, TrainerConfig};

const BATCH: usize = 2;
const SEQ: usize = 64;
const STEPS: u64 = 13;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    kiln_models::cpu::tune_allocator();
    let mode = std::env::args()
        .skip(1)
        .find(|a| ["plain", "live", "cached32", "cached128"].contains(&a.as_str()))
        .unwrap_or_else(|| "plain".into());
    let device = Device::flex().autodiff();
    let config = Gpt2Config::gpt2();
    device.seed(0);
    let student = Gpt2LmHead::init(&config, &device).unwrap();
    let seqs: Vec<Vec<u32>> = (0..(STEPS as usize + 1) * BATCH)
        .map(|s| {
            (0..SEQ)
                .map(|i| (((s * SEQ + i) as u64 * 2_654_435_761) % config.vocab_size as u64) as u32)
                .collect()
        })
        .collect();
    let eval = vec![seqs[0].clone()];
    let kd = KdLoss {
        ce_weight: 0.5,
        kd_weight: 0.5,
        temperature: 1.0,
        divergence: Divergence::ForwardKl,
    };
    let clock = StepClock::new();
    let times = clock.handle();
    let mut algorithms: Vec<Box<dyn Algorithm<Gpt2LmHead>>> = vec![Box::new(clock)];
    let (mut bytes_per_token, mut capture_s) = (0u64, 0.0);
    let dir = std::env::temp_dir().join(format!("kiln-bench-kd-{}", std::process::id()));
    if mode != "plain" {
        device.seed(1);
        let teacher = Gpt2LmHead::init(&config, &device.clone().inner()).unwrap();
        if mode == "live" {
            algorithms.push(Box::new(
                Distill::new(kd, Box::new(Gpt2Teacher::new(teacher)), Window::always()).unwrap(),
            ));
        } else {
            let k = if mode == "cached32" { 32 } else { 128 };
            let spec = CacheSpec {
                k,
                dtype: LogProbDtype::Bf16,
                vocab_size: config.vocab_size,
                rows_per_example: SEQ - 1,
                temperature: 1.0,
                teacher: "random GPT-2 small".into(),
                data: "bench sequences".into(),
            };
            let t = Instant::now();
            capture(
                &mut Gpt2Teacher::new(teacher),
                &seqs,
                spec,
                dir.join("cache"),
                BATCH,
                false,
                &mut |_, _| {},
            )
            .unwrap();
            capture_s = t.elapsed().as_secs_f64();
            let cache = TopKCache::open(dir.join("cache")).unwrap();
            bytes_per_token = cache.bytes_per_row();
            algorithms.push(Box::new(
                Distill::cached(kd, cache, Missing::Zero, Window::always()).unwrap(),
            ));
        }
    }
    let mut task = CausalLmTask::new(seqs, eval, BATCH, 0, &device).unwrap();
    let mut tc = TrainerConfig::new(Duration::batches(STEPS), OptimizerConfig::adamw(1e-4, 0.0));
    tc.progress_bar = false;
    tc.autoresume = false;
    Trainer::new(tc, dir.join("run"))
        .fit(student, &mut task, &mut algorithms, &device)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let times = times.borrow().clone();
    let out = serde_json::json!({
        "mode": mode, "batch": BATCH, "seq": SEQ, "step_s": times,
        "peak_rss_mib": peak_rss_mib(), "cache_bytes_per_token": bytes_per_token,
        "capture_s": capture_s,
    });
    println!("{out}");
}
