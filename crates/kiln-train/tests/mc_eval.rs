//! Multiple-choice evaluation against lm-evaluation-harness: on a tiny random GPT-2 and 20
//! MedMCQA-format rows (fixtures from `tests/fixtures/make_mc_fixture.py`), the contexts equal
//! lm-eval's byte for byte, each continuation's log-likelihood equals what lm-eval computed with
//! transformers to 1e-4, and `acc` / `acc_norm` equal its run — zero-shot and 2-shot with the
//! training rows lm-eval picked; the MedQA prompt equals `medqa_4options`' `doc_to_text`.

use std::path::PathBuf;

use kiln_data::mc::{McFormat, ReadOptions, read_mc};
use kiln_data::tokenizer::Tokenizer;
use kiln_models::LoadOptions;
use kiln_models::gpt2::Gpt2LmHead;
use kiln_train::burn::tensor::Device;
use kiln_train::tasks::mc::{McEvalOptions, context, evaluate_mc};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mc")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("lm_eval.json")).unwrap())
        .unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn zero_and_few_shot_equal_lm_eval() {
    let r = reference();
    let device = Device::flex();
    let model =
        Gpt2LmHead::load(fixtures().join("model"), &device, LoadOptions::default()).unwrap();
    let tok = Tokenizer::from_file(fixtures().join("model")).unwrap();
    let dev = read_mc(
        &fixtures().join("medmcqa_dev.jsonl"),
        McFormat::MedMcqa,
        &ReadOptions::default(),
    )
    .unwrap();
    let train = read_mc(
        &fixtures().join("medmcqa_train.jsonl"),
        McFormat::MedMcqa,
        &ReadOptions::default(),
    )
    .unwrap();
    let opts = McEvalOptions::new(McFormat::MedMcqa);
    let report = evaluate_mc(&model, &tok, &dev, &opts, &device, |_| {}).unwrap();
    let zero = &r["zero_shot"];
    let samples = zero["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 20);
    assert_eq!(report.n, 20);
    for (s, (row, got)) in samples.iter().zip(dev.iter().zip(&report.examples)) {
        assert_eq!(s["id"].as_str(), Some(got.id.as_str()));
        assert_eq!(
            context(row, &opts).unwrap(),
            s["context"].as_str().unwrap(),
            "{}",
            got.id
        );
        let want = floats(&s["loglikelihoods"]);
        for (a, b) in got.loglikelihoods.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-4,
                "{}: {:?} vs {want:?}",
                got.id,
                got.loglikelihoods
            );
        }
        let hit = |p: usize| f64::from(u8::from(Some(p) == got.answer));
        assert_eq!(hit(got.pred), s["acc"].as_f64().unwrap(), "{}", got.id);
        assert_eq!(
            hit(got.pred_norm),
            s["acc_norm"].as_f64().unwrap(),
            "{}",
            got.id
        );
    }
    assert_eq!(report.acc, zero["acc"].as_f64().unwrap());
    assert_eq!(report.acc_norm, zero["acc_norm"].as_f64().unwrap());
    // groups add up; intervals contain the estimate
    let total: usize = report.by_subject.values().map(|g| g.n).sum();
    assert_eq!(total, 20);
    assert_eq!(
        report.by_choice_type.values().map(|g| g.n).sum::<usize>(),
        20
    );
    for g in report.by_subject.values().chain([&report.overall]) {
        assert!(g.acc_low <= g.acc && g.acc <= g.acc_high, "{g:?}");
    }

    // 2-shot, with the training rows lm-eval drew
    for s in r["two_shot"].as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let row = dev.iter().find(|x| x.id == id).unwrap();
        let mut o = McEvalOptions::new(McFormat::MedMcqa);
        o.shots = s["shots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                train
                    .iter()
                    .find(|t| t.id == k.as_str().unwrap())
                    .unwrap()
                    .clone()
            })
            .collect();
        assert_eq!(context(row, &o).unwrap(), s["context"].as_str().unwrap());
        let got =
            evaluate_mc(&model, &tok, std::slice::from_ref(row), &o, &device, |_| {}).unwrap();
        for (a, b) in got.examples[0]
            .loglikelihoods
            .iter()
            .zip(floats(&s["loglikelihoods"]))
        {
            assert!((a - b).abs() < 1e-4, "{id}: {a} vs {b}");
        }
    }
}

#[test]
fn medqa_prompts_equal_lm_eval() {
    let r = reference();
    let rows = read_mc(
        &fixtures().join("medqa_swag.jsonl"),
        McFormat::Swag,
        &ReadOptions::default(),
    )
    .unwrap();
    let opts = McEvalOptions::new(McFormat::Swag);
    for (row, want) in rows.iter().zip(r["medqa_prompts"].as_array().unwrap()) {
        assert_eq!(
            context(row, &opts).unwrap(),
            want["prompt"].as_str().unwrap()
        );
    }
}
