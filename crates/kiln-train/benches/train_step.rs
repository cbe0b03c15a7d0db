//! Training-step throughput of a tiny BERT on burn's flex CPU backend: one optimiser step
//! (forward, MLM loss on 15% of positions, backward, global-norm clipping, AdamW) on a batch of
//! 32 × 64 tokens, for the HF-BERT layout and the MosaicBERT layout (ALiBi, GeGLU).
//!
//! `cargo bench -p kiln-train --bench train_step` prints one JSON object; `cargo xtask bench
//! train` runs it beside PyTorch (`benches/torch_train_step.py`) and records both in
//! docs/BENCHMARKS.md.

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_models::bert::{BertConfig, BertForMaskedLm, MlmPositions, Padding};
use kiln_train::OptimizerConfig;
use kiln_train::optim::clip_grad_norm;

const BATCH: usize = 32;
const SEQ: usize = 64;
const VOCAB: usize = 1024;

fn config(mosaic: bool) -> BertConfig {
    BertConfig {
        vocab_size: VOCAB,
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 128,
        max_position_embeddings: SEQ,
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: if mosaic { 0.0 } else { 0.1 },
        alibi_starting_size: mosaic.then_some(SEQ),
        ..BertConfig::bert_base()
    }
}

/// Deterministic pseudo-random batch: ids, all-ones mask, labels on every 7th position.
fn batch(device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2, Int>) {
    let n = BATCH * SEQ;
    let ids: Vec<i64> = (0..n)
        .map(|i| ((i as u64 * 2_654_435_761) % VOCAB as u64) as i64)
        .collect();
    let labels: Vec<i64> = (0..n)
        .map(|i| if i % 7 == 3 { ids[i] } else { -100 })
        .collect();
    let t = |v: Vec<i64>| Tensor::from_data(TensorData::new(v, [BATCH, SEQ]), device);
    (t(ids), t(vec![1; n]), t(labels))
}

fn main() {
    kiln_models::cpu::tune_allocator();
    let reps: usize = std::env::var("KILN_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut out = serde_json::Map::new();
    out.insert("batch".into(), BATCH.into());
    out.insert("seq".into(), SEQ.into());
    for (name, mosaic) in [("bert", false), ("mosaic_bert", true)] {
        let device = Device::flex().autodiff();
        device.seed(0);
        let mut model = BertForMaskedLm::init(&config(mosaic), &device).unwrap();
        let mut optim = OptimizerConfig::adamw(1e-3, 1e-5).build().unwrap();
        let (ids, mask, labels) = batch(&device);
        let mut times = Vec::new();
        for i in 0..reps + 2 {
            let t = Instant::now();
            let loss = model.loss(
                ids.clone(),
                None,
                Some(mask.clone()),
                labels.clone(),
                Padding::Padded,
                MlmPositions::All,
            );
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            clip_grad_norm(&model, &mut grads, 1.0);
            model = optim.step(1e-3, model, grads);
            if i >= 2 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        out.insert(format!("{name}_step_s"), times.into());
    }
    println!("{}", serde_json::Value::Object(out));
}
