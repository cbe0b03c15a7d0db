//! Stage 2: 20 AdamW steps of a small GPT-2 and a small MosaicBERT (in child processes).

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_models::bert::{BertConfig, BertForMaskedLm, MlmPositions, Padding};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use serde_json::{Value, json};

use crate::cli::TrainModel;
use crate::{Result, random_ids, scalar};

/// `train --device D --model gpt2|mosaic_bert [--quick]`: 20 AdamW steps; the losses.
pub(crate) fn train_child(dev_name: &str, model: TrainModel, quick: bool) -> Result<Value> {
    let dev = kiln_models::device_from_name(dev_name)?;
    let losses = train_model(&dev, quick, model)?;
    Ok(json!({ "losses": losses }))
}

fn train_model(dev: &Device, quick: bool, model: TrainModel) -> Result<Vec<f64>> {
    let device = dev.clone().autodiff();
    let (d, layers, seq, batch) = if quick {
        (64, 2, 32, 4)
    } else {
        (256, 4, 128, 16)
    };
    // Progress on stderr: when the parent kills a stuck child, the report keeps the last lines,
    // which say in which step and phase it stopped.
    let t0 = Instant::now();
    let progress = |what: &str| eprintln!("[{:7.2} s] {what}", t0.elapsed().as_secs_f64());
    progress(&format!(
        "{}: d {d}, {layers} layers, batch {batch} × {seq}",
        model.name()
    ));
    // GPT-2: a fixed batch the model can memorise.
    let cfg = Gpt2Config {
        n_layer: layers,
        n_embd: d,
        n_head: 4,
        n_positions: seq,
        vocab_size: 1024,
        ..Gpt2Config::gpt2()
    };
    if model == TrainModel::Gpt2 {
        let mut gpt = Gpt2LmHead::init(&cfg, &device)?;
        let ids = random_ids(batch, seq, 1024, 3, &device);
        let mut optim = AdamWConfig::new().init();
        let mut losses = Vec::new();
        for step in 0..20 {
            let loss = gpt.loss(ids.clone(), None);
            losses.push(scalar(loss.clone()));
            progress(&format!("step {step}: forward, loss {:.4}", losses[step]));
            let grads = GradientsParams::from_grads(loss.backward(), &gpt);
            progress(&format!("step {step}: backward"));
            gpt = optim.step(1e-3, gpt, grads);
            progress(&format!("step {step}: optimizer"));
        }
        return Ok(losses);
    }
    // MosaicBERT: MLM on every 7th position.
    let cfg = BertConfig {
        vocab_size: 1024,
        hidden_size: d,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        intermediate_size: 2 * d,
        max_position_embeddings: seq,
        attention_probs_dropout_prob: 0.0,
        alibi_starting_size: Some(seq),
        ..BertConfig::bert_base()
    };
    let mut bert = BertForMaskedLm::init(&cfg, &device)?;
    let ids = random_ids(batch, seq, 1024, 5, &device);
    let flat: Vec<i64> = ids
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| format!("{e:?}"))?;
    let labels: Vec<i64> = flat
        .iter()
        .enumerate()
        .map(|(i, &t)| if i % 7 == 3 { t } else { -100 })
        .collect();
    let masked: Vec<i64> = flat
        .iter()
        .enumerate()
        .map(|(i, &t)| if i % 7 == 3 { 4 } else { t })
        .collect();
    let (inp, lab) = (
        Tensor::<2, Int>::from_data(TensorData::new(masked, [batch, seq]), &device),
        Tensor::<2, Int>::from_data(TensorData::new(labels, [batch, seq]), &device),
    );
    let mut optim = AdamWConfig::new().init();
    let mut losses = Vec::new();
    for step in 0..20 {
        let loss = bert.loss(
            inp.clone(),
            None,
            None,
            lab.clone(),
            Padding::Padded,
            MlmPositions::MaskedOnly,
        );
        losses.push(scalar(loss.clone()));
        progress(&format!("step {step}: forward, loss {:.4}", losses[step]));
        let grads = GradientsParams::from_grads(loss.backward(), &bert);
        progress(&format!("step {step}: backward"));
        bert = optim.step(1e-3, bert, grads);
        progress(&format!("step {step}: optimizer"));
    }
    Ok(losses)
}

/// The training stage's verdict on one model: its loss must fall by 10% (no time is judged).
pub(crate) fn record(model: &str, losses: &[f64], failures: &mut Vec<String>) -> Value {
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    let pass = last.is_finite() && last < 0.9 * first;
    if !pass {
        failures.push(format!(
            "training {model}: loss {first:.4} → {last:.4} did not fall by 10%"
        ));
    }
    eprintln!(
        "   {model}: loss {first:.4} → {last:.4} {}",
        if pass { "ok" } else { "FAIL" }
    );
    json!({"model": model, "steps": losses.len(), "losses": losses, "pass": pass})
}
