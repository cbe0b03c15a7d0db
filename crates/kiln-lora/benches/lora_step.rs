//! One fine-tuning step of a GPT-2-small-layout model on burn's flex CPU backend, with LoRA
//! (r 16, α 32, every linear layer, through `kiln_lora::train::attach`) or in full: forward,
//! next-token loss, backward, AdamW. One configuration per process, so the peak resident memory
//! belongs to it.
//!
//! `cargo bench -p kiln-lora --bench lora_step -- lora|full` prints one JSON object (step times,
//! peak RSS, trainable and total parameters); `cargo xtask bench lora` runs both beside PyTorch +
//! PEFT (`benches/torch_lora_step.py`) and records them in docs/BENCHMARKS.md.

use std::time::Instant;

use kiln_lora::{LoraConfig, Modules, train};
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use kiln_train::OptimizerConfig;
use kiln_train::burn::optim::GradientsParams;

const BATCH: usize = 4;
const SEQ: usize = 128;

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
        .find(|a| a == "lora" || a == "full")
        .unwrap_or_else(|| "lora".into());
    let reps: usize = std::env::var("KILN_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let device = Device::flex().autodiff();
    device.seed(0);
    let config = Gpt2Config::gpt2();
    let model = Gpt2LmHead::init(&config, &device).unwrap();
    let (mut model, trainable, total) = if mode == "lora" {
        let lora = LoraConfig::new(16, 32.0, Modules::Pattern("all-linear".into()));
        let (m, report) = train::attach(model, &lora, 0).unwrap();
        (m, report.trainable, report.total)
    } else {
        let n = model.num_params();
        (model, n, n)
    };
    let mut optim = OptimizerConfig::adamw(1e-4, 0.0).build().unwrap();
    let n = BATCH * SEQ;
    let ids: Vec<i64> = (0..n)
        .map(|i| ((i as u64 * 2_654_435_761) % config.vocab_size as u64) as i64)
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [BATCH, SEQ]), &device);
    let mut times = Vec::new();
    for i in 0..reps + 1 {
        let t = Instant::now();
        let loss = model.loss(ids.clone(), None);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-4, model, grads);
        if i >= 1 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let out = serde_json::json!({
        "mode": mode, "batch": BATCH, "seq": SEQ, "step_s": times,
        "peak_rss_mib": peak_rss_mib(), "trainable": trainable, "total": total,
    });
    println!("{out}");
}
