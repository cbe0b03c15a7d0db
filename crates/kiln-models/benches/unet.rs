//! The diffusion UNet on burn's flex CPU backend: one training step's forward + backward of
//! SD2-base's UNet (`stabilityai/stable-diffusion-2-base` `unet/config.json`, 865 M parameters,
//! random weights) on a batch of one 64×64 latent with 77 text states, and one sampling step
//! (a guided forward: batch 2, no autodiff) of that UNet and of diffusers' tiny test UNet.
//!
//! `cargo bench -p kiln-models --bench unet` prints one JSON object; `cargo xtask bench
//! diffusion` runs it beside diffusers (`benches/torch_unet.py`) and records both in
//! docs/BENCHMARKS.md.

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use kiln_models::diffusion::unet::{UNet2DConditionModel, UNetConfig};

/// SD2-base's UNet layout.
const SD2_BASE: &str = r#"{"act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
  "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
  "norm_eps": 1e-05, "norm_num_groups": 32, "sample_size": 64, "use_linear_projection": true}"#;

/// diffusers' own tiny test UNet (`UNet2DConditionModel` tests), 16×16 latents.
const TINY: &str = r#"{"block_out_channels": [4, 8], "norm_num_groups": 4, "cross_attention_dim": 8,
  "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": 2,
  "in_channels": 4, "out_channels": 4, "layers_per_block": 1, "sample_size": 16}"#;

/// Seconds of each of `reps` runs of `f`, after one warm-up.
fn time(reps: usize, mut f: impl FnMut()) -> Vec<f64> {
    f();
    (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect()
}

fn inputs(
    c: &UNetConfig,
    batch: usize,
    tokens: usize,
    device: &Device,
) -> (Tensor<4>, Tensor<1>, Tensor<3>) {
    let side = c.sample_size.unwrap_or(64);
    (
        Tensor::random(
            [batch, c.in_channels, side, side],
            Distribution::Normal(0.0, 1.0),
            device,
        ),
        Tensor::from_floats([500.0], device),
        Tensor::random(
            [batch, tokens, c.cross_attention_dim],
            Distribution::Normal(0.0, 1.0),
            device,
        ),
    )
}

fn main() {
    let reps: usize = std::env::var("KILN_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let sd2: UNetConfig = serde_json::from_str(SD2_BASE).expect("SD2 config");
    let tiny: UNetConfig = serde_json::from_str(TINY).expect("tiny config");
    let flex = Device::flex();
    let mut out = serde_json::Map::new();
    // one sampling step: a guided forward (batch 2), no autodiff
    for (key, c, tokens, n) in [("tiny", &tiny, 4, 20 * reps), ("sd2", &sd2, 77, reps)] {
        flex.seed(0);
        let unet = UNet2DConditionModel::init(c, &flex).expect("UNet");
        if key == "sd2" {
            out.insert("sd2_params".into(), unet.num_params().into());
        }
        let (x, t, e) = inputs(c, 2, tokens, &flex);
        let s = time(n, || {
            let y = unet
                .forward(x.clone(), t.clone(), e.clone())
                .expect("forward");
            let _ = y.into_data();
        });
        out.insert(format!("{key}_sample_step_s"), s.into());
        eprintln!("{key} sampling step done");
    }
    // one training step's forward + backward of SD2's UNet, batch 1
    let ad = flex.clone().autodiff();
    ad.seed(0);
    let unet = UNet2DConditionModel::init(&sd2, &ad).expect("UNet");
    let (x, t, e) = inputs(&sd2, 1, 77, &ad);
    let s = time(reps, || {
        let y = unet
            .forward(x.clone(), t.clone(), e.clone())
            .expect("forward");
        let grads = y.powi_scalar(2).mean().backward();
        drop(grads);
    });
    out.insert("sd2_train_step_s".into(), s.into());
    out.insert("reps".into(), reps.into());
    println!("{}", serde_json::Value::Object(out));
}
