//! Stage 3: one training step's throughput, MFU and peak memory (in a child process, since a
//! device's default dtype can be set only once).

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use kiln_models::bert::{BertConfig, BertForMaskedLm, MlmPositions, Padding};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use serde_json::{Value, json};

use crate::cli::{Dtype, ThroughputModel};
use crate::{FUSION, Result, random_ids, scalar};

/// Dense peak TFLOP/s (f32 without tensor cores, bf16 with), from NVIDIA's data sheets.
pub(crate) fn peak_tflops(name: &str) -> Option<(f64, f64)> {
    let n = name.to_ascii_lowercase();
    if n.contains("h200") {
        Some((67.0, 989.0))
    } else if n.contains("h100") && (n.contains("pcie") || n.contains("nvl")) {
        Some((51.0, 756.0))
    } else if n.contains("h100") {
        Some((67.0, 989.0))
    } else if n.contains("a100") {
        Some((19.5, 312.0))
    } else {
        None
    }
}

/// One throughput measurement (a child process): prints one JSON object.
pub(crate) fn measure(
    dev_name: &str,
    model: ThroughputModel,
    dtype: Dtype,
    quick: bool,
) -> Result<Value> {
    let mut base: Device = kiln_models::device_from_name(dev_name)?;
    if dtype == Dtype::Bf16 {
        base.configure(FloatDType::BF16)
            .map_err(|e| format!("bf16 on {dev_name}: {e:?}"))?;
    }
    let device = base.clone().autodiff();
    let (warmup, reps) = if quick { (1, 3) } else { (3, 10) };
    let mut optim = AdamWConfig::new().init();
    let (b, l, params, flops_per_token);
    let mut step: Box<dyn FnMut() -> f64> = match model {
        ThroughputModel::Gpt2 => {
            let cfg = if quick {
                Gpt2Config {
                    n_layer: 2,
                    n_embd: 128,
                    n_head: 4,
                    n_positions: 128,
                    vocab_size: 4096,
                    attn_pdrop: 0.0,
                    resid_pdrop: 0.0,
                    embd_pdrop: 0.0,
                    ..Gpt2Config::gpt2()
                }
            } else {
                Gpt2Config {
                    attn_pdrop: 0.0,
                    resid_pdrop: 0.0,
                    embd_pdrop: 0.0,
                    ..Gpt2Config::gpt2()
                }
            };
            (b, l) = if quick { (2, 128) } else { (8, 1024) };
            params = cfg.num_params();
            flops_per_token = cfg.flops_per_token(l);
            let mut m = Gpt2LmHead::init(&cfg, &device)?;
            let ids = random_ids(b, l, cfg.vocab_size, 7, &device);
            Box::new(move || {
                let loss = m.loss(ids.clone(), None);
                let grads = GradientsParams::from_grads(loss.clone().backward(), &m);
                m = optim.step(1e-4, m.clone(), grads);
                scalar(loss)
            })
        }
        ThroughputModel::Bert => {
            let cfg = if quick {
                BertConfig {
                    vocab_size: 4096,
                    hidden_size: 128,
                    num_hidden_layers: 2,
                    num_attention_heads: 4,
                    intermediate_size: 512,
                    max_position_embeddings: 128,
                    ..BertConfig::bert_base()
                }
            } else {
                BertConfig::bert_base()
            };
            (b, l) = if quick { (4, 128) } else { (32, 128) };
            params = cfg.num_params();
            flops_per_token = cfg.flops_per_token(l);
            let mut m = BertForMaskedLm::init(&cfg, &device)?;
            let ids = random_ids(b, l, cfg.vocab_size, 11, &device);
            let flat: Vec<i64> = ids
                .clone()
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .map_err(|e| format!("{e:?}"))?;
            let labels = Tensor::<2, Int>::from_data(
                TensorData::new(
                    flat.iter()
                        .enumerate()
                        .map(|(i, &t)| if i % 7 == 3 { t } else { -100 })
                        .collect::<Vec<i64>>(),
                    [b, l],
                ),
                &device,
            );
            Box::new(move || {
                let loss = m.loss(
                    ids.clone(),
                    None,
                    None,
                    labels.clone(),
                    Padding::Padded,
                    MlmPositions::All,
                );
                let grads = GradientsParams::from_grads(loss.clone().backward(), &m);
                m = optim.step(1e-4, m.clone(), grads);
                scalar(loss)
            })
        }
    };
    let mut peak = 0u64;
    let mut times = Vec::new();
    let mut first_step = f64::NAN;
    let mut last_loss = f64::NAN;
    for i in 0..warmup + reps {
        let t = Instant::now();
        last_loss = step(); // reading the loss synchronises the device
        base.sync().map_err(|e| format!("sync: {e:?}"))?;
        let took = t.elapsed().as_secs_f64();
        eprintln!("step {i}: {took:.3} s");
        if i == 0 {
            // Compiles and autotunes every kernel of the step: on CUDA, NVRTC's share of a run.
            first_step = took;
        }
        if i >= warmup {
            times.push(took);
        }
        if let Some(u) = base.memory_pool_usage() {
            peak = peak.max(u.bytes_reserved);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let tokens = (b * l) as f64;
    // Training FLOPs: forward + backward = 3 × forward (Kaplan et al.).
    let flops = 3.0 * flops_per_token * tokens;
    Ok(json!({
        "params": params, "batch": b, "seq_len": l, "first_step_s": first_step, "warmup_steps": warmup,
        "step_s": median, "tokens_per_s": tokens / median,
        "train_flops_per_step": flops, "achieved_tflops": flops / median / 1e12,
        "peak_reserved_bytes": (peak > 0).then_some(peak), "final_loss": last_loss,
        "fusion": FUSION,
    }))
}
