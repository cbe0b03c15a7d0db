//! The per-step overhead of kiln-train's continual-learning algorithms on a GPT-2-small-layout
//! model (burn flex, CPU): plain fine-tuning, SFA (a merge every 50 steps), EMA (an update every
//! 50 steps), the L2 anchor and EWC (a penalty every step) and replay (a memory batch as large as
//! the current one every step), each run through the trainer's events as a user would, one
//! method per process so the peak resident memory is its own.
//!
//! `cargo bench -p kiln-train --bench continual_step -- plain|sfa|ema|l2|ewc|replay` prints one
//! JSON object: every step's time (from `BatchStart` to `BatchEnd`, so a merge or an update
//! after the optimiser step counts), the peak RSS and the bytes of state the algorithm keeps;
//! `cargo xtask bench continual` runs them all and records them in docs/BENCHMARKS.md.

use std::ops::Range;
use std::time::Instant;

use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use kiln_schedules::Duration;
use kiln_train::algorithms::{
    Ema, EmaDecay, Ewc, EwcMode, FisherData, FisherEstimator, L2Anchor, MemoryEntry, PenaltyScale,
    Replay, ReplayPolicy, ReplaySource, Sfa, SfaAnchor,
};
use kiln_train::burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_train::tasks::CausalLmTask;
use kiln_train::timing::StepClock;
use kiln_train::{Algorithm, OptimizerConfig, Trainer, TrainerConfig};

const BATCH: usize = 1;
const SEQ: usize = 64;
const STEPS: u64 = 100;
/// SFA's period and EMA's interval, in steps.
const EVERY: u64 = 50;

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

fn sequences(n: usize, vocab: usize, salt: u64) -> Vec<Vec<u32>> {
    (0..n)
        .map(|s| {
            (0..SEQ)
                .map(|i| ((((s * SEQ + i) as u64 + salt) * 2_654_435_761) % vocab as u64) as u32)
                .collect()
        })
        .collect()
}

fn ids(seqs: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = seqs.iter().flatten().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(v, [seqs.len(), SEQ]), device)
}

struct Memory {
    seqs: Vec<Vec<u32>>,
    device: Device,
}

impl ReplaySource<Gpt2LmHead> for Memory {
    fn loss(&mut self, m: &Gpt2LmHead, ex: &[MemoryEntry]) -> Result<Tensor<1>, String> {
        let rows: Vec<Vec<u32>> = ex
            .iter()
            .map(|&(_, id)| self.seqs[id as usize].clone())
            .collect();
        Ok(m.loss(ids(&rows, &self.device), None))
    }
}

struct Rows {
    seqs: Vec<Vec<u32>>,
    device: Device,
}

impl FisherData<Gpt2LmHead> for Rows {
    fn len(&self) -> usize {
        self.seqs.len()
    }
    fn forward(
        &mut self,
        m: &Gpt2LmHead,
        r: Range<usize>,
    ) -> Result<(Tensor<2>, Vec<i64>), String> {
        let seqs = &self.seqs[r];
        let logits = m.forward(ids(seqs, &self.device), None, None);
        let [b, l, v] = logits.dims();
        let rows = logits
            .slice([0..b, 0..l - 1, 0..v])
            .reshape([b * (l - 1), v]);
        Ok((
            rows,
            seqs.iter()
                .flat_map(|s| s[1..].iter().map(|&t| i64::from(t)))
                .collect(),
        ))
    }
}

fn main() {
    kiln_models::cpu::tune_allocator();
    let method = std::env::args()
        .skip(1)
        .find(|a| ["plain", "sfa", "ema", "l2", "ewc", "replay"].contains(&a.as_str()))
        .unwrap_or_else(|| "plain".into());
    let device = Device::flex().autodiff();
    device.seed(0);
    let config = Gpt2Config::gpt2();
    let model = Gpt2LmHead::init(&config, &device).unwrap();
    let train = sequences(64, config.vocab_size, 0);
    let eval = sequences(1, config.vocab_size, 7);
    let clock = StepClock::new();
    let times = clock.handle();
    let mut algorithms: Vec<Box<dyn Algorithm<Gpt2LmHead>>> = vec![Box::new(clock)];
    let mut fisher_seconds = 0.0;
    match method.as_str() {
        "sfa" => algorithms.push(Box::new(
            Sfa::new(0.25, EVERY as f64 / STEPS as f64, SfaAnchor::PrevTaskEnd).unwrap(),
        )),
        "ema" => algorithms.push(Box::new(
            Ema::new(
                EmaDecay::Composer { smoothing: 0.9 },
                Duration::batches(0),
                EVERY,
                false,
            )
            .unwrap(),
        )),
        "l2" => algorithms.push(Box::new(L2Anchor::new(1e-3, PenaltyScale::Half).unwrap())),
        "ewc" => {
            // a previous task consolidated on 4 sequences (per-token empirical Fisher)
            let mut ewc = Ewc::new(
                100.0,
                PenaltyScale::Half,
                FisherEstimator::Empirical,
                EwcMode::Online { gamma: 1.0 },
                0,
            )
            .unwrap();
            let t = Instant::now();
            ewc.consolidate(
                &model,
                &mut Rows {
                    seqs: sequences(4, config.vocab_size, 3),
                    device: device.clone(),
                },
            )
            .unwrap();
            fisher_seconds = t.elapsed().as_secs_f64();
            algorithms.push(Box::new(ewc));
        }
        "replay" => {
            let mut replay = Replay::new(
                64,
                None,
                ReplayPolicy::Reservoir,
                0,
                Box::new(Memory {
                    seqs: sequences(64, config.vocab_size, 5),
                    device: device.clone(),
                }),
            )
            .unwrap();
            replay.end_task(0..64); // a previous task's 64 sequences in memory
            algorithms.push(Box::new(replay));
        }
        _ => {}
    }
    let mut task = CausalLmTask::new(train, eval, BATCH, 0, &device).unwrap();
    let mut tc = TrainerConfig::new(Duration::batches(STEPS), OptimizerConfig::adamw(1e-4, 0.0));
    tc.progress_bar = false;
    tc.autoresume = false;
    let dir = std::env::temp_dir().join(format!("kiln-bench-continual-{}", std::process::id()));
    Trainer::new(tc, &dir)
        .fit(model, &mut task, &mut algorithms, &device)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let state: usize = algorithms[1..]
        .iter()
        .map(|a| {
            a.tensor_state()
                .iter()
                .map(|(_, d)| d.num_elements() * d.dtype().size())
                .sum::<usize>()
                + a.state().to_string().len()
        })
        .sum();
    let times = times.borrow().clone();
    let out = serde_json::json!({
        "method": method, "batch": BATCH, "seq": SEQ, "steps": STEPS, "every": EVERY,
        "step_s": times, "peak_rss_mib": peak_rss_mib(), "state_bytes": state,
        "fisher_s": fisher_seconds,
    });
    println!("{out}");
}
