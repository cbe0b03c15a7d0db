//! Parameter counts against transformers' `num_parameters()` (fixture) and FLOPs against Kaplan's
//! formula.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_models::LoadOptions;
use kiln_models::bert::BertConfig;
use kiln_models::burn::module::Module;
use kiln_models::burn::prelude::*;
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn counts() -> BTreeMap<String, usize> {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/param_counts.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn parameter_counts_match_transformers() {
    let c = counts();
    assert_eq!(Gpt2Config::gpt2().num_params(), c["gpt2"]);
    assert_eq!(Gpt2Config::gpt2_medium().num_params(), c["gpt2-medium"]);
    assert_eq!(Gpt2Config::biomedlm().num_params(), c["biomedlm"]);
    assert_eq!(BertConfig::bert_base().num_params(), c["bert-base-encoder"]);
    for name in ["gpt2_tied", "gpt2_scaled"] {
        let cfg = Gpt2Config::from_file(fixtures().join("models").join(name).join("config.json"))
            .unwrap();
        assert_eq!(cfg.num_params(), c[name], "{name}");
        // And the module built from it has that many.
        let model = Gpt2LmHead::load(
            fixtures().join("models").join(name),
            &Device::flex(),
            LoadOptions::default(),
        )
        .unwrap();
        assert_eq!(model.num_params(), c[name], "{name} module");
    }
    let cfg = BertConfig::from_file(fixtures().join("models/bert_mlm/config.json")).unwrap();
    assert_eq!(cfg.num_params(), c["bert_encoder_tiny"]);
}

#[test]
fn flops_follow_kaplan() {
    // C_forward ≈ 2·N_non-embedding + 2·n_layer·n_ctx·d, with N from transformers' count.
    let c = counts();
    let cfg = Gpt2Config::gpt2();
    let d = cfg.n_embd as f64;
    let embeddings = ((cfg.vocab_size + cfg.n_positions) * cfg.n_embd) as f64;
    let non_embedding = c["gpt2"] as f64 - embeddings;
    let kaplan = 2.0 * non_embedding
        + 2.0 * cfg.n_layer as f64 * 1024.0 * d
        + 2.0 * cfg.vocab_size as f64 * d;
    let ours = cfg.flops_per_token(1024);
    assert!((ours / kaplan - 1.0).abs() < 0.002, "{ours} vs {kaplan}");
}
