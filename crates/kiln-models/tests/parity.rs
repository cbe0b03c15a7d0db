//! Logits parity with transformers (and the MosaicBERT transcription), round trips, gradients.
//!
//! Everything under `fixtures/` is written by `fixtures/make_model_fixtures.py`.

use std::path::PathBuf;

use kiln_checkpoint::{Checkpoint, Dtype};
use kiln_models::bert::{
    BertForMaskedLm, BertForSequenceClassification, BertForTokenClassification, BertWithPooler,
    MlmPositions, Padding, SequenceLabels, alibi_slopes,
};
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::generate::{GenerationConfig, generate};
use kiln_models::gpt2::{Gpt2LmHead, Gpt2MultipleChoice, Gpt2SequenceClassification};
use kiln_models::{Error, LayerNormPrecision, LoadOptions};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn reference(name: &str) -> Checkpoint {
    Checkpoint::open(
        fixtures()
            .join("reference")
            .join(format!("{name}.safetensors")),
    )
    .unwrap()
}

fn dev() -> Device {
    Device::flex()
}

fn ints<const D: usize>(r: &Checkpoint, name: &str) -> Tensor<D, Int> {
    let t = r.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    let v: Vec<i64> = t
        .data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let shape: [usize; D] = t.shape().try_into().unwrap();
    Tensor::from_data(TensorData::new(v, shape), &dev())
}

fn floats(r: &Checkpoint, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = r.tensor(name).unwrap();
    (t.to_f32().unwrap(), t.shape().to_vec())
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec().unwrap()
}

/// `got` equals `want` up to `rtol` times the reference's scale (its largest magnitude, at least
/// 1e-3): logits of a few units and losses well below one are judged alike.
#[track_caller]
fn close(got: &[f32], want: &[f32], rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= rtol * scale,
        "{what}: max |kiln − reference| = {worst:e} > {rtol:e} × {scale:e}"
    );
}

#[test]
fn gpt2_lm_logits_match_transformers() {
    for name in ["gpt2_tied", "gpt2_scaled", "gpt2_gelu"] {
        let r = reference(name);
        let model = Gpt2LmHead::load(model_dir(name), &dev(), LoadOptions::default()).unwrap();
        let logits = model.forward(
            ints(&r, "input_ids"),
            Some(ints(&r, "attention_mask")),
            None,
        );
        let (want, shape) = floats(&r, "logits");
        assert_eq!(logits.dims().to_vec(), shape);
        close(&values(logits), &want, 1e-4, name);
    }
}

/// GPT-2 has no token-type table; transformers adds `wte(token_type_ids)` to the embeddings.
#[test]
fn gpt2_token_types_go_through_the_token_embedding() {
    let r = reference("gpt2_tied");
    let model = Gpt2LmHead::load(model_dir("gpt2_tied"), &dev(), LoadOptions::default()).unwrap();
    let logits = model.forward_with_token_types(
        ints(&r, "input_ids"),
        Some(ints(&r, "token_type_ids")),
        Some(ints(&r, "attention_mask")),
        None,
    );
    close(
        &values(logits),
        &floats(&r, "logits_with_token_types").0,
        1e-4,
        "gpt2 with token types",
    );
}

#[test]
fn gpt2_heads_match_transformers() {
    let r = reference("gpt2_seqcls");
    let m =
        Gpt2SequenceClassification::load(model_dir("gpt2_seqcls"), &dev(), LoadOptions::default())
            .unwrap();
    let logits = m.forward(ints(&r, "input_ids"), Some(ints(&r, "attention_mask")));
    close(&values(logits), &floats(&r, "logits").0, 1e-4, "seqcls");

    let r = reference("gpt2_mc");
    let m = Gpt2MultipleChoice::load(model_dir("gpt2_mc"), &dev(), LoadOptions::default()).unwrap();
    let ids: Tensor<3, Int> = ints(&r, "input_ids");
    let mask: Tensor<3, Int> = ints(&r, "attention_mask");
    let scores = m.forward(ids.clone(), Some(mask.clone()));
    // BioMedLM's GPT2ForMultipleChoice transcription: scores at each choice's last real token
    close(
        &values(scores),
        &floats(&r, "scores").0,
        1e-5,
        "multiple-choice scores",
    );
    let loss = m.loss(ids, Some(mask), ints(&r, "labels"));
    close(
        &values(loss),
        &floats(&r, "loss").0,
        1e-5,
        "multiple-choice loss",
    );
}

#[test]
fn greedy_generation_matches_transformers_with_and_without_cache() {
    let r = reference("gpt2_tied");
    let model = Gpt2LmHead::load(model_dir("gpt2_tied"), &dev(), LoadOptions::default()).unwrap();
    let prompt: Vec<i64> = ints::<1>(&r, "greedy_prompt")
        .into_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    let want: Vec<i64> = ints::<1>(&r, "greedy")
        .into_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    for use_cache in [true, false] {
        let cfg = GenerationConfig {
            max_new_tokens: want.len(),
            use_cache,
            ..Default::default()
        };
        assert_eq!(
            generate(&model, &prompt, &cfg).unwrap(),
            want,
            "use_cache {use_cache}"
        );
    }
    // Sampling: the cache changes nothing either.
    let sampled = |use_cache| {
        let cfg = GenerationConfig {
            max_new_tokens: 12,
            temperature: 0.9,
            top_k: Some(20),
            top_p: Some(0.9),
            seed: 7,
            use_cache,
            ..Default::default()
        };
        generate(&model, &prompt, &cfg).unwrap()
    };
    assert_eq!(sampled(true), sampled(false));
    assert!(generate(&model, &[], &GenerationConfig::default()).is_err());
    assert!(generate(&model, &[1000], &GenerationConfig::default()).is_err());
    assert!(
        generate(
            &model,
            &[1],
            &GenerationConfig {
                max_new_tokens: 1000,
                ..Default::default()
            }
        )
        .is_err()
    );
}

#[test]
fn bert_matches_transformers() {
    let r = reference("bert_mlm");
    let m = BertForMaskedLm::load(model_dir("bert_mlm"), &dev(), LoadOptions::default()).unwrap();
    let (ids, tt, mask) = (
        ints(&r, "input_ids"),
        ints(&r, "token_type_ids"),
        ints(&r, "attention_mask"),
    );
    let logits = m.forward(
        ids.clone(),
        Some(tt.clone()),
        Some(mask.clone()),
        Padding::Padded,
    );
    close(
        &values(logits),
        &floats(&r, "logits").0,
        1e-4,
        "bert mlm logits",
    );
    for positions in [MlmPositions::All, MlmPositions::MaskedOnly] {
        let loss = m.loss(
            ids.clone(),
            Some(tt.clone()),
            Some(mask.clone()),
            ints(&r, "labels"),
            Padding::Padded,
            positions,
        );
        close(&values(loss), &floats(&r, "loss").0, 1e-5, "bert mlm loss");
    }

    let r = reference("bert_base");
    let m = BertWithPooler::load(model_dir("bert_base"), &dev(), LoadOptions::default()).unwrap();
    let (h, pooled) = m.forward(
        ints(&r, "input_ids"),
        Some(ints(&r, "token_type_ids")),
        Some(ints(&r, "attention_mask")),
    );
    close(
        &values(h),
        &floats(&r, "last_hidden_state").0,
        1e-4,
        "bert hidden",
    );
    close(
        &values(pooled),
        &floats(&r, "pooler_output").0,
        1e-4,
        "bert pooled",
    );

    let r = reference("bert_seqcls");
    let m = BertForSequenceClassification::load(
        model_dir("bert_seqcls"),
        &dev(),
        LoadOptions::default(),
    )
    .unwrap();
    let inputs = |r: &Checkpoint| {
        (
            ints::<2>(r, "input_ids"),
            Some(ints::<2>(r, "token_type_ids")),
            Some(ints::<2>(r, "attention_mask")),
        )
    };
    let (ids, tt, mask) = inputs(&r);
    let logits = m.forward(ids.clone(), tt.clone(), mask.clone());
    close(
        &values(logits),
        &floats(&r, "logits").0,
        1e-4,
        "bert seqcls",
    );
    let loss = m.loss(ids, tt, mask, SequenceLabels::Classes(ints(&r, "labels")));
    close(
        &values(loss),
        &floats(&r, "loss").0,
        1e-5,
        "bert seqcls loss",
    );

    // Regression: one output, mean squared error against float targets.
    let r = reference("bert_regression");
    let m = BertForSequenceClassification::load(
        model_dir("bert_regression"),
        &dev(),
        LoadOptions::default(),
    )
    .unwrap();
    let (ids, tt, mask) = inputs(&r);
    let logits = m.forward(ids.clone(), tt.clone(), mask.clone());
    close(
        &values(logits),
        &floats(&r, "logits").0,
        1e-4,
        "bert regression",
    );
    let (targets, shape) = floats(&r, "labels");
    let targets = Tensor::<1>::from_data(TensorData::new(targets, [shape[0]]), &dev());
    let loss = m.loss(ids, tt, mask, SequenceLabels::Scores(targets));
    close(
        &values(loss),
        &floats(&r, "loss").0,
        1e-5,
        "bert regression loss",
    );

    // Token classification: labels −100 at padding are ignored.
    let r = reference("bert_tokcls");
    let m =
        BertForTokenClassification::load(model_dir("bert_tokcls"), &dev(), LoadOptions::default())
            .unwrap();
    let (ids, tt, mask) = inputs(&r);
    let logits = m.forward(ids.clone(), tt.clone(), mask.clone());
    close(
        &values(logits),
        &floats(&r, "logits").0,
        1e-4,
        "bert tokcls",
    );
    let loss = m.loss(ids, tt, mask, ints(&r, "labels"));
    close(
        &values(loss),
        &floats(&r, "loss").0,
        1e-5,
        "bert tokcls loss",
    );
}

/// MosaicBERT's low-precision LayerNorm: Composer's `LPLayerNorm` under autocast, the rest in f32.
/// The reference moves measurably away from the f32 logits, and kiln follows it.
#[test]
fn low_precision_layernorm_matches_lplayernorm() {
    let r = reference("mosaic_bert");
    let mut m =
        BertForMaskedLm::load(model_dir("mosaic_bert"), &dev(), LoadOptions::default()).unwrap();
    let (ids, tt, mask) = (
        ints::<2>(&r, "input_ids"),
        ints::<2>(&r, "token_type_ids"),
        ints::<2>(&r, "attention_mask"),
    );
    let f32_logits = floats(&r, "logits").0;
    for (precision, name) in [
        (LayerNormPrecision::Bf16, "logits_ln_bf16"),
        (LayerNormPrecision::F16, "logits_ln_f16"),
    ] {
        m.bert.layer_norm_precision = precision;
        let want = floats(&r, name).0;
        let moved = want
            .iter()
            .zip(&f32_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            moved > 5e-3,
            "{name}: the low precision must show ({moved})"
        );
        for padding in [Padding::Unpadded, Padding::Padded] {
            let got = values(m.forward(ids.clone(), Some(tt.clone()), Some(mask.clone()), padding));
            // Compare real tokens (padded positions differ between the two paths).
            let real = real_rows(&got, &mask, want.len());
            close(&real, &real_rows(&want, &mask, want.len()), 2e-4, name);
        }
    }
}

/// Logit rows of real (mask 1) tokens.
fn real_rows(v: &[f32], mask: &Tensor<2, Int>, len: usize) -> Vec<f32> {
    let m: Vec<i64> = mask
        .clone()
        .into_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    let width = len / m.len();
    v.chunks(width)
        .zip(&m)
        .filter(|(_, k)| **k == 1)
        .flat_map(|(c, _)| c.to_vec())
        .collect()
}

#[test]
fn mosaic_bert_matches_the_transcription_padded_and_unpadded() {
    let r = reference("mosaic_bert");
    let m =
        BertForMaskedLm::load(model_dir("mosaic_bert"), &dev(), LoadOptions::default()).unwrap();
    assert!(m.bert.config.uses_alibi() && m.bert.config.uses_glu());
    let (ids, tt, mask) = (
        ints(&r, "input_ids"),
        ints(&r, "token_type_ids"),
        ints(&r, "attention_mask"),
    );
    let mask_v: Vec<i64> = mask
        .clone()
        .into_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    let (want_h, shape) = floats(&r, "last_hidden_state");
    let d = shape[2];
    // Unpadded: zeros at padded positions, as MosaicBERT.
    let h = m.bert.forward(
        ids.clone(),
        Some(tt.clone()),
        Some(mask.clone()),
        Padding::Unpadded,
    );
    close(&values(h), &want_h, 1e-4, "mosaic hidden (unpadded)");
    // Padded: equal on real tokens.
    let hp = values(m.bert.forward(
        ids.clone(),
        Some(tt.clone()),
        Some(mask.clone()),
        Padding::Padded,
    ));
    let real = |v: &[f32]| -> Vec<f32> {
        v.chunks(d)
            .zip(&mask_v)
            .filter(|(_, m)| **m == 1)
            .flat_map(|(c, _)| c.to_vec())
            .collect()
    };
    close(
        &real(&hp),
        &real(&want_h),
        1e-4,
        "mosaic hidden (padded, real tokens)",
    );
    let logits = m.forward(
        ids.clone(),
        Some(tt.clone()),
        Some(mask.clone()),
        Padding::Unpadded,
    );
    close(
        &values(logits),
        &floats(&r, "logits").0,
        1e-4,
        "mosaic logits",
    );
    for (padding, positions) in [
        (Padding::Unpadded, MlmPositions::MaskedOnly),
        (Padding::Padded, MlmPositions::All),
        (Padding::Unpadded, MlmPositions::All),
    ] {
        let loss = m.loss(
            ids.clone(),
            Some(tt.clone()),
            Some(mask.clone()),
            ints(&r, "labels"),
            padding,
            positions,
        );
        close(&values(loss), &floats(&r, "loss").0, 1e-5, "mosaic loss");
    }
}

#[test]
fn alibi_slopes_match_the_transcription() {
    let text = std::fs::read_to_string(fixtures().join("reference/alibi_slopes.json")).unwrap();
    let want: std::collections::BTreeMap<String, Vec<f64>> = serde_json::from_str(&text).unwrap();
    for (heads, slopes) in want {
        let got = alibi_slopes(heads.parse().unwrap());
        assert_eq!(got.len(), slopes.len());
        for (a, b) in got.iter().zip(&slopes) {
            assert!(
                (a - b).abs() < 1e-12,
                "{heads} heads: {got:?} vs {slopes:?}"
            );
        }
    }
}

#[test]
fn save_and_load_round_trip_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["gpt2_tied", "gpt2_scaled"] {
        let m = Gpt2LmHead::load(model_dir(name), &dev(), LoadOptions::default()).unwrap();
        let out = dir.path().join(name);
        m.save(&out, Dtype::F32, false).unwrap();
        same_tensors(&model_dir(name), &out);
    }
    for name in ["bert_mlm", "mosaic_bert"] {
        let m = BertForMaskedLm::load(model_dir(name), &dev(), LoadOptions::default()).unwrap();
        let out = dir.path().join(name);
        m.save(&out, Dtype::F32, false).unwrap();
        same_tensors(&model_dir(name), &out);
        // And it loads back.
        BertForMaskedLm::load(&out, &dev(), LoadOptions::default()).unwrap();
    }
}

/// Every tensor of `a` that `b` has is bit-identical (b may lack tied copies or buffers).
fn same_tensors(a: &std::path::Path, b: &std::path::Path) {
    let (a, b) = (Checkpoint::open(a).unwrap(), Checkpoint::open(b).unwrap());
    let mut compared = 0;
    for name in b.names() {
        let want = a
            .tensor(name)
            .unwrap_or_else(|_| panic!("{name} written but not in the original"));
        assert_eq!(b.tensor(name).unwrap().data, want.data, "{name}");
        compared += 1;
    }
    let skipped: Vec<&str> = a.names().filter(|n| !b.contains(n)).collect();
    assert!(
        skipped
            .iter()
            .all(|n| n.contains("decoder") || n.ends_with("attn.bias") || n.starts_with("lm_head")),
        "{skipped:?}"
    );
    assert!(compared > 10);
}

#[test]
fn loading_reports_missing_unexpected_and_misshapen_weights() {
    // A BertModel directory has no MLM head.
    let err =
        BertForMaskedLm::load(model_dir("bert_base"), &dev(), LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::MissingWeights { .. }), "{err}");
    assert!(err.to_string().contains("cls.predictions"), "{err}");
    // The MLM directory has an MLM head a pooled model does not use... and lacks the pooler.
    let err =
        BertWithPooler::load(model_dir("bert_mlm"), &dev(), LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::MissingWeights { .. }), "{err}");
    // A sequence-classification GPT-2 loads as an LM only when its head may be ignored.
    let err =
        Gpt2LmHead::load(model_dir("gpt2_seqcls"), &dev(), LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::UnexpectedWeights { .. }) && err.to_string().contains("score.weight"),
        "{err}"
    );
    Gpt2LmHead::load(
        model_dir("gpt2_seqcls"),
        &dev(),
        LoadOptions {
            allow_unexpected: true,
            ..Default::default()
        },
    )
    .unwrap();
    // A config that disagrees with the weights.
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(model_dir("gpt2_tied")).unwrap().flatten() {
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    let cfg = std::fs::read_to_string(dir.path().join("config.json"))
        .unwrap()
        .replace("\"n_positions\": 32", "\"n_positions\": 33");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let err = Gpt2LmHead::load(dir.path(), &dev(), LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::WeightShape { .. }) && err.to_string().contains("wpe"),
        "{err}"
    );
}
