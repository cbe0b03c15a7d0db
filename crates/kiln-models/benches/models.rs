//! Tokens per second of a GPT-2-small-size and a BERT-base-size model on burn's flex CPU
//! backend: forward (no autodiff) and forward + backward (autodiff), batch 4 × 128 tokens.
//!
//! `cargo bench -p kiln-models --bench models` prints one JSON object; `cargo xtask bench models`
//! runs it beside PyTorch (`benches/torch_anchor.py`) and records both in docs/BENCHMARKS.md.

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use kiln_models::bert::{BertConfig, BertForMaskedLm, MlmPositions, Padding};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};

const BATCH: usize = 4;
const SEQ: usize = 128;

fn ids(vocab: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::<2>::random(
        [BATCH, SEQ],
        Distribution::Uniform(0.0, vocab as f64 - 1.0),
        device,
    )
    .int()
}

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

/// Tokens per second of each run.
fn rates(tokens: f64, seconds: &[f64]) -> serde_json::Value {
    seconds
        .iter()
        .map(|s| tokens / s)
        .collect::<Vec<_>>()
        .into()
}

fn main() {
    kiln_models::cpu::tune_allocator();
    let reps: usize = std::env::var("KILN_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let tokens = (BATCH * SEQ) as f64;
    let mut out = serde_json::Map::new();
    out.insert("batch".into(), BATCH.into());
    out.insert("seq".into(), SEQ.into());

    // GPT-2 small.
    let cfg = Gpt2Config {
        attn_pdrop: 0.0,
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        ..Gpt2Config::gpt2()
    };
    let dev = Device::flex();
    let model = Gpt2LmHead::init(&cfg, &dev).unwrap();
    let x = ids(cfg.vocab_size, &dev);
    let fwd = time(reps, || {
        let l = model.forward(x.clone(), None, None);
        let _: f32 = l.sum().into_scalar();
    });
    let adev = Device::flex().autodiff();
    let model = Gpt2LmHead::init(&cfg, &adev).unwrap();
    let xa = Tensor::<2, Int>::from_data(x.to_data(), &adev);
    let fwd_bwd = time(reps, || {
        let loss = model.loss(xa.clone(), None);
        let _ = loss.backward();
    });
    out.insert("gpt2_params".into(), cfg.num_params().into());
    out.insert("gpt2_forward_tokens_per_s".into(), rates(tokens, &fwd));
    out.insert("gpt2_train_tokens_per_s".into(), rates(tokens, &fwd_bwd));

    // BERT-base MLM.
    let cfg = BertConfig {
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..BertConfig::bert_base()
    };
    let model = BertForMaskedLm::init(&cfg, &dev).unwrap();
    let x = ids(cfg.vocab_size, &dev);
    let mask = Tensor::<2, Int>::ones([BATCH, SEQ], &dev);
    let fwd = time(reps, || {
        let l = model.forward(x.clone(), None, Some(mask.clone()), Padding::Padded);
        let _: f32 = l.sum().into_scalar();
    });
    let model = BertForMaskedLm::init(&cfg, &adev).unwrap();
    let xa = Tensor::<2, Int>::from_data(x.to_data(), &adev);
    let ma = Tensor::<2, Int>::ones([BATCH, SEQ], &adev);
    // 15% of positions predicted, the rest ignored.
    let labels: Vec<i64> = (0..BATCH * SEQ)
        .map(|i| {
            if i % 7 == 0 {
                (i % cfg.vocab_size) as i64
            } else {
                -100
            }
        })
        .collect();
    let la = Tensor::<2, Int>::from_data(TensorData::new(labels, [BATCH, SEQ]), &adev);
    let fwd_bwd = time(reps, || {
        let loss = model.loss(
            xa.clone(),
            None,
            Some(ma.clone()),
            la.clone(),
            Padding::Padded,
            MlmPositions::All,
        );
        let _ = loss.backward();
    });
    out.insert("bert_params".into(), cfg.num_params().into());
    out.insert("bert_forward_tokens_per_s".into(), rates(tokens, &fwd));
    out.insert("bert_train_tokens_per_s".into(), rates(tokens, &fwd_bwd));
    println!("{}", serde_json::Value::Object(out));
}
